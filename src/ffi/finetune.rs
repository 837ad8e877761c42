//! LoRA fine-tuning through the C ABI: a Diffusion-DPO (or SFT) run described by a JSON object —
//! the same settings as `dpoimg-finetune dpo` and the daemon's job body (`docs/formats.md`, "Fine-
//! tuning settings") — with a progress callback and a cancel handle.
//!
//! Why JSON for the settings: a run has some forty knobs that grow with every method; a JSON
//! object keeps this entry point's ABI fixed while the settings evolve, and unknown keys are an
//! error, so a typo is never silently ignored.

use super::cancel::dpoimg_cancel;
use super::engine::check_version;
use super::panic::{boundary, boundary_or};
use super::ptr::{free_handle, handle, new_handle, out, req_str, Kind};
use super::status::{
    dpoimg_status, Error, DPOIMG_ERR_CANCELLED, DPOIMG_ERR_INVALID_ARGUMENT, DPOIMG_ERR_IO,
    DPOIMG_ERR_MODEL, DPOIMG_ERR_NOT_FOUND, DPOIMG_ERR_RUNTIME, DPOIMG_OK,
};
use crate::cancel::CancelToken;
use crate::finetune::{self, DpoConfig, Event, FinetuneError};
use std::ffi::c_void;

/// The version of [`dpoimg_finetune_options`] this header describes.
pub const DPOIMG_FINETUNE_OPTIONS_VERSION: u32 = 1;

/// What a fine-tuning run is doing when the progress callback is called.
#[allow(non_camel_case_types)]
pub type dpoimg_finetune_stage = i32;
/// Encoding images and prompts into the encode-once cache (`done` of `total` images).
pub const DPOIMG_FINETUNE_STAGE_ENCODING: dpoimg_finetune_stage = 1;
/// An optimiser step finished (`done` of `total` steps; loss and accuracy of that step).
pub const DPOIMG_FINETUNE_STAGE_STEP: dpoimg_finetune_stage = 2;
/// A checkpoint was written after `done` steps.
pub const DPOIMG_FINETUNE_STAGE_CHECKPOINT: dpoimg_finetune_stage = 3;
/// The run finished; the adapter is `<output>/adapter.safetensors`.
pub const DPOIMG_FINETUNE_STAGE_FINISHED: dpoimg_finetune_stage = 4;

/// A progress report. Owned by the library; valid only during the callback. Later versions only
/// append fields.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct dpoimg_finetune_progress {
    /// One of `DPOIMG_FINETUNE_STAGE_*` (more may be added: ignore unknown ones).
    pub stage: dpoimg_finetune_stage,
    pub done: u64,
    pub total: u64,
    /// Loss, implicit accuracy and reward margin of the step (STEP, FINISHED; else 0).
    pub loss: f64,
    pub implicit_acc: f64,
    pub reward_margin: f64,
}

/// Progress callback: `userdata` first. Return true to continue, false to cancel (the run then
/// checkpoints its completed steps and returns DPOIMG_ERR_CANCELLED). Called on the calling
/// thread.
#[allow(non_camel_case_types)]
pub type dpoimg_finetune_progress_fn = Option<
    unsafe extern "C" fn(userdata: *mut c_void, progress: *const dpoimg_finetune_progress) -> bool,
>;

/// One fine-tuning run. Initialise with `dpoimg_finetune_options_init`, then set `config_json`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct dpoimg_finetune_options {
    /// `DPOIMG_FINETUNE_OPTIONS_VERSION` as compiled by the caller.
    pub version: u32,
    /// Required: NUL-terminated UTF-8 JSON object of run settings, e.g.
    /// `{"bundle": "models/default", "data": "prefs.jsonl", "output": "run1", "steps": 200}`.
    /// Keys and defaults: docs/formats.md ("Fine-tuning settings"); unknown keys are an error.
    /// `"resume": true` continues the run in `output` from its newest checkpoint.
    pub config_json: *const std::ffi::c_char,
    pub progress: dpoimg_finetune_progress_fn,
    pub progress_userdata: *mut c_void,
    /// Optional cancel handle (NULL = none).
    pub cancel: *const dpoimg_cancel,
}

impl Default for dpoimg_finetune_options {
    fn default() -> Self {
        dpoimg_finetune_options {
            version: DPOIMG_FINETUNE_OPTIONS_VERSION,
            config_json: std::ptr::null(),
            progress: None,
            progress_userdata: std::ptr::null_mut(),
            cancel: std::ptr::null(),
        }
    }
}

