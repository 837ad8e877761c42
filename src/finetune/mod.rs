//! LoRA fine-tuning jobs: Diffusion-DPO (and its SFT baseline) on preference pairs.
//!
//! One entry point, [`run_dpo`], serves the `dpoimg-finetune dpo` command, the daemon's jobs and
//! the C ABI: it loads the pairs, encodes every image and prompt once into the on-disk cache
//! ([`cache`]), trains the LoRA adapter with the trainer's own UNet ([`crate::train`]) and AdamW
//! ([`crate::optim`]), writes atomic checkpoints ([`checkpoint`]) and the metrics log, and ends
//! with `adapter.safetensors` in the run directory. Re-running with `resume` continues from the
//! newest checkpoint and ends with the adapter an uninterrupted run writes, bit for bit, on the
//! same backend and thread count.

pub mod adapter_file;
pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod dpok;
pub mod dpok_config;
mod dpok_run;
pub mod metrics;
pub mod order;
pub mod plots;
mod prepare;
mod trainer;
pub mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use config::{DpoConfig, LatentChoice, LoraInitChoice, Objective, ScheduleChoice};
pub use dpok_config::{BaselineChoice, DpokConfig};
pub use dpok_run::{read_metrics as read_dpok_metrics, run_dpok, DpokMetrics};
pub use metrics::StepMetrics;

use crate::CancelToken;

