//! Reward scoring: ImageReward (BLIP ViT + BERT with cross-attention + MLP) exported to ONNX in a
//! reward bundle (`reward.json`, docs/formats.md), run with ONNX Runtime.
//!
//! [`RewardModel::score`] reproduces the `image-reward` package's `ImageReward.score(prompt,
//! images)`: the prompt is tokenized by the bundle's BERT WordPiece `tokenizer.json`
//! (`padding="max_length", truncation=True, max_length=35`), each image is preprocessed as the
//! package's `_transform(224)` does (see [`preprocess_clip`]), the graph gives the MLP's raw
//! output, and the score is `(raw − mean) / std` with the bundle's normalisation. Images go
//! through the model in batches (the package runs one at a time; the results agree to float
//! rounding, measured in tests/score.rs).
//!
//! Known difference from the package on unusual inputs: the package resizes before converting to
//! RGB, so an RGBA image is resized with premultiplied alpha and a palette image with nearest
//! neighbour (Pillow's rules); dpoimg converts to RGB first (alpha dropped), then resizes. For RGB
//! and greyscale images, which is what generators write, the two are identical.

pub mod cli;
pub mod files;
mod image;
pub(crate) mod onnx;

pub use files::FileError;
pub use image::{load_image, normalize_chw, preprocess_clip, RgbRef};

use crate::bundle::Verify;
use crate::runtime::{self, Device, Runtime, RuntimeError, SessionOptions};
use onnx::OnnxModel;
use ort::value::TensorElementType;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// The manifest file of a reward bundle.
pub const REWARD_MANIFEST: &str = "reward.json";
const REWARD_FORMAT: &str = "dpoimg-reward";
/// The reward bundle version this build reads.
pub const REWARD_VERSION: u64 = 1;

/// Errors of the scoring layer.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// Not a reward bundle, an unknown version or kind, or a field out of range.
    #[error("{0}")]
    Manifest(String),
    #[error("{path}: field `{field}`: {message}")]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("{path}: cannot load tokenizer: {message}. Fix: the bundle's tokenizer.json must be a Hugging Face tokenizers file")]
    Tokenizer { path: PathBuf, message: String },
    #[error("model: {0}")]
    Model(String),
    #[error("image {index}: {message}")]
    BadImage { index: usize, message: String },
    #[error("{path}: {message}")]
    ImageFile { path: PathBuf, message: String },
    #[error("{0}")]
    Input(String),
}

/// `reward.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardManifest {
    pub format: String,
    pub version: u64,
    /// `"imagereward"`: the only kind so far.
    pub kind: String,
    pub name: String,
    pub onnx: String,
    pub tokenizer: String,
    pub text: TextSpec,
    pub preprocess: PreprocessSpec,
    pub score: Normalisation,
    pub files: BTreeMap<String, String>,
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextSpec {
    pub max_length: usize,
    pub pad_id: u32,
}

/// Image preprocessing: resize the shorter side to `size` with `resize`, centre crop `size`,
/// normalise with `mean`/`std` (per RGB channel, on [0, 1] values).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSpec {
    pub resize: String,
    pub size: u32,
    pub crop: String,
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

