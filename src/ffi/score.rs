//! Scoring through the C ABI: open a reward bundle (ImageReward format, `docs/formats.md`) once,
//! score RGB images against a prompt from any thread.

use super::engine::{dpoimg_engine_options, read_options};
use super::image::dpoimg_image;
use super::panic::{boundary, boundary_or};
use super::ptr::{free_handle, handle, new_handle, out, req_str, slice, Kind};
use super::status::{
    dpoimg_status, Error, DPOIMG_ERR_BUNDLE, DPOIMG_ERR_INVALID_ARGUMENT, DPOIMG_ERR_IO,
    DPOIMG_ERR_MODEL, DPOIMG_ERR_RUNTIME,
};
use crate::score::{RewardModel, RgbRef, ScoreError, ScoreOptions};
use std::ffi::c_char;

/// A loaded reward model (opaque, immutable, shared across threads).
#[allow(non_camel_case_types)]
pub struct dpoimg_reward {
    _opaque: [u8; 0],
}

impl Kind for dpoimg_reward {
    type Inner = RewardModel;
    const TAG: u64 = 0x6470_6f69_6d67_5257; // "dpoimgRW"
    const NAME: &'static str = "dpoimg_reward";
}

/// Most images one `dpoimg_reward_score` call takes.
pub const DPOIMG_MAX_SCORE_IMAGES: usize = 256;

fn score_error(e: ScoreError) -> Error {
    let status = match &e {
        ScoreError::Manifest(_) | ScoreError::Field { .. } | ScoreError::Tokenizer { .. } => {
            DPOIMG_ERR_BUNDLE
        }
        ScoreError::File(_) => DPOIMG_ERR_BUNDLE,
        ScoreError::Runtime(_) => DPOIMG_ERR_RUNTIME,
        ScoreError::Model(_) => DPOIMG_ERR_MODEL,
        ScoreError::BadImage { .. } | ScoreError::Input(_) => DPOIMG_ERR_INVALID_ARGUMENT,
        ScoreError::ImageFile { .. } => DPOIMG_ERR_IO,
    };
    Error::new(status, e.to_string())
}

/// Opens the reward bundle in `reward_dir` (NUL-terminated UTF-8; a directory with
/// `reward.json`) and writes the handle to `*out_reward`. `options` (NULL = defaults) is read for
/// its device, thread counts, verification and ONNX Runtime library, as for an engine.
///
/// Errors: DPOIMG_ERR_MISUSE, DPOIMG_ERR_VERSION, DPOIMG_ERR_INVALID_ARGUMENT, DPOIMG_ERR_BUNDLE
/// (missing, malformed, or a model bundle instead of a reward bundle), DPOIMG_ERR_RUNTIME.
/// Ownership: free with `dpoimg_reward_close`.
///
/// # Safety
/// Pointers are NULL or valid; strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_reward_open(
    reward_dir: *const c_char,
    options: *const dpoimg_engine_options,
    out_reward: *mut *mut dpoimg_reward,
) -> dpoimg_status {
    boundary(|| {
        let dir = req_str(reward_dir, "reward_dir")?;
        let out_reward = out(out_reward, "out_reward")?;
        let eo = read_options(options)?;
        let so = ScoreOptions {
            session: eo.session,
            verify: eo.verify,
            ort_library: eo.ort_library,
            ..ScoreOptions::default()
        };
        let model = RewardModel::open(dir, &so).map_err(score_error)?;
        out_reward.write(new_handle::<dpoimg_reward>(model));
        Ok(())
    })
}

/// Scores `count` images (1..=DPOIMG_MAX_SCORE_IMAGES) against `prompt` (NUL-terminated UTF-8)
/// and writes one normalised score per image to `out_scores[0..count]` (only on success). Images
/// are 8-bit RGB, `stride` bytes per row (e.g. from `dpoimg_images_get`).
///
/// Thread-safety: any number of threads may score with one handle at once.
///
/// # Safety
/// `reward` is live; `images` points to `count` valid `dpoimg_image`s whose `data` holds `len`
/// bytes; `out_scores` has room for `count` floats.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_reward_score(
    reward: *const dpoimg_reward,
    prompt: *const c_char,
    images: *const dpoimg_image,
    count: usize,
    out_scores: *mut f32,
) -> dpoimg_status {
    boundary(|| {
        let model = handle(reward)?;
        let prompt = req_str(prompt, "prompt")?;
        if count == 0 || count > DPOIMG_MAX_SCORE_IMAGES {
            return Err(Error::invalid(format!(
                "count {count} is outside 1..={DPOIMG_MAX_SCORE_IMAGES}"
            )));
        }
        let views = slice(images, count, DPOIMG_MAX_SCORE_IMAGES, "images")?;
        let out_scores = out(out_scores, "out_scores")?;
        // Tightly packed copies: the scorer takes HWC rows without padding.
        let mut packed: Vec<Vec<u8>> = Vec::with_capacity(count);
        for (i, v) in views.iter().enumerate() {
            let row = v.width as usize * 3;
            if v.data.is_null()
                || v.stride < row
                || v.len < v.stride * (v.height as usize).saturating_sub(1) + row
            {
                return Err(Error::invalid(format!(
                    "image {i}: {}x{} with stride {} and {} bytes is inconsistent (or data is NULL)",
                    v.width, v.height, v.stride, v.len
                )));
            }
            let data = std::slice::from_raw_parts(v.data, v.len);
            let mut p = Vec::with_capacity(row * v.height as usize);
            for y in 0..v.height as usize {
                p.extend_from_slice(&data[y * v.stride..y * v.stride + row]);
            }
            packed.push(p);
        }
        let refs: Vec<RgbRef<'_>> = views
            .iter()
            .zip(&packed)
            .map(|(v, p)| RgbRef {
                width: v.width,
                height: v.height,
                data: p,
            })
            .collect();
        let scores = model.score(prompt, &refs).map_err(score_error)?;
        std::ptr::copy_nonoverlapping(scores.as_ptr(), out_scores, scores.len());
        Ok(())
    })
}

/// Frees a reward handle. NULL is a no-op. No call may be using it.
///
/// # Safety
/// `reward` is NULL or from `dpoimg_reward_open`, not yet closed.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_reward_close(reward: *mut dpoimg_reward) {
    boundary_or((), || free_handle(reward))
}