/// Errors of a fine-tuning run; each names the file, field or pair at fault and the fix.
#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    #[error("config `{field}`: {message}")]
    Config {
        field: &'static str,
        message: String,
    },
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("run directory {path}: {message}")]
    Run { path: PathBuf, message: String },
    #[error("preference data: {0}")]
    Data(#[from] crate::data::DataError),
    #[error("encoding with the bundle's ONNX models: {0}")]
    Engine(#[from] crate::engine::EngineError),
    #[error("trainer: {0}")]
    Train(#[from] crate::train::TrainError),
    #[error("loss: {0}")]
    Loss(#[from] crate::loss::LossError),
    #[error("reward model: {0}")]
    Reward(#[from] crate::score::ScoreError),
    #[error("DPOK: {0}")]
    Dpok(#[from] dpok::DpokError),
    #[error("device `{device}`: {message}")]
    Device { device: String, message: String },
    #[error("training diverged at step {step}: {what} is not finite. Fix: lower --lr or --beta, or enable --max-grad-norm")]
    Diverged { step: usize, what: &'static str },
    #[error("cancelled")]
    Cancelled,
    /// `stop_after` steps were done and checkpointed; resume to continue.
    #[error("paused after step {step} (checkpoint written; resume to continue)")]
    Paused { step: usize },
}

/// Progress of a run, in order: `Loaded`, `Encoding`..., (`Resumed`), `Step`... with
/// `Checkpoint` among them, then `Finished` — or the run's error.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Loaded {
        pairs: usize,
        rows_read: usize,
        skipped: BTreeMap<String, usize>,
    },
    Encoding {
        done: usize,
        total: usize,
    },
    /// The encode-once cache holds every image and prompt; `new_*` were encoded by this run.
    Cached {
        images: usize,
        prompts: usize,
        new_images: usize,
        new_prompts: usize,
    },
    Resumed {
        step: usize,
    },
    Step(StepMetrics),
    /// One DPOK optimiser step (`dpoimg-finetune dpok`; DPO runs send `Step`).
    DpokStep(DpokMetrics),
    Checkpoint {
        step: usize,
        path: PathBuf,
    },
    Finished(Outcome),
}

/// What a finished run leaves behind.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    pub adapter: PathBuf,
    pub adapter_sha256: String,
    pub metrics: PathBuf,
    pub plots: Vec<PathBuf>,
    pub steps: usize,
    /// Mean over the last min(10, steps) steps of the run.
    pub final_loss: f64,
    pub final_implicit_acc: f64,
    /// DPOK: mean reward of the samples drawn in the last min(10, iterations) iterations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_reward: Option<f64>,
    /// What the run computed (this invocation and any it resumed, summed from the metrics log).
    #[serde(default)]
    pub compute: Compute,
}

/// Compute used by a run, in UNet sample-evaluations (one latent through the UNet once; a CFG
/// step counts two), so DPO and DPOK runs compare per unit of compute.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Compute {
    /// UNet forward sample-evaluations (ONNX rollouts, trainer policy and reference forwards).
    pub unet_forward: u64,
    /// UNet backward sample-evaluations (trainer).
    pub unet_backward: u64,
    /// Images sampled from the policy (DPOK rollouts; 0 for DPO).
    pub samples_drawn: u64,
    /// Images scored by the reward model.
    pub reward_evals: u64,
    /// Sum of the steps' wall time in seconds.
    pub wall_seconds: f64,
}

/// Name of the adapter a finished run writes into its run directory.
pub const ADAPTER_FILE: &str = "adapter.safetensors";
/// The run's settings and fingerprint, written when it starts.
pub const RUN_FILE: &str = "run.json";

#[derive(Debug, Serialize, Deserialize)]
struct RunRecord {
    format: String,
    fingerprint: String,
    config: DpoConfig,
}

/// Checks the run directory against `cfg` without writing anything: a new run needs an empty (or
/// absent) one; a resumed run needs the same fingerprint. Returns whether it already holds this
/// run (so a resume) and the checkpoint to resume from.
fn check_run_dir(cfg: &DpoConfig) -> Result<(bool, Option<PathBuf>), FinetuneError> {
    check_run_dir_of(&cfg.output, cfg.resume, &cfg.fingerprint())
}

/// [`check_run_dir`] for any method: `run.json` is read only for its `fingerprint`.
fn check_run_dir_of(
    run: &Path,
    resume: bool,
    fingerprint: &str,
) -> Result<(bool, Option<PathBuf>), FinetuneError> {
    let run = &run.to_path_buf();
    let run_err = |message: String| FinetuneError::Run {
        path: run.clone(),
        message,
    };
    if run.exists() && !run.is_dir() {
        return Err(run_err(
            "exists and is not a directory. Fix: choose another --output".into(),
        ));
    }
    if !run.exists() {
        return Ok((false, None));
    }
    let record_path = run.join(RUN_FILE);
    if record_path.is_file() {
        let text = std::fs::read(&record_path).map_err(|e| run_err(e.to_string()))?;
        #[derive(Deserialize)]
        struct Fingerprint {
            fingerprint: String,
        }
        let rec: Fingerprint = serde_json::from_slice(&text)
            .map_err(|e| run_err(format!("{RUN_FILE} is unreadable ({e})")))?;
        if !resume {
            return Err(run_err(
                "already holds a run. Fix: pass --resume to continue it, or choose a new --output"
                    .into(),
            ));
        }
        if rec.fingerprint != fingerprint {
            return Err(run_err(format!(
                "holds a run with other settings (fingerprint {} vs {}). Fix: resume with the \
                 same settings (see {RUN_FILE}), or choose a new --output",
                &rec.fingerprint[..12],
                &fingerprint[..12]
            )));
        }
        return Ok((true, checkpoint::latest(run)?));
    }
    let foreign = std::fs::read_dir(run)
        .map_err(|e| run_err(e.to_string()))?
        .flatten()
        .any(|e| !e.file_name().to_string_lossy().starts_with('.'));
    if foreign {
        return Err(run_err(
            "is not empty and holds no dpoimg run. Fix: choose a new --output".into(),
        ));
    }
    Ok((false, None))
}

/// Creates the run directory and its `run.json` (a new run, after its data loaded).
fn claim_run_dir(cfg: &DpoConfig) -> Result<(), FinetuneError> {
    let run = &cfg.output;
    let run_err = |message: String| FinetuneError::Run {
        path: run.clone(),
        message,
    };
    std::fs::create_dir_all(run).map_err(|e| run_err(e.to_string()))?;
    let rec = RunRecord {
        format: "dpoimg-run/1".into(),
        fingerprint: cfg.fingerprint(),
        config: cfg.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&rec).expect("record serialises");
    crate::fsutil::atomic_write(&run.join(RUN_FILE), &bytes).map_err(|e| run_err(e.to_string()))
}

/// Runs (or resumes) a Diffusion-DPO / SFT LoRA job. `on_event` sees progress; `cancel` stops
/// it between micro-batches, after saving a checkpoint of the completed steps.
pub fn run_dpo(
    cfg: &DpoConfig,
    on_event: &mut dyn FnMut(&Event),
    cancel: &CancelToken,
) -> Result<Outcome, FinetuneError> {
    cfg.validate()?;
    let (existing, resume_from) = check_run_dir(cfg)?;
    let prepared = prepare::prepare(cfg, on_event, cancel)?;
    if !existing {
        claim_run_dir(cfg)?;
    }
    let device = cfg.device.trim().to_ascii_lowercase();
    match parse_device(&device)? {
        DeviceChoice::Cpu => {
            let be = std::sync::Arc::new(crate::train::Cpu::new(cfg.threads));
            trainer::train(be, cfg, &prepared, resume_from.as_deref(), on_event, cancel)
        }
        #[cfg(feature = "cuda")]
        DeviceChoice::Cuda(ordinal) => {
            let be = crate::train::backend::cuda::Cuda::new(ordinal).map_err(|e| {
                FinetuneError::Device {
                    device: device.clone(),
                    message: e.to_string(),
                }
            })?;
            trainer::train(
                std::sync::Arc::new(be),
                cfg,
                &prepared,
                resume_from.as_deref(),
                on_event,
                cancel,
            )
        }
        #[cfg(not(feature = "cuda"))]
        DeviceChoice::Cuda(_) => Err(FinetuneError::Device {
            device,
            message: "this build has no CUDA trainer backend. Fix: rebuild with \
                      `cargo build --release --features cuda`, or use --device cpu"
                .into(),
        }),
    }
}

enum DeviceChoice {
    Cpu,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Cuda(usize),
}

fn parse_device(d: &str) -> Result<DeviceChoice, FinetuneError> {
    match d {
        "cpu" => Ok(DeviceChoice::Cpu),
        "cuda" => Ok(DeviceChoice::Cuda(0)),
        _ => match d.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Ok(DeviceChoice::Cuda(n)),
            None => Err(FinetuneError::Config {
                field: "device",
                message: format!("`{d}` is not one of cpu, cuda, cuda:N"),
            }),
        },
    }
}

/// Where a finished run's adapter is (whether or not it exists yet).
pub fn adapter_path(run: &Path) -> PathBuf {
    run.join(ADAPTER_FILE)
}