/// Fills `options` with the defaults of options version `version` (pass
/// `DPOIMG_FINETUNE_OPTIONS_VERSION`).
///
/// Returns DPOIMG_ERR_MISUSE for NULL, DPOIMG_ERR_VERSION for an unknown version.
///
/// # Safety
/// `options` is NULL or points to writable memory for a `dpoimg_finetune_options`.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_finetune_options_init(
    options: *mut dpoimg_finetune_options,
    version: u32,
) -> dpoimg_status {
    boundary(|| {
        if options.is_null() {
            return Err(Error::misuse("`options` is NULL"));
        }
        check_version(
            version,
            DPOIMG_FINETUNE_OPTIONS_VERSION,
            "dpoimg_finetune_options",
        )?;
        options.write(dpoimg_finetune_options::default());
        Ok(())
    })
}

/// Reads the caller's options (version first), parses the settings and resolves the cancel
/// handle: what `dpoimg_finetune_run` and `dpoimg_finetune_start` both need.
///
/// # Safety
/// `options` is NULL or points to an initialised `dpoimg_finetune_options`.
unsafe fn read_options(
    options: *const dpoimg_finetune_options,
) -> Result<(dpoimg_finetune_options, DpoConfig, CancelToken), Error> {
    if options.is_null() {
        return Err(Error::misuse("`options` is NULL"));
    }
    let version = std::ptr::addr_of!((*options).version).read();
    check_version(
        version,
        DPOIMG_FINETUNE_OPTIONS_VERSION,
        "dpoimg_finetune_options",
    )?;
    let o = options.read();
    let text = req_str(o.config_json, "config_json")?;
    let cfg: DpoConfig = serde_json::from_str(text).map_err(|e| {
        Error::invalid(format!(
            "config_json: {e}. Fix: a JSON object of run settings (docs/formats.md)"
        ))
    })?;
    let token = if o.cancel.is_null() {
        CancelToken::new()
    } else {
        handle(o.cancel)?.clone()
    };
    Ok((o, cfg, token))
}

fn status_of(e: &FinetuneError) -> dpoimg_status {
    match e {
        FinetuneError::Config { .. } | FinetuneError::Data(_) => DPOIMG_ERR_INVALID_ARGUMENT,
        FinetuneError::Io { .. } | FinetuneError::Run { .. } => DPOIMG_ERR_IO,
        FinetuneError::Engine(inner) => engine_status(inner),
        FinetuneError::Device { .. } => DPOIMG_ERR_RUNTIME,
        FinetuneError::Train(_) | FinetuneError::Loss(_) | FinetuneError::Diverged { .. } => {
            DPOIMG_ERR_MODEL
        }
        FinetuneError::Reward(_) | FinetuneError::Dpok(_) => DPOIMG_ERR_MODEL,
        FinetuneError::Cancelled => DPOIMG_ERR_CANCELLED,
        FinetuneError::Paused { .. } => DPOIMG_OK,
    }
}

fn engine_status(e: &crate::engine::EngineError) -> dpoimg_status {
    // Same classification as generation (status.rs), without consuming the error.
    match e {
        crate::engine::EngineError::Bundle(_) | crate::engine::EngineError::Tokenize(_) => {
            super::status::DPOIMG_ERR_BUNDLE
        }
        crate::engine::EngineError::Runtime(_) => DPOIMG_ERR_RUNTIME,
        crate::engine::EngineError::Lora(_) => super::status::DPOIMG_ERR_ADAPTER,
        crate::engine::EngineError::InvalidRequest { .. }
        | crate::engine::EngineError::Scheduler(_) => DPOIMG_ERR_INVALID_ARGUMENT,
        crate::engine::EngineError::Model { .. } => DPOIMG_ERR_MODEL,
        crate::engine::EngineError::Cancelled => DPOIMG_ERR_CANCELLED,
    }
}

/// Runs (or, with `"resume": true`, continues) a fine-tuning job to its end, on the calling
/// thread. The adapter is written to `<output>/adapter.safetensors`, with checkpoints, the
/// metrics log and plots in `output` (see README, "Fine-tuning").
///
/// Returns DPOIMG_OK when the run finished (or paused after `stop_after` steps),
/// DPOIMG_ERR_INVALID_ARGUMENT for bad JSON/settings/data, DPOIMG_ERR_IO for file problems (an
/// existing run without `"resume": true` included), DPOIMG_ERR_BUNDLE, DPOIMG_ERR_RUNTIME (a
/// device that is not available), DPOIMG_ERR_MODEL (training failure or divergence),
/// DPOIMG_ERR_CANCELLED. The message is the thread's last error.
///
/// Thread-safety: any thread; two runs must not share an `output` directory.
///
/// # Safety
/// `options` points to an initialised `dpoimg_finetune_options` whose pointers are valid.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_finetune_run(
    options: *const dpoimg_finetune_options,
) -> dpoimg_status {
    boundary(|| {
        let (o, cfg, token) = read_options(options)?;
        let on_event = &mut |e: &Event| {
            let (Some(f), Some(p)) = (o.progress, progress_of(e, cfg.steps)) else {
                return;
            };
            // SAFETY: the caller's callback with the caller's userdata, as documented.
            if !unsafe { f(o.progress_userdata, &p) } {
                token.cancel();
            }
        };
        match finetune::run_dpo(&cfg, on_event, &token) {
            Ok(_) | Err(FinetuneError::Paused { .. }) => Ok(()),
            Err(e) => Err(Error::new(status_of(&e), e.to_string())),
        }
    })
}

