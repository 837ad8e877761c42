//! `dpoimg experiment`: one config file → base vs Diffusion-DPO vs DPOK (vs SFT) on the same
//! bundle, prompts and compute budget. Each arm trains in its own run directory (resumable: a
//! finished arm is never retrained, an interrupted one continues from its checkpoint), is
//! snapshotted at `curve.points` moments for the reward-vs-compute curves, and then every arm is
//! evaluated by the `dpoimg eval` library on the same prompts and paired seeds. The result is
//! `experiment.json` + `report.html` and a blinded A/B pack for DPO vs DPOK.
//!
//! Layout of the output directory:
//! - `experiment-config.json`: the config as given and its sha256 (a resume with another config
//!   is refused);
//! - `runs/<arm>/`: the fine-tuning run (checkpoints, metrics.jsonl, plots, adapter);
//! - `curves/<arm>.json` and `curves/<arm>/step-*.safetensors`: curve points and the adapters
//!   they were measured on;
//! - `eval/`: the `dpoimg eval` output (images, eval.json, report.html);
//! - `blind/` (for raters) and `blind-key.json` (kept apart);
//! - `experiment.json`, `report.html`.

pub mod cli;
pub mod config;
mod curves;
mod report;

pub use config::{ArmTrain, ExperimentConfig, PlannedArm};
pub use curves::CurvePoint;
pub use report::{ArmResult, ExperimentReport, PerCompute};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::cancel::CancelToken;
use crate::engine::{Engine, EngineOptions};
use crate::finetune::{self, Compute, Event, FinetuneError, Outcome};
use crate::score::{RewardModel, ScoreOptions};

/// Errors of an experiment, each naming the field, file or arm at fault.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error("experiment config `{field}`: {message}")]
    Config { field: String, message: String },
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("output directory {path}: {message}")]
    Out { path: PathBuf, message: String },
    #[error("arm `{arm}`: training: {source}")]
    Train {
        arm: String,
        source: Box<FinetuneError>,
    },
    #[error("reward curve of arm `{arm}`: {message}")]
    Curve { arm: String, message: String },
    #[error("evaluation: {0}")]
    Eval(#[from] crate::eval::EvalError),
    #[error("cancelled (rerun with --resume to continue)")]
    Cancelled,
}

pub(crate) fn io_err(path: &Path, e: impl std::fmt::Display) -> ExperimentError {
    ExperimentError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// File names in the output directory.
pub const CONFIG_RECORD: &str = "experiment-config.json";
pub const REPORT_JSON: &str = "experiment.json";
pub const REPORT_HTML: &str = "report.html";

#[derive(Debug, Serialize, Deserialize)]
struct ConfigRecord {
    format: String,
    config_sha256: String,
    config: ExperimentConfig,
}

/// What is remembered about a trained arm between invocations (`curves/<arm>.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ArmState {
    points: Vec<CurvePoint>,
    outcome: Option<Outcome>,
    /// Wall time of the arm's training invocations (steps, encoding and data loading included).
    wall_seconds_total: f64,
}

/// What a caller sees while an experiment runs.
#[derive(Debug, Clone)]
pub enum Progress<'a> {
    /// A stage or notable event, as one line.
    Log(&'a str),
    /// A training step of `arm` (`done` of `total` optimiser steps).
    Step {
        arm: &'a str,
        done: usize,
        total: usize,
    },
}

