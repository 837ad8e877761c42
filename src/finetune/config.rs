//! What a fine-tuning run is asked to do: every knob of `dpoimg-finetune dpo`, as one
//! serialisable struct (the daemon's job body and the CLI build the same thing), its validation
//! and the fingerprint a checkpoint carries so that `--resume` refuses a run with other settings.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::FinetuneError;
use crate::optim::{AdamWConfig, LrSchedule};

/// The training objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Diffusion-DPO against the frozen reference (the same UNet with LoRA off).
    #[default]
    Dpo,
    /// Plain denoising MSE on the preferred image only (the paper's SFT baseline).
    Sft,
}

/// How each image becomes a latent in the encode-once cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LatentChoice {
    /// The VAE posterior mean (deterministic).
    #[default]
    Mean,
    /// One posterior sample per image, seeded by the run seed and the image's content hash.
    Sample,
}

/// `A`'s initialisation (B is always zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LoraInitChoice {
    /// peft `init_lora_weights="gaussian"`, as diffusers' Diffusion-DPO LoRA script.
    #[default]
    Gaussian,
    /// peft's default (kaiming uniform).
    Kaiming,
}

/// Learning-rate schedule by name (`warmup` steps apply to `warmup` and `cosine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleChoice {
    #[default]
    Constant,
    Warmup,
    Cosine,
}

/// Largest accepted values: a typo such as `--steps 1e9` is an error, not a week of CPU time.
pub mod limits {
    pub const MAX_STEPS: usize = 10_000_000;
    pub const MAX_BATCH_PAIRS: usize = 1024;
    pub const MAX_GRAD_ACCUM: usize = 65_536;
    pub const MAX_RANK: usize = 1024;
}

/// One Diffusion-DPO (or SFT) LoRA run. Defaults follow diffusers' LoRA Diffusion-DPO script
/// (rank 4, alpha = rank, gaussian init, targets to_q/to_k/to_v/to_out.0) and the original
/// trainer's β = 5000, AdamW (0.9, 0.999, 1e-2, 1e-8) and gradient clipping at 1.0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpoConfig {
    /// Model bundle directory.
    pub bundle: PathBuf,
    /// Preference data: ImageRewardDB folder or metadata parquet, Pick-a-Pic parquet, or JSONL.
    pub data: PathBuf,
    /// Run directory: checkpoints, metrics, plots and the final `adapter.safetensors`.
    pub output: PathBuf,
    /// ImageRewardDB split (`train` by default).
    pub split: Option<String>,
    /// Keep only prompts containing every one of these substrings.
    pub prompt_contains: Vec<String>,
    /// Keep only prompts matching this regular expression.
    pub prompt_regex: Option<String>,
    /// Skip broken rows (counted) instead of stopping at the first one.
    pub skip_bad_rows: bool,
    /// Use at most this many pairs (after filtering, in file order).
    pub max_pairs: Option<usize>,
    pub objective: Objective,
    /// DPO's β (the KL weight); SD-1.x: 5000.
    pub beta: f64,
    /// Optimiser steps.
    pub steps: usize,
    /// Preference pairs per micro-batch (the UNet sees twice as many samples).
    pub batch_pairs: usize,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    pub lr: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    pub weight_decay: f64,
    pub schedule: ScheduleChoice,
    pub warmup_steps: usize,
    /// Clip the global gradient norm to this; `None` = no clipping.
    pub max_grad_norm: Option<f64>,
    pub rank: usize,
    /// LoRA alpha; `None` = rank (scale 1).
    pub alpha: Option<f32>,
    /// Module-name suffixes to adapt (peft `target_modules`).
    pub targets: Vec<String>,
    pub lora_init: LoraInitChoice,
    /// Start from this adapter instead of a fresh one (its rank and targets win).
    pub init_adapter: Option<PathBuf>,
    pub seed: u64,
    /// Probability of training on the empty prompt instead of the caption (the original
    /// trainer's `proportion_empty_prompts`; 0 by default here).
    pub caption_dropout: f64,
    /// Train on timesteps in `[timestep_min, timestep_max)` only (default: all of
    /// `[0, num_train_timesteps)`). The image layout — which object goes where — is decided at
    /// high noise; a preference about layout is learned faster when the pairs are compared
    /// there instead of at the low-noise steps that only sharpen edges.
    #[serde(skip_serializing_if = "is_zero")]
    pub timestep_min: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestep_max: Option<usize>,
    pub latents: LatentChoice,
    /// Write a checkpoint every this many optimiser steps (0 = only at the end / on cancel).
    pub checkpoint_every: usize,
    /// How many checkpoints to keep (the newest).
    pub keep_checkpoints: usize,
    /// Encode-once cache; `None` = `$XDG_CACHE_HOME/dpoimg/encode` (or `~/.cache/...`).
    pub cache_dir: Option<PathBuf>,
    /// `cpu`, `cuda` or `cuda:N` for the trainer; ONNX encoders run on the CPU.
    pub device: String,
    /// CPU threads; 0 = all cores. Bit-exact resume needs the same count.
    pub threads: usize,
    /// Recompute activations in backward instead of keeping them (less memory, ~1.3x time).
    pub recompute: bool,
    /// Continue from the newest checkpoint in `output` (and accept an existing run there).
    pub resume: bool,
    /// Stop after this many optimiser steps of this invocation, leaving a checkpoint (testing
    /// and time-sliced jobs); `None` = run to `steps`.
    pub stop_after: Option<usize>,
}