/// A fine-tuning run on its own thread (opaque): start it, poll its progress, cancel it, wait for
/// it, read where its adapter is.
#[allow(non_camel_case_types)]
pub struct dpoimg_finetune_job {
    _opaque: [u8; 0],
}

struct JobState {
    progress: dpoimg_finetune_progress,
    finished: bool,
    status: dpoimg_status,
    message: String,
    adapter: Option<String>,
}

pub(crate) struct JobHandle {
    state: std::sync::Arc<std::sync::Mutex<JobState>>,
    cancel: CancelToken,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Kind for dpoimg_finetune_job {
    type Inner = JobHandle;
    const TAG: u64 = 0x6470_6f69_6d67_4a42; // "dpoimgJB"
    const NAME: &'static str = "dpoimg_finetune_job";
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        // Freeing a running job stops it (checkpointing its completed steps) before the memory
        // its thread uses goes away.
        self.cancel.cancel();
        let t = self
            .thread
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

fn lock(s: &std::sync::Mutex<JobState>) -> std::sync::MutexGuard<'_, JobState> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts a fine-tuning run (the settings of `dpoimg_finetune_run`) on a new thread and writes
/// its handle to `*out_job`. A progress callback in `options`, if set, is called on the job's
/// thread. Settings are parsed before this returns (DPOIMG_ERR_INVALID_ARGUMENT for bad JSON);
/// everything else is reported by `dpoimg_finetune_job_wait`.
///
/// Ownership: free with `dpoimg_finetune_job_free` (which cancels and waits for a running job).
///
/// # Safety
/// `options` points to an initialised `dpoimg_finetune_options`; `out_job` is writable. The
/// callback's userdata must stay valid until the job has finished.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_finetune_start(
    options: *const dpoimg_finetune_options,
    out_job: *mut *mut dpoimg_finetune_job,
) -> dpoimg_status {
    boundary(|| {
        let (o, cfg, cancel) = read_options(options)?;
        let out_job = out(out_job, "out_job")?;
        let state = std::sync::Arc::new(std::sync::Mutex::new(JobState {
            progress: dpoimg_finetune_progress {
                stage: 0,
                done: 0,
                total: cfg.steps as u64,
                loss: 0.0,
                implicit_acc: 0.0,
                reward_margin: 0.0,
            },
            finished: false,
            status: DPOIMG_OK,
            message: String::new(),
            adapter: None,
        }));
        // Raw pointers are not Send; the caller guarantees the userdata outlives the job.
        let callback = o.progress;
        let userdata = o.progress_userdata as usize;
        let (st, token) = (state.clone(), cancel.clone());
        let thread = std::thread::Builder::new()
            .name("dpoimg-finetune".into())
            .spawn(move || {
                let result = super::panic::catch(|| {
                    let mut on_event = |e: &Event| {
                        if let Some(p) = progress_of(e, cfg.steps) {
                            lock(&st).progress = p;
                            if let Some(f) = callback {
                                // SAFETY: the caller's callback and userdata, as documented.
                                if !unsafe { f(userdata as *mut c_void, &p) } {
                                    token.cancel();
                                }
                            }
                        }
                    };
                    match finetune::run_dpo(&cfg, &mut on_event, &token) {
                        Ok(o) => Ok(Some(o.adapter.display().to_string())),
                        Err(FinetuneError::Paused { .. }) => Ok(None),
                        Err(e) => Err(Error::new(status_of(&e), e.to_string())),
                    }
                });
                let mut s = lock(&st);
                match result {
                    Ok(path) => s.adapter = path,
                    Err(e) => {
                        s.status = e.status;
                        s.message = e.message;
                    }
                }
                s.finished = true;
            })
            .map_err(|e| Error::new(DPOIMG_ERR_IO, format!("cannot start a thread: {e}")))?;
        out_job.write(new_handle::<dpoimg_finetune_job>(JobHandle {
            state,
            cancel,
            thread: std::sync::Mutex::new(Some(thread)),
        }));
        Ok(())
    })
}

fn progress_of(e: &Event, steps: usize) -> Option<dpoimg_finetune_progress> {
    let mut p = dpoimg_finetune_progress {
        stage: 0,
        done: 0,
        total: 0,
        loss: 0.0,
        implicit_acc: 0.0,
        reward_margin: 0.0,
    };
    match e {
        Event::Encoding { done, total } => {
            p.stage = DPOIMG_FINETUNE_STAGE_ENCODING;
            (p.done, p.total) = (*done as u64, *total as u64);
        }
        Event::Step(m) => {
            p.stage = DPOIMG_FINETUNE_STAGE_STEP;
            (p.done, p.total) = (m.step as u64, m.total_steps as u64);
            (p.loss, p.implicit_acc, p.reward_margin) = (m.loss, m.implicit_acc, m.reward_margin);
        }
        Event::Checkpoint { step, .. } => {
            p.stage = DPOIMG_FINETUNE_STAGE_CHECKPOINT;
            (p.done, p.total) = (*step as u64, steps as u64);
        }
        Event::Finished(out) => {
            p.stage = DPOIMG_FINETUNE_STAGE_FINISHED;
            (p.done, p.total) = (out.steps as u64, steps as u64);
            (p.loss, p.implicit_acc) = (out.final_loss, out.final_implicit_acc);
        }
        _ => return None,
    }
    Some(p)
}

/// Copies the job's latest progress to `*out_progress` and whether it has finished to
/// `*out_finished` (either may be NULL). Never blocks. Thread-safety: any thread.
///
/// # Safety
/// `job` is live; the out pointers are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_finetune_job_poll(
    job: *const dpoimg_finetune_job,
    out_progress: *mut dpoimg_finetune_progress,
    out_finished: *mut bool,
) -> dpoimg_status {
    boundary(|| {
        let j = handle(job)?;
        let s = lock(&j.state);
        if !out_progress.is_null() {
            out_progress.write(s.progress);
        }
        if !out_finished.is_null() {
            out_finished.write(s.finished);
        }
        Ok(())
    })
}