impl PreprocessSpec {
    pub(crate) fn validate(&self, path: &Path, prefix: &str) -> Result<(), ScoreError> {
        let bad = |f: &str, m: String| ScoreError::Field {
            path: path.to_path_buf(),
            field: format!("{prefix}.{f}"),
            message: m,
        };
        if self.resize != "bicubic" {
            return Err(bad(
                "resize",
                format!("{:?} is not supported; expected \"bicubic\"", self.resize),
            ));
        }
        if self.crop != "center" {
            return Err(bad(
                "crop",
                format!("{:?} is not supported; expected \"center\"", self.crop),
            ));
        }
        if self.size == 0 || self.size > 1024 {
            return Err(bad(
                "size",
                format!("{} is out of range 1..=1024", self.size),
            ));
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || self.mean.iter().any(|m| !m.is_finite())
        {
            return Err(bad(
                "std",
                "mean must be finite and std finite and > 0".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn mean_f32(&self) -> [f32; 3] {
        self.mean.map(|v| v as f32)
    }
    pub(crate) fn std_f32(&self) -> [f32; 3] {
        self.std.map(|v| v as f32)
    }
}

/// `score = (raw − mean) / std`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalisation {
    pub mean: f64,
    pub std: f64,
}

/// How to open a scoring or metric model.
#[derive(Debug, Clone)]
pub struct ScoreOptions {
    pub session: SessionOptions,
    pub verify: Verify,
    /// Explicit ONNX Runtime library; None = [`runtime::locate_library`].
    pub ort_library: Option<PathBuf>,
    /// Images per ONNX Runtime run (memory grows with it; 1..=256).
    pub batch_size: usize,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        ScoreOptions {
            session: SessionOptions::default(),
            verify: Verify::Full,
            ort_library: None,
            batch_size: 8,
        }
    }
}

impl ScoreOptions {
    /// The options that a command's `--device/--threads/--ort-lib/--no-verify` flags ask for
    /// (`dpoimg score`, `dpoimg eval`), with `batch_size` images per run.
    pub fn from_flags(rt: &crate::engine::RuntimeFlags, batch_size: usize) -> ScoreOptions {
        ScoreOptions {
            session: rt.session(),
            verify: rt.verify(),
            ort_library: rt.ort_lib.clone(),
            batch_size,
        }
    }

    pub(crate) fn check(&self) -> Result<(), ScoreError> {
        if self.batch_size == 0 || self.batch_size > 256 {
            return Err(ScoreError::Input(format!(
                "batch size {} is out of range 1..=256",
                self.batch_size
            )));
        }
        Ok(())
    }

    /// Loads ONNX Runtime and resolves the device.
    pub(crate) fn runtime(&self) -> Result<(Runtime, Device), ScoreError> {
        self.check()?;
        let rt = Runtime::get(self.ort_library.as_deref())?;
        let device = runtime::resolve_device(&rt, self.session.device)?;
        Ok((rt, device))
    }
}

/// A text tokenizer fixed to padding and truncation at `max_length` (the reference's
/// `padding="max_length", truncation=True`), giving ids and the attention mask.
pub struct FixedTokenizer {
    inner: Tokenizer,
    max_length: usize,
}

impl FixedTokenizer {
    pub fn open(path: &Path, max_length: usize, pad_id: u32) -> Result<Self, ScoreError> {
        let err = |m: String| ScoreError::Tokenizer {
            path: path.to_path_buf(),
            message: m,
        };
        let mut inner = Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
        let pad_token = inner
            .id_to_token(pad_id)
            .ok_or_else(|| err(format!("pad id {pad_id} is not in the vocabulary")))?;
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_length),
            pad_id,
            pad_token,
            ..Default::default()
        }));
        inner
            .with_truncation(Some(TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(|e| err(e.to_string()))?;
        Ok(FixedTokenizer { inner, max_length })
    }

    /// (input ids, attention mask), each `max_length` long.
    pub(crate) fn encode(&self, text: &str) -> Result<(Vec<i64>, Vec<i64>), ScoreError> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| ScoreError::Input(format!("tokenizing {text:?}: {e}")))?;
        let ids: Vec<i64> = enc.get_ids().iter().map(|&i| i64::from(i)).collect();
        let mask: Vec<i64> = enc
            .get_attention_mask()
            .iter()
            .map(|&m| i64::from(m))
            .collect();
        if ids.len() != self.max_length {
            return Err(ScoreError::Input(format!(
                "tokenizer gave {} ids, expected {}",
                ids.len(),
                self.max_length
            )));
        }
        Ok((ids, mask))
    }
}

/// An opened ImageReward bundle. `Send + Sync`; [`RewardModel::score`] takes `&self`.
pub struct RewardModel {
    dir: PathBuf,
    manifest: RewardManifest,
    tokenizer: FixedTokenizer,
    model: OnnxModel,
    ids_i32: bool,
    batch_size: usize,
}

impl std::fmt::Debug for RewardModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RewardModel")
            .field("dir", &self.dir)
            .field("name", &self.manifest.name)
            .finish()
    }
}

