//! Text-to-image generation through the C ABI: the versioned options struct, the progress
//! callback, adapter references, and the call itself.

use super::adapter::{dpoimg_adapter, AdapterHandle};
use super::cancel::dpoimg_cancel;
use super::engine::{check_version, dpoimg_engine, EngineHandle};
use super::image::{dpoimg_images, ImagesHandle};
use super::panic::boundary;
use super::ptr::{as_tagged, handle, opt_str, out, req_str, slice, Tagged};
use super::status::{dpoimg_status, Error};
use crate::cancel::CancelToken;
use crate::engine::{GenerateRequest, Progress, Stage};
use crate::limits;
use crate::lora::AdapterRef;
use crate::provenance::{AdapterRecord, Origin, Provenance};
use crate::scheduler::SamplerKind;
use std::ffi::{c_char, c_void};
use std::sync::Arc;

/// The version of [`dpoimg_generate_options`] this header describes.
pub const DPOIMG_GENERATE_OPTIONS_VERSION: u32 = 1;

/// What a generation is doing when the progress callback is called.
#[allow(non_camel_case_types)]
pub type dpoimg_stage = i32;
/// Tokenising and encoding the prompts (reported once, `step` = 0).
pub const DPOIMG_STAGE_ENCODING_PROMPT: dpoimg_stage = 1;
/// Denoising: reported before each step, `step` = steps completed so far.
pub const DPOIMG_STAGE_DENOISING: dpoimg_stage = 2;
/// Decoding latents to pixels (reported once, `step` = `total_steps`).
pub const DPOIMG_STAGE_DECODING: dpoimg_stage = 3;

/// A progress report. Owned by the library; valid only during the callback. Later versions only
/// append fields.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct dpoimg_progress {
    /// One of `DPOIMG_STAGE_*` (more stages may be added: ignore unknown ones).
    pub stage: dpoimg_stage,
    /// Denoising steps completed.
    pub step: u32,
    pub total_steps: u32,
}

/// Progress callback: `userdata` first, as given in the options. Return true to continue, false
/// to cancel (the call then returns DPOIMG_ERR_CANCELLED). Called on the thread that called
/// `dpoimg_generate`, between steps; it must not call `dpoimg_engine_close` on the same engine.
#[allow(non_camel_case_types)]
pub type dpoimg_progress_fn =
    Option<unsafe extern "C" fn(userdata: *mut c_void, progress: *const dpoimg_progress) -> bool>;

/// One adapter applied to a generation: exactly one of `adapter` (a handle from this engine) or
/// `name` (loaded on this engine) is set.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct dpoimg_adapter_ref {
    pub adapter: *const dpoimg_adapter,
    /// NUL-terminated UTF-8 name given to `dpoimg_engine_adapter_load`.
    pub name: *const c_char,
    /// Multiplier of the adapter's update; 0 = off, 1 = as trained; |strength| <= 16.
    pub strength: f32,
}

/// One text-to-image request. Initialise with `dpoimg_generate_options_init` (which sets `version`
/// and every default), then set `prompt` and whatever else you need. Fields are only ever appended
/// in later versions, and the library keeps accepting every older version. Strings are
/// NUL-terminated UTF-8 and need to live only for the duration of the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct dpoimg_generate_options {
    /// `DPOIMG_GENERATE_OPTIONS_VERSION` as compiled by the caller.
    pub version: u32,
    /// Images in the batch (1..=16; default 1). One seeded noise draw covers the whole batch.
    pub count: u32,
    /// Required; at most 16 KiB.
    pub prompt: *const c_char,
    /// NULL or "" = unconditional (default).
    pub negative_prompt: *const c_char,
    /// Seeds dpoimg's torch-compatible RNG: the same seed and settings give the same pixels.
    pub seed: u64,
    /// Denoising steps; 0 = the bundle's default.
    pub steps: u32,
    /// Classifier-free guidance scale; negative = the bundle's default (the init value is -1);
    /// <= 1 runs the conditional branch alone.
    pub guidance: f32,
    /// NULL = the bundle's default; else "ddim", "ddpm", "euler", "euler-a", "dpmpp-2m" or
    /// "dpmpp-2m-karras".
    pub sampler: *const c_char,
    /// DDIM's eta (0 = deterministic, the default).
    pub eta: f64,
    /// Image size in pixels; 0 = the bundle's default. At most 2048, a multiple of the bundle's
    /// pixel multiple.
    pub width: u32,
    pub height: u32,
    /// `adapter_count` adapters (at most 16); NULL when the count is 0.
    pub adapters: *const dpoimg_adapter_ref,
    pub adapter_count: usize,
    /// Optional progress callback (NULL = none) and its userdata.
    pub progress: dpoimg_progress_fn,
    pub progress_userdata: *mut c_void,
    /// Optional cancel handle (NULL = not cancellable from outside). One already cancelled makes
    /// the call return DPOIMG_ERR_CANCELLED at once.
    pub cancel: *const dpoimg_cancel,
}