impl Default for DpoConfig {
    fn default() -> Self {
        DpoConfig {
            bundle: PathBuf::from("models/default"),
            data: PathBuf::new(),
            output: PathBuf::new(),
            split: None,
            prompt_contains: vec![],
            prompt_regex: None,
            skip_bad_rows: false,
            max_pairs: None,
            objective: Objective::Dpo,
            beta: 5000.0,
            steps: 1000,
            batch_pairs: 1,
            grad_accum: 1,
            lr: 1e-5,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            weight_decay: 1e-2,
            schedule: ScheduleChoice::Constant,
            warmup_steps: 0,
            max_grad_norm: Some(1.0),
            rank: 4,
            alpha: None,
            targets: ["to_q", "to_k", "to_v", "to_out.0"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            lora_init: LoraInitChoice::Gaussian,
            init_adapter: None,
            seed: 0,
            caption_dropout: 0.0,
            timestep_min: 0,
            timestep_max: None,
            latents: LatentChoice::Mean,
            checkpoint_every: 100,
            keep_checkpoints: 2,
            cache_dir: None,
            device: "cpu".into(),
            threads: 0,
            recompute: false,
            resume: false,
            stop_after: None,
        }
    }
}

/// serde: omit a zero `timestep_min`, so configs (and fingerprints) that never set it are as before.
fn is_zero(v: &usize) -> bool {
    *v == 0
}

fn bad(field: &'static str, message: impl Into<String>) -> FinetuneError {
    FinetuneError::Config {
        field,
        message: message.into(),
    }
}

impl DpoConfig {
    /// Checks every field; the message names the field and the accepted range.
    pub fn validate(&self) -> Result<(), FinetuneError> {
        if self.data.as_os_str().is_empty() {
            return Err(bad(
                "data",
                "no preference data given. Fix: pass --data PATH",
            ));
        }
        if self.output.as_os_str().is_empty() {
            return Err(bad(
                "output",
                "no run directory given. Fix: pass --output DIR",
            ));
        }
        let range = |field, v: usize, lo: usize, hi: usize| {
            if v < lo || v > hi {
                Err(bad(field, format!("{v} is outside {lo}..={hi}")))
            } else {
                Ok(())
            }
        };
        range("steps", self.steps, 1, limits::MAX_STEPS)?;
        range("batch_pairs", self.batch_pairs, 1, limits::MAX_BATCH_PAIRS)?;
        range("grad_accum", self.grad_accum, 1, limits::MAX_GRAD_ACCUM)?;
        range("rank", self.rank, 1, limits::MAX_RANK)?;
        let positive = |field, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(bad(field, format!("{v} must be finite and > 0")))
            }
        };
        positive("beta", self.beta)?;
        positive("lr", self.lr)?;
        positive("adam_eps", self.adam_eps)?;
        for (field, v) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(bad(field, format!("{v} must be in [0, 1)")));
            }
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(bad("weight_decay", "must be finite and >= 0"));
        }
        if !(0.0..=1.0).contains(&self.caption_dropout) {
            return Err(bad("caption_dropout", "must be in [0, 1]"));
        }
        if let Some(hi) = self.timestep_max {
            if hi <= self.timestep_min {
                return Err(bad(
                    "timestep_max",
                    format!(
                        "{hi} must exceed timestep_min ({}): the range [min, max) is empty",
                        self.timestep_min
                    ),
                ));
            }
        }
        if let Some(n) = self.max_grad_norm {
            positive("max_grad_norm", n)?;
        }
        if let Some(a) = self.alpha {
            positive("alpha", f64::from(a))?;
        }
        if self.targets.is_empty() || self.targets.iter().any(|t| t.trim().is_empty()) {
            return Err(bad(
                "targets",
                "need at least one non-empty module suffix (e.g. to_q,to_k,to_v,to_out.0)",
            ));
        }
        if self.keep_checkpoints == 0 {
            return Err(bad("keep_checkpoints", "must be >= 1 (resume needs one)"));
        }
        if self.warmup_steps > self.steps {
            return Err(bad(
                "warmup_steps",
                format!("{} exceeds steps ({})", self.warmup_steps, self.steps),
            ));
        }
        if let Some(0) = self.stop_after {
            return Err(bad("stop_after", "must be >= 1"));
        }
        if let Some(0) = self.max_pairs {
            return Err(bad("max_pairs", "must be >= 1"));
        }
        Ok(())
    }

    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            lr: self.lr,
            beta1: self.adam_beta1,
            beta2: self.adam_beta2,
            eps: self.adam_eps,
            weight_decay: self.weight_decay,
        }
    }

    pub fn lr_schedule(&self) -> LrSchedule {
        match self.schedule {
            ScheduleChoice::Constant => LrSchedule::Constant,
            ScheduleChoice::Warmup => LrSchedule::ConstantWithWarmup {
                warmup: self.warmup_steps,
            },
            ScheduleChoice::Cosine => LrSchedule::Cosine {
                warmup: self.warmup_steps,
                total: self.steps,
            },
        }
    }

    /// sha256 of the settings that change the numbers (not paths of outputs, caches, devices,
    /// thread counts or checkpoint cadence): a checkpoint only resumes a run with the same one.
    pub fn fingerprint(&self) -> String {
        let mut c = self.clone();
        c.output = PathBuf::new();
        c.cache_dir = None;
        c.device = String::new();
        c.threads = 0;
        c.checkpoint_every = 0;
        c.keep_checkpoints = 1;
        c.resume = false;
        c.stop_after = None;
        c.recompute = false;
        let json = serde_json::to_vec(&c).expect("config serialises");
        crate::hash::sha256_hex(&json)
    }
}