/// Runs (or, with `resume`, continues) the experiment of `config_path` into `out`.
pub fn run(
    config_path: &Path,
    out: &Path,
    resume: bool,
    progress: &mut dyn FnMut(Progress<'_>),
    cancel: &CancelToken,
) -> Result<ExperimentReport, ExperimentError> {
    let (cfg, bytes) = ExperimentConfig::load(config_path)?;
    let arms = cfg.plan(out)?;
    claim_out(out, &cfg, &bytes, resume)?;
    let mut log = |s: &str| progress(Progress::Log(s));
    log(&format!(
        "experiment {}: arms {}",
        config_path.display(),
        arms.iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));

    let session = crate::runtime::SessionOptions {
        device: cfg.onnx_device()?,
        intra_threads: cfg.threads,
        ..Default::default()
    };
    let engine = Engine::open(
        &cfg.bundle,
        &EngineOptions {
            session: session.clone(),
            ..Default::default()
        },
    )
    .map_err(|e| io_err(&cfg.bundle, e))?;
    let reward = RewardModel::open(
        &cfg.reward,
        &ScoreOptions {
            session,
            ..Default::default()
        },
    )
    .map_err(|e| io_err(&cfg.reward, e))?;
    let eval_prompts = crate::eval::read_prompts(&cfg.eval_prompts)?;
    let curve = curves::Curves {
        engine: &engine,
        reward: &reward,
        prompts: eval_prompts
            .iter()
            .take(cfg.curve.prompts)
            .map(|p| p.prompt.clone())
            .collect(),
        images_per_prompt: cfg.curve.images_per_prompt,
        seed: cfg.curve.seed,
        steps: cfg.eval.steps,
        guidance: cfg.eval.guidance,
    };
    let curve_dir = out.join("curves");
    std::fs::create_dir_all(&curve_dir).map_err(|e| io_err(&curve_dir, e))?;

    // The untrained model: every curve's first point.
    let base_path = curve_dir.join("base.json");
    let base_point = match read_state(&base_path)?.points.first() {
        Some(p) => p.clone(),
        None => {
            log("curves: scoring the base model");
            let p = curve
                .point(None, 0, Compute::default(), cancel)
                .map_err(|e| curve_err("base", e))?;
            write_state(
                &base_path,
                &ArmState {
                    points: vec![p.clone()],
                    ..Default::default()
                },
            )?;
            p
        }
    };

    let mut states: BTreeMap<String, ArmState> = BTreeMap::new();
    for arm in &arms {
        let Some(train) = &arm.train else { continue };
        let state_path = curve_dir.join(format!("{}.json", arm.name));
        let mut state = read_state(&state_path)?;
        if let Some(o) = &state.outcome {
            if crate::hash::sha256_file(&o.adapter).ok().as_deref() == Some(&o.adapter_sha256) {
                progress(Progress::Log(&format!(
                    "arm {}: finished earlier ({} steps); not retrained",
                    arm.name, o.steps
                )));
                states.insert(arm.name.clone(), state);
                continue;
            }
            state.outcome = None;
        }
        progress(Progress::Log(&format!(
            "arm {}: training {} steps (planned {} UNet forward, {} backward evaluations)",
            arm.name,
            arm.steps(),
            arm.planned.unet_forward,
            arm.planned.unet_backward
        )));
        train_arm(
            arm,
            train,
            &cfg,
            &curve,
            &curve_dir,
            &state_path,
            &mut state,
            progress,
            cancel,
        )?;
        states.insert(arm.name.clone(), state);
    }
    let mut log = |s: &str| progress(Progress::Log(s));

    // Evaluation of every arm with the eval library, on the same prompts and paired seeds.
    log("evaluating all arms");
    let eval_dir = out.join("eval");
    let mut arm_specs = Vec::new();
    for arm in &arms {
        arm_specs.push(match states.get(&arm.name) {
            None => arm.name.clone(),
            Some(s) => format!(
                "{}={}",
                arm.name,
                s.outcome
                    .as_ref()
                    .expect("trained arms have an outcome here")
                    .adapter
                    .display()
            ),
        });
    }
    let args = crate::eval::cli::EvalArgs {
        prompts: Some(cfg.eval_prompts.clone()),
        bundle: Some(cfg.bundle.clone()),
        arms: arm_specs,
        images_per_prompt: cfg.eval.images_per_prompt,
        seed: cfg.eval.seed,
        negative_prompt: String::new(),
        steps: cfg.eval.steps,
        guidance: cfg.eval.guidance,
        sampler: None,
        width: None,
        height: None,
        reward: Some(cfg.reward.clone()),
        clip: cfg.clip.clone(),
        inception: cfg.inception.clone(),
        fid_reference: cfg.fid_reference.clone(),
        world_check: false,
        bootstrap_resamples: cfg.eval.bootstrap_resamples,
        bootstrap_seed: cfg.eval.bootstrap_seed,
        blind_export: None,
        blind_key: None,
        blind_seed: cfg.eval.blind_seed,
        votes: None,
        key: None,
        output: eval_dir.clone(),
        rt: crate::engine::RuntimeFlags {
            device: cfg.onnx_device()?,
            threads: cfg.threads,
            ..Default::default()
        },
    };
    crate::eval::cli::run(&args, cfg.bundle.clone(), cancel).map_err(|e| match e {
        crate::eval::EvalError::Cancelled => ExperimentError::Cancelled,
        e => e.into(),
    })?;
    let eval = crate::eval::read_report(&eval_dir)?;

    // Blinded human A/B pack: DPO vs DPOK (the seed's comparison).
    let blind = if states.contains_key("dpo") && states.contains_key("dpok") {
        let dir = out.join("blind");
        let key = out.join("blind-key.json");
        if dir.exists() {
            // deterministic from the seed and the images: rebuilt rather than trusted
            std::fs::remove_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        }
        let mut sub = eval.clone();
        sub.arms.retain(|a| a.name == "dpo" || a.name == "dpok");
        let k = crate::eval::blind_export(&eval_dir, &sub, &dir, &key, cfg.eval.blind_seed)?;
        log(&format!(
            "blind A/B pack: {} dpo-vs-dpok pairs in {} (key {})",
            k.pairs.len(),
            dir.display(),
            key.display()
        ));
        Some(report::BlindPack {
            dir: "blind".into(),
            key: "blind-key.json".into(),
            pairs: k.pairs.len(),
            arms: ["dpo".into(), "dpok".into()],
        })
    } else {
        None
    };

    let rep = report::build(&cfg, &arms, &states, base_point, eval, blind);
    let json = serde_json::to_vec_pretty(&rep).expect("report serialises");
    let p = out.join(REPORT_JSON);
    crate::fsutil::atomic_write(&p, &json).map_err(|e| io_err(&p, e))?;
    let p = out.join(REPORT_HTML);
    crate::fsutil::atomic_write(&p, report::html(&rep).as_bytes()).map_err(|e| io_err(&p, e))?;
    log(&format!(
        "wrote {} and {}",
        out.join(REPORT_JSON).display(),
        p.display()
    ));
    Ok(rep)
}

fn curve_err(arm: &str, message: String) -> ExperimentError {
    ExperimentError::Curve {
        arm: arm.into(),
        message,
    }
}

/// A new experiment needs an absent or empty `out`; an existing one needs `resume` and the same
/// config bytes.
fn claim_out(
    out: &Path,
    cfg: &ExperimentConfig,
    bytes: &[u8],
    resume: bool,
) -> Result<(), ExperimentError> {
    let out_err = |message: String| ExperimentError::Out {
        path: out.to_path_buf(),
        message,
    };
    let sha = crate::hash::sha256_hex(bytes);
    let rec_path = out.join(CONFIG_RECORD);
    if rec_path.is_file() {
        if !resume {
            return Err(out_err(
                "already holds an experiment. Fix: pass --resume to continue it, or choose a new --out".into(),
            ));
        }
        let rec: ConfigRecord =
            serde_json::from_slice(&std::fs::read(&rec_path).map_err(|e| io_err(&rec_path, e))?)
                .map_err(|e| io_err(&rec_path, format!("unreadable ({e})")))?;
        if rec.config_sha256 != sha {
            return Err(out_err(format!(
                "holds an experiment with another config (sha256 {} vs {}). Fix: resume with \
                 the same config file, or choose a new --out",
                &rec.config_sha256[..12],
                &sha[..12]
            )));
        }
        return Ok(());
    }
    if out.exists() {
        if !out.is_dir() {
            return Err(out_err(
                "is not a directory. Fix: choose another --out".into(),
            ));
        }
        let nonempty = std::fs::read_dir(out)
            .map_err(|e| io_err(out, e))?
            .flatten()
            .any(|e| !e.file_name().to_string_lossy().starts_with('.'));
        if nonempty {
            return Err(out_err(
                "is not empty and holds no experiment. Fix: choose a new --out".into(),
            ));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    let rec = ConfigRecord {
        format: "dpoimg-experiment-config/1".into(),
        config_sha256: sha,
        config: cfg.clone(),
    };
    let json = serde_json::to_vec_pretty(&rec).expect("record serialises");
    crate::fsutil::atomic_write(&rec_path, &json).map_err(|e| io_err(&rec_path, e))
}

fn read_state(path: &Path) -> Result<ArmState, ExperimentError> {
    if !path.exists() {
        return Ok(ArmState::default());
    }
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        io_err(
            path,
            format!("unreadable experiment state ({e}). Fix: delete it to redo that arm's curve"),
        )
    })
}

fn write_state(path: &Path, s: &ArmState) -> Result<(), ExperimentError> {
    let json = serde_json::to_vec_pretty(s).expect("state serialises");
    crate::fsutil::atomic_write(path, &json).map_err(|e| io_err(path, e))
}

/// Trains one arm in `curve.points` segments (`stop_after`), measuring a curve point after each.
#[allow(clippy::too_many_arguments)]
fn train_arm(
    arm: &PlannedArm,
    train: &ArmTrain,
    cfg: &ExperimentConfig,
    curve: &curves::Curves<'_>,
    curve_dir: &Path,
    state_path: &Path,
    state: &mut ArmState,
    progress: &mut dyn FnMut(Progress<'_>),
    cancel: &CancelToken,
) -> Result<(), ExperimentError> {
    let total = arm.steps();
    let segment = total.div_ceil(cfg.curve.points).max(1);
    let snap_dir = curve_dir.join(&arm.name);
    std::fs::create_dir_all(&snap_dir).map_err(|e| io_err(&snap_dir, e))?;
    loop {
        let started = Instant::now();
        let mut on_event = |e: &Event| match e {
            Event::Step(m) => progress(Progress::Step {
                arm: &arm.name,
                done: m.step,
                total: m.total_steps,
            }),
            Event::DpokStep(m) => progress(Progress::Step {
                arm: &arm.name,
                done: m.step,
                total: m.total_steps,
            }),
            Event::Checkpoint { step, .. } => progress(Progress::Log(&format!(
                "arm {}: checkpoint at step {step}",
                arm.name
            ))),
            _ => {}
        };
        let result = match train {
            ArmTrain::Dpo(c) => {
                let mut c = (**c).clone();
                c.stop_after = Some(segment);
                finetune::run_dpo(&c, &mut on_event, cancel)
            }
            ArmTrain::Dpok(c) => {
                let mut c = (**c).clone();
                c.stop_after = Some(segment);
                finetune::run_dpok(&c, &mut on_event, cancel)
            }
        };
        state.wall_seconds_total += started.elapsed().as_secs_f64();
        let (run_dir, targets) = match train {
            ArmTrain::Dpo(c) => (c.output.clone(), c.targets.clone()),
            ArmTrain::Dpok(c) => (c.output.clone(), c.targets.clone()),
        };
        let (adapter, finished) = match result {
            Ok(o) => (o.adapter.clone(), Some(o)),
            Err(FinetuneError::Paused { .. }) => {
                let snap = curves::snapshot(&run_dir, &targets, &snap_dir)
                    .map_err(|e| curve_err(&arm.name, e))?;
                (snap, None)
            }
            Err(FinetuneError::Cancelled) => {
                write_state(state_path, state)?;
                return Err(ExperimentError::Cancelled);
            }
            Err(e) => {
                return Err(ExperimentError::Train {
                    arm: arm.name.clone(),
                    source: Box::new(e),
                })
            }
        };
        let (steps, compute) =
            curves::compute_so_far(train, &run_dir).map_err(|e| curve_err(&arm.name, e))?;
        if !state.points.iter().any(|p| p.step == steps) {
            let p = curve
                .point(Some(&adapter), steps, compute, cancel)
                .map_err(|e| {
                    if cancel.is_cancelled() {
                        ExperimentError::Cancelled
                    } else {
                        curve_err(&arm.name, e)
                    }
                })?;
            progress(Progress::Log(&format!(
                "arm {}: step {steps}/{total}: curve reward {:.4} at {} UNet evaluations",
                arm.name,
                p.reward_mean,
                p.unet_forward + p.unet_backward
            )));
            state.points.push(p);
        }
        let done = finished.is_some();
        state.outcome = finished;
        write_state(state_path, state)?;
        if done {
            return Ok(());
        }
    }
}