impl RewardModel {
    /// Reads `DIR/reward.json`, checks its fields, paths and hashes, loads ONNX Runtime and
    /// opens the model, checking its inputs against the manifest.
    pub fn open(dir: impl AsRef<Path>, options: &ScoreOptions) -> Result<RewardModel, ScoreError> {
        let dir = dir.as_ref();
        let (mpath, raw) = files::read_envelope(
            dir,
            REWARD_MANIFEST,
            REWARD_FORMAT,
            REWARD_VERSION,
            &["imagereward"],
        )
        .map_err(ScoreError::Manifest)?;
        let manifest: RewardManifest = serde_json::from_value(raw)
            .map_err(|e| ScoreError::Manifest(format!("{}: {e}", mpath.display())))?;
        let field = |f: &str, m: String| ScoreError::Field {
            path: mpath.clone(),
            field: f.into(),
            message: m,
        };
        if manifest.text.max_length == 0 || manifest.text.max_length > 512 {
            return Err(field(
                "text.max_length",
                format!("{} is out of range 1..=512", manifest.text.max_length),
            ));
        }
        manifest.preprocess.validate(&mpath, "preprocess")?;
        if !(manifest.score.std.is_finite()
            && manifest.score.std > 0.0
            && manifest.score.mean.is_finite())
        {
            return Err(field(
                "score",
                "mean must be finite and std finite and > 0".into(),
            ));
        }
        let cdir = dir.canonicalize().map_err(|e| FileError::Io {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?;
        files::check_files(
            &cdir,
            &mpath,
            &[
                ("onnx", manifest.onnx.as_str()),
                ("tokenizer", manifest.tokenizer.as_str()),
            ],
            &manifest.files,
            options.verify,
        )?;
        let tokenizer = FixedTokenizer::open(
            &cdir.join(&manifest.tokenizer),
            manifest.text.max_length,
            manifest.text.pad_id,
        )?;
        let (rt, device) = options.runtime()?;
        let model = OnnxModel::open(&rt, &cdir.join(&manifest.onnx), &options.session, device)?;
        let s = manifest.preprocess.size as i64;
        let l = manifest.text.max_length as i64;
        model
            .expect_input(
                "pixel_values",
                &[TensorElementType::Float32],
                &[None, Some(3), Some(s), Some(s)],
            )
            .map_err(ScoreError::Model)?;
        let ids_ty = model
            .expect_input(
                "input_ids",
                &[TensorElementType::Int64, TensorElementType::Int32],
                &[None, Some(l)],
            )
            .map_err(ScoreError::Model)?;
        model
            .expect_input(
                "attention_mask",
                &[TensorElementType::Int64, TensorElementType::Int32],
                &[None, Some(l)],
            )
            .map_err(ScoreError::Model)?;
        model
            .expect_output("raw_score")
            .map_err(ScoreError::Model)?;
        Ok(RewardModel {
            dir: cdir,
            manifest,
            tokenizer,
            model,
            ids_i32: ids_ty == TensorElementType::Int32,
            batch_size: options.batch_size,
        })
    }

    pub fn manifest(&self) -> &RewardManifest {
        &self.manifest
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The prompt as the model sees it: (input ids, attention mask).
    pub fn tokenize(&self, prompt: &str) -> Result<(Vec<i64>, Vec<i64>), ScoreError> {
        self.tokenizer.encode(prompt)
    }

    /// One image's model input, f32 CHW (`3 x size x size`).
    pub fn preprocess(&self, image: RgbRef<'_>) -> Result<Vec<f32>, ScoreError> {
        image.check(0)?;
        let p = &self.manifest.preprocess;
        Ok(preprocess_clip(image, p.size, p.mean_f32(), p.std_f32()))
    }

    /// ImageReward scores of `images` for `prompt`, in order (higher = preferred).
    pub fn score(&self, prompt: &str, images: &[RgbRef<'_>]) -> Result<Vec<f32>, ScoreError> {
        for (i, im) in images.iter().enumerate() {
            im.check(i)?;
        }
        let (ids, mask) = self.tokenizer.encode(prompt)?;
        let p = &self.manifest.preprocess;
        let (size, mean, std) = (p.size as usize, p.mean_f32(), p.std_f32());
        let per = 3 * size * size;
        let l = ids.len();
        let (nm, ns) = (
            self.manifest.score.mean as f32,
            self.manifest.score.std as f32,
        );
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(self.batch_size) {
            let b = chunk.len();
            let mut px = Vec::with_capacity(b * per);
            for im in chunk {
                px.extend(preprocess_clip(*im, p.size, mean, std));
            }
            let rep = |v: &[i64]| -> Vec<i64> { v.iter().copied().cycle().take(b * l).collect() };
            let text = |v: Vec<i64>| {
                if self.ids_i32 {
                    onnx::input(vec![b, l], v.into_iter().map(|x| x as i32).collect())
                } else {
                    onnx::input(vec![b, l], v)
                }
            };
            let inputs = vec![
                (
                    Cow::Borrowed("pixel_values"),
                    onnx::input(vec![b, 3, size, size], px).map_err(ScoreError::Model)?,
                ),
                (
                    Cow::Borrowed("input_ids"),
                    text(rep(&ids)).map_err(ScoreError::Model)?,
                ),
                (
                    Cow::Borrowed("attention_mask"),
                    text(rep(&mask)).map_err(ScoreError::Model)?,
                ),
            ];
            let mut res = self
                .model
                .run(inputs, &["raw_score"])
                .map_err(ScoreError::Model)?;
            let (shape, raw) = res.remove(0);
            if raw.len() != b {
                return Err(ScoreError::Model(format!(
                    "{}: raw_score has shape {shape:?} for a batch of {b}",
                    self.model.path.display()
                )));
            }
            // f32, in the package's order: `(rewards - self.mean) / self.std` on a float32 tensor.
            out.extend(raw.iter().map(|r| (r - nm) / ns));
        }
        Ok(out)
    }
}