impl Default for dpoimg_generate_options {
    fn default() -> Self {
        dpoimg_generate_options {
            version: DPOIMG_GENERATE_OPTIONS_VERSION,
            count: 1,
            prompt: std::ptr::null(),
            negative_prompt: std::ptr::null(),
            seed: 0,
            steps: 0,
            guidance: -1.0,
            sampler: std::ptr::null(),
            eta: 0.0,
            width: 0,
            height: 0,
            adapters: std::ptr::null(),
            adapter_count: 0,
            progress: None,
            progress_userdata: std::ptr::null_mut(),
            cancel: std::ptr::null(),
        }
    }
}

/// Fills `options` with the defaults of options version `version` (pass
/// `DPOIMG_GENERATE_OPTIONS_VERSION`). The prompt is left NULL: set it.
///
/// Returns DPOIMG_ERR_MISUSE for NULL, DPOIMG_ERR_VERSION for an unknown version (then `options`
/// is untouched). Thread-safety: any thread.
///
/// # Safety
/// `options` is NULL or points to writable memory for a `dpoimg_generate_options` of `version`.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_generate_options_init(
    options: *mut dpoimg_generate_options,
    version: u32,
) -> dpoimg_status {
    boundary(|| {
        let o = out(options, "options")?;
        check_version(
            version,
            DPOIMG_GENERATE_OPTIONS_VERSION,
            "dpoimg_generate_options",
        )?;
        o.write(dpoimg_generate_options::default());
        Ok(())
    })
}

/// A request translated from C, with the adapters resolved to the engine's.
struct Resolved {
    request: GenerateRequest,
    /// Name under which each adapter is recorded in provenance.
    names: Vec<String>,
    cancel: CancelToken,
}

/// # Safety
/// `o` is a valid options struct of its stated version whose pointers are valid per its docs.
unsafe fn resolve(e: &EngineHandle, o: &dpoimg_generate_options) -> Result<Resolved, Error> {
    let mut request = GenerateRequest::new(req_str(o.prompt, "prompt")?);
    request.negative_prompt = opt_str(o.negative_prompt, "negative_prompt")?
        .unwrap_or("")
        .to_string();
    request.seed = o.seed;
    request.steps = (o.steps != 0).then_some(o.steps);
    // A negative value is the "use the bundle's default" sentinel; NaN is passed on and refused
    // by the engine's range check with a message naming the field.
    request.guidance = (o.guidance.is_nan() || o.guidance >= 0.0).then_some(o.guidance);
    request.sampler = match opt_str(o.sampler, "sampler")? {
        None => None,
        Some(s) => Some(
            s.parse::<SamplerKind>()
                .map_err(|e| Error::invalid(format!("`sampler`: {e}")))?,
        ),
    };
    request.eta = o.eta;
    request.width = (o.width != 0).then_some(o.width);
    request.height = (o.height != 0).then_some(o.height);
    request.count = o.count;
    let refs = slice(
        o.adapters,
        o.adapter_count,
        limits::MAX_ADAPTERS,
        "adapters",
    )?;
    let mut names = Vec::with_capacity(refs.len());
    for (i, r) in refs.iter().enumerate() {
        let a: Arc<Tagged<AdapterHandle>> = match (r.adapter.is_null(), r.name.is_null()) {
            (false, true) => {
                let h = handle(r.adapter)?;
                if h.engine_id != e.id {
                    return Err(Error::misuse(format!(
                        "adapters[{i}] was loaded on another engine"
                    )));
                }
                // Keep our own reference for the duration of the call.
                Arc::increment_strong_count(as_tagged(r.adapter));
                Arc::from_raw(as_tagged(r.adapter))
            }
            (true, false) => e.adapters.get(req_str(r.name, "adapters[].name")?)?,
            _ => {
                return Err(Error::misuse(format!(
                    "adapters[{i}]: set exactly one of `adapter` and `name`"
                )))
            }
        };
        names.push(a.value.name.clone());
        request.adapters.push(AdapterRef {
            adapter: Arc::clone(&a.value.adapter),
            strength: r.strength,
        });
    }
    let cancel = if o.cancel.is_null() {
        CancelToken::new()
    } else {
        handle(o.cancel)?.clone()
    };
    Ok(Resolved {
        request,
        names,
        cancel,
    })
}