/// Asks the job to stop: it checkpoints its completed steps and ends with
/// DPOIMG_ERR_CANCELLED (resume later with `"resume": true`). Thread-safety: any thread.
///
/// # Safety
/// `job` is live.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_finetune_job_cancel(
    job: *const dpoimg_finetune_job,
) -> dpoimg_status {
    boundary(|| {
        handle(job)?.cancel.cancel();
        Ok(())
    })
}

/// Blocks until the job has finished and returns its result: DPOIMG_OK (finished or paused) or
/// the run's error status, whose message becomes this thread's last error (the statuses of
/// `dpoimg_finetune_run`). May be called again; it returns the same result.
///
/// # Safety
/// `job` is live.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_finetune_job_wait(
    job: *const dpoimg_finetune_job,
) -> dpoimg_status {
    boundary(|| {
        let j = handle(job)?;
        let t = j.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
        }
        let s = lock(&j.state);
        if s.status == DPOIMG_OK {
            Ok(())
        } else {
            Err(Error::new(s.status, s.message.clone()))
        }
    })
}

/// Writes the finished job's adapter path (UTF-8, NUL-terminated) into `buf` of `cap` bytes and
/// its length without the NUL to `*out_len` (if not NULL). DPOIMG_ERR_NOT_FOUND while the job
/// runs or when it ended without an adapter; DPOIMG_ERR_INVALID_ARGUMENT when `cap` is too small
/// (`*out_len` then says how much is needed).
///
/// # Safety
/// `job` is live; `buf` has `cap` writable bytes; `out_len` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_finetune_job_adapter_path(
    job: *const dpoimg_finetune_job,
    buf: *mut std::ffi::c_char,
    cap: usize,
    out_len: *mut usize,
) -> dpoimg_status {
    boundary(|| {
        let j = handle(job)?;
        let s = lock(&j.state);
        let Some(path) = s.adapter.as_ref().filter(|_| s.finished) else {
            return Err(Error::new(
                DPOIMG_ERR_NOT_FOUND,
                "the job has not finished with an adapter (still running, failed, cancelled or paused)",
            ));
        };
        if !out_len.is_null() {
            out_len.write(path.len());
        }
        if buf.is_null() || cap < path.len() + 1 {
            return Err(Error::invalid(format!(
                "buffer of {cap} bytes is too small for the path ({} bytes + NUL)",
                path.len()
            )));
        }
        std::ptr::copy_nonoverlapping(path.as_ptr(), buf as *mut u8, path.len());
        buf.add(path.len()).write(0);
        Ok(())
    })
}

/// Frees a job; a running job is cancelled and waited for first. NULL is a no-op.
///
/// # Safety
/// `job` is NULL or from `dpoimg_finetune_start`, not yet freed; no other call is using it.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_finetune_job_free(job: *mut dpoimg_finetune_job) {
    boundary_or((), || free_handle(job))
}