/// Generates `count` images and writes them to `*out_images` (free with `dpoimg_images_free`).
///
/// Blocks until done; the progress callback runs on this thread. Errors: DPOIMG_ERR_MISUSE (NULL
/// engine/options/prompt/out_images, a wrong handle), DPOIMG_ERR_VERSION,
/// DPOIMG_ERR_INVALID_ARGUMENT (bad UTF-8, a value out of range; the message names the field),
/// DPOIMG_ERR_NOT_FOUND (an adapter name not loaded), DPOIMG_ERR_CANCELLED, DPOIMG_ERR_MODEL.
/// On error `*out_images` is not written.
///
/// Thread-safety: any number of threads may generate on one engine at once; each call's options,
/// callback and cancel handle are its own.
///
/// # Safety
/// `engine` is a live engine; `options` points to an initialised `dpoimg_generate_options` whose
/// pointers are valid as documented there; `out_images` is writable.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_generate(
    engine: *const dpoimg_engine,
    options: *const dpoimg_generate_options,
    out_images: *mut *mut dpoimg_images,
) -> dpoimg_status {
    boundary(|| {
        let e = handle(engine)?;
        e.record(|| {
            if options.is_null() {
                return Err(Error::misuse("`options` is NULL"));
            }
            let version = std::ptr::addr_of!((*options).version).read();
            check_version(
                version,
                DPOIMG_GENERATE_OPTIONS_VERSION,
                "dpoimg_generate_options",
            )?;
            let o = options.read();
            let out_images = out(out_images, "out_images")?;
            let r = resolve(e, &o)?;
            let mut on_progress = |p: Progress| match o.progress {
                None => true,
                Some(f) => {
                    let report = dpoimg_progress {
                        stage: match p.stage {
                            Stage::EncodingPrompt => DPOIMG_STAGE_ENCODING_PROMPT,
                            Stage::Denoising => DPOIMG_STAGE_DENOISING,
                            Stage::Decoding => DPOIMG_STAGE_DECODING,
                        },
                        step: p.step,
                        total_steps: p.total_steps,
                    };
                    f(o.progress_userdata, &report)
                }
            };
            let g = e.engine.generate(&r.request, &mut on_progress, &r.cancel)?;
            let records: Vec<AdapterRecord> = r
                .request
                .adapters
                .iter()
                .zip(&r.names)
                .map(|(a, name)| AdapterRecord {
                    name: name.clone(),
                    strength: a.strength,
                    sha256: a.adapter.hash.clone(),
                })
                .collect();
            let bundle = e.engine.bundle();
            let origin = Origin {
                prompt: r.request.prompt.clone(),
                negative_prompt: r.request.negative_prompt.clone(),
                seed: r.request.seed,
                adapters: records,
                bundle: bundle.manifest().name.clone(),
                bundle_sha256: bundle.hash().to_string(),
                init_latents_file: None,
            };
            let provenance = (0..g.images.len())
                .map(|i| Provenance::new(&g, &origin, i))
                .collect();
            out_images.write(ImagesHandle::into_handle(g.images, provenance));
            Ok(())
        })
    })
}
