//! What a DPOK run is asked to do: every knob of `dpoimg-finetune dpok` as one serialisable struct
//! (the CLI, `dpoimg experiment` and JSON configs build the same thing), its validation, and the
//! fingerprint a checkpoint carries so that `--resume` refuses a run with other settings.
//!
//! Defaults are google-research `dpok/train_online_pg.py`'s argparse defaults where they apply
//! (LoRA rank 4, lr 1e-5, DDIM 50 steps η = 1 CFG 7.5, `p_step` 5, `p_batch_size` 2,
//! `gradient_accumulation_steps` 12, `clip_norm` 0.1, `ratio_clip` 1e-4, `reward_weight` 100,
//! `kl_weight` 0.01, `buffer_size` 1000, `g_batch_size` 6, AdamW with weight decay 0); the value
//! network (`v_flag 1`) is replaced by a per-prompt running-mean baseline (or none).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{FinetuneError, LoraInitChoice};
use crate::optim::AdamWConfig;

/// The advantage's baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BaselineChoice {
    /// `reward − mean of the prompt's last `baseline_window` rewards` (this sample's included).
    #[default]
    PromptMean,
    /// The raw reward (the reference with `v_flag 0`).
    None,
}

/// serde: omit the default `samples_per_prompt`, so configs (and fingerprints) that never set it
/// are as before.
fn is_one(v: &usize) -> bool {
    *v == 1
}

/// Largest accepted values: a typo is an error, not a week of CPU time or an exhausted disk.
pub mod limits {
    pub const MAX_STEPS: usize = 10_000_000;
    pub const MAX_SAMPLES_PER_ITER: usize = 4096;
    pub const MAX_SAMPLING_STEPS: usize = 1000;
    pub const MAX_POLICY_STEPS: usize = 10_000;
    pub const MAX_MINIBATCH: usize = 1024;
    pub const MAX_GRAD_ACCUM: usize = 65_536;
    pub const MAX_BUFFER: usize = 1_000_000;
    pub const MAX_RANK: usize = 1024;
    pub const MAX_PROMPTS: usize = 1_000_000;
}

/// One DPOK LoRA run (Fan et al. 2023): each iteration samples `samples_per_iter` images from the
/// current policy, scores them, stores their transitions, then takes `policy_steps` AdamW steps on
/// minibatches drawn from the replay buffer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpokConfig {
    /// Model bundle directory.
    pub bundle: PathBuf,
    /// Reward bundle directory (`reward.json`, ImageReward as ONNX).
    pub reward: PathBuf,
    /// Training prompts: a UTF-8 text file, one prompt per line (blank lines and lines starting
    /// with `#` are skipped).
    pub prompts: PathBuf,
    /// Run directory: checkpoints, metrics, plots and the final `adapter.safetensors`.
    pub output: PathBuf,
    /// Outer iterations (one rollout batch plus `policy_steps` optimiser steps each).
    pub steps: usize,
    /// Images sampled from the current policy per iteration (the reference's `g_batch_size`).
    pub samples_per_iter: usize,
    /// Images per drawn prompt in one iteration (must divide `samples_per_iter`). The reference
    /// draws every sample's prompt independently (1); with many prompts that leaves the
    /// per-prompt baseline a single reward to compare against, so the advantage is 0. Drawing
    /// each prompt k > 1 times makes the baseline the group's mean reward (as in DDPO's
    /// per-prompt stat tracking), which is what gives a multi-prompt run a usable signal.
    #[serde(skip_serializing_if = "is_one")]
    pub samples_per_prompt: usize,
    /// Images per ONNX rollout call (memory vs. speed; does not change the result's draws).
    pub rollout_batch: usize,
    /// DDIM steps of each rollout.
    pub sampling_steps: usize,
    /// Classifier-free guidance of the rollouts and of the policy's log-probabilities.
    pub guidance: f64,
    /// DDIM η of the rollouts (DPOK: 1; must be > 0 for the transitions to have a density).
    pub eta: f64,
    /// Optimiser steps per iteration (the reference's `p_step`).
    pub policy_steps: usize,
    /// Transitions per micro-batch (the reference's `p_batch_size`).
    pub minibatch: usize,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    /// Clip the global gradient norm to this; `None` = no clipping (the reference's `clip_norm`).
    pub max_grad_norm: Option<f64>,
    /// The importance ratio is clamped to `[1 − ratio_clip, 1 + ratio_clip]`.
    pub ratio_clip: f64,
    pub reward_weight: f64,
    pub kl_weight: f64,
    /// The KL term enters the loss from iteration `kl_warmup` on (0-based; 0 = always).
    pub kl_warmup: usize,
    pub baseline: BaselineChoice,
    /// Rewards remembered per prompt by the `prompt_mean` baseline (0 = all).
    pub baseline_window: usize,
    /// Transitions kept in the replay buffer (newest first out of the oldest).
    pub buffer_size: usize,
    pub lr: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    pub weight_decay: f64,
    pub rank: usize,
    /// LoRA alpha; `None` = rank (scale 1).
    pub alpha: Option<f32>,
    /// Module-name suffixes to adapt (peft `target_modules`).
    pub targets: Vec<String>,
    pub lora_init: LoraInitChoice,
    pub seed: u64,
    /// Checkpoint every this many iterations (0 = only at the end / on cancel).
    pub checkpoint_every: usize,
    /// How many checkpoints to keep (the newest).
    pub keep_checkpoints: usize,
    /// `cpu`, `cuda` or `cuda:N` for the trainer; rollouts and rewards run on ONNX Runtime (CPU).
    pub device: String,
    /// CPU threads of the trainer; 0 = all cores. Bit-exact resume needs the same count.
    pub threads: usize,
    /// Continue from the newest checkpoint in `output` (and accept an existing run there).
    pub resume: bool,
    /// Stop after this many iterations of this invocation, leaving a checkpoint; `None` = run to
    /// `steps`.
    pub stop_after: Option<usize>,
}

impl Default for DpokConfig {
    fn default() -> Self {
        DpokConfig {
            bundle: PathBuf::from("models/default"),
            reward: PathBuf::new(),
            prompts: PathBuf::new(),
            output: PathBuf::new(),
            steps: 100,
            samples_per_iter: 6,
            samples_per_prompt: 1,
            rollout_batch: 8,
            sampling_steps: 50,
            guidance: 7.5,
            eta: 1.0,
            policy_steps: 5,
            minibatch: 2,
            grad_accum: 12,
            max_grad_norm: Some(0.1),
            ratio_clip: 1e-4,
            reward_weight: 100.0,
            kl_weight: 0.01,
            kl_warmup: 0,
            baseline: BaselineChoice::PromptMean,
            baseline_window: 32,
            buffer_size: 1000,
            lr: 1e-5,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            weight_decay: 0.0,
            rank: 4,
            alpha: None,
            targets: ["to_q", "to_k", "to_v", "to_out.0"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            lora_init: LoraInitChoice::Gaussian,
            seed: 0,
            checkpoint_every: 10,
            keep_checkpoints: 2,
            device: "cpu".into(),
            threads: 0,
            resume: false,
            stop_after: None,
        }
    }
}

fn bad(field: &'static str, message: impl Into<String>) -> FinetuneError {
    FinetuneError::Config {
        field,
        message: message.into(),
    }
}

impl DpokConfig {
    /// Checks every field; the message names the field, the accepted range and the fix.
    pub fn validate(&self) -> Result<(), FinetuneError> {
        for (field, p, flag) in [
            ("bundle", &self.bundle, "--bundle DIR"),
            ("reward", &self.reward, "--reward DIR (a reward bundle)"),
            (
                "prompts",
                &self.prompts,
                "--prompts FILE (one prompt per line)",
            ),
            ("output", &self.output, "--output DIR"),
        ] {
            if p.as_os_str().is_empty() {
                return Err(bad(field, format!("not given. Fix: pass {flag}")));
            }
        }
        let range = |field, v: usize, lo: usize, hi: usize| {
            if v < lo || v > hi {
                Err(bad(field, format!("{v} is outside {lo}..={hi}")))
            } else {
                Ok(())
            }
        };
        range("steps", self.steps, 1, limits::MAX_STEPS)?;
        range(
            "samples_per_iter",
            self.samples_per_iter,
            1,
            limits::MAX_SAMPLES_PER_ITER,
        )?;
        range(
            "samples_per_prompt",
            self.samples_per_prompt,
            1,
            self.samples_per_iter,
        )?;
        if !self
            .samples_per_iter
            .is_multiple_of(self.samples_per_prompt)
        {
            return Err(bad(
                "samples_per_prompt",
                format!(
                    "{} does not divide samples_per_iter ({}). Fix: pick a divisor",
                    self.samples_per_prompt, self.samples_per_iter
                ),
            ));
        }
        range(
            "rollout_batch",
            self.rollout_batch,
            1,
            crate::limits::MAX_COUNT as usize,
        )?;
        range(
            "sampling_steps",
            self.sampling_steps,
            1,
            limits::MAX_SAMPLING_STEPS,
        )?;
        range(
            "policy_steps",
            self.policy_steps,
            1,
            limits::MAX_POLICY_STEPS,
        )?;
        range("minibatch", self.minibatch, 1, limits::MAX_MINIBATCH)?;
        range("grad_accum", self.grad_accum, 1, limits::MAX_GRAD_ACCUM)?;
        range("buffer_size", self.buffer_size, 1, limits::MAX_BUFFER)?;
        range("rank", self.rank, 1, limits::MAX_RANK)?;
        let positive = |field, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(bad(field, format!("{v} must be finite and > 0")))
            }
        };
        let non_negative = |field, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(bad(field, format!("{v} must be finite and >= 0")))
            }
        };
        positive("lr", self.lr)?;
        positive("adam_eps", self.adam_eps)?;
        non_negative("weight_decay", self.weight_decay)?;
        non_negative("ratio_clip", self.ratio_clip)?;
        non_negative("kl_weight", self.kl_weight)?;
        if !self.reward_weight.is_finite() {
            return Err(bad("reward_weight", "must be a finite number"));
        }
        if !(self.guidance.is_finite() && (0.0..=100.0).contains(&self.guidance)) {
            return Err(bad(
                "guidance",
                format!("{} must be finite in 0..=100", self.guidance),
            ));
        }
        if !(self.eta.is_finite() && self.eta > 0.0 && self.eta <= 1.0) {
            return Err(bad(
                "eta",
                format!(
                    "{} must be in (0, 1]: DPOK needs stochastic DDIM (the reference uses 1.0); \
                     a deterministic step has no log-probability",
                    self.eta
                ),
            ));
        }
        for (field, v) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(bad(field, format!("{v} must be in [0, 1)")));
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
        if let Some(0) = self.stop_after {
            return Err(bad("stop_after", "must be >= 1"));
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

    /// sha256 of the settings that change the numbers (not paths of outputs, devices, thread
    /// counts, checkpoint cadence or pauses): a checkpoint only resumes a run with the same one.
    /// The bundle, reward and prompt files are identified by content elsewhere (the run records
    /// their hashes); here their paths count.
    pub fn fingerprint(&self) -> String {
        let mut c = self.clone();
        c.output = PathBuf::new();
        c.device = String::new();
        c.threads = 0;
        c.checkpoint_every = 0;
        c.keep_checkpoints = 1;
        c.resume = false;
        c.stop_after = None;
        let json = serde_json::to_vec(&c).expect("config serialises");
        crate::hash::sha256_hex(&[b"dpok/1:".as_slice(), &json].concat())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> DpokConfig {
        DpokConfig {
            reward: "r".into(),
            prompts: "p.txt".into(),
            output: "out".into(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_validate_and_bad_fields_are_named() {
        ok().validate().unwrap();
        let cases: Vec<(&str, DpokConfig)> = vec![
            (
                "reward",
                DpokConfig {
                    reward: "".into(),
                    ..ok()
                },
            ),
            (
                "prompts",
                DpokConfig {
                    prompts: "".into(),
                    ..ok()
                },
            ),
            ("steps", DpokConfig { steps: 0, ..ok() }),
            ("eta", DpokConfig { eta: 0.0, ..ok() }),
            (
                "minibatch",
                DpokConfig {
                    minibatch: 0,
                    ..ok()
                },
            ),
            (
                "ratio_clip",
                DpokConfig {
                    ratio_clip: -1.0,
                    ..ok()
                },
            ),
            (
                "lr",
                DpokConfig {
                    lr: f64::NAN,
                    ..ok()
                },
            ),
            (
                "buffer_size",
                DpokConfig {
                    buffer_size: 0,
                    ..ok()
                },
            ),
            (
                "guidance",
                DpokConfig {
                    guidance: 1e9,
                    ..ok()
                },
            ),
            (
                "does not divide samples_per_iter",
                DpokConfig {
                    samples_per_iter: 6,
                    samples_per_prompt: 4,
                    ..ok()
                },
            ),
            (
                "samples_per_prompt",
                DpokConfig {
                    samples_per_prompt: 0,
                    ..ok()
                },
            ),
        ];
        for (field, c) in cases {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn default_samples_per_prompt_keeps_old_configs_and_fingerprints() {
        let json = serde_json::to_string(&ok()).unwrap();
        assert!(!json.contains("samples_per_prompt"), "{json}");
        let grouped = DpokConfig {
            samples_per_prompt: 2,
            ..ok()
        };
        assert_ne!(grouped.fingerprint(), ok().fingerprint());
        let back: DpokConfig =
            serde_json::from_str(&serde_json::to_string(&grouped).unwrap()).unwrap();
        assert_eq!(back, grouped);
    }

    #[test]
    fn fingerprint_ignores_run_mechanics_only() {
        let a = ok();
        let b = DpokConfig {
            output: "elsewhere".into(),
            threads: 3,
            checkpoint_every: 1,
            stop_after: Some(2),
            resume: true,
            ..ok()
        };
        assert_eq!(a.fingerprint(), b.fingerprint());
        let c = DpokConfig {
            kl_weight: 0.5,
            ..ok()
        };
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = serde_json::from_str::<DpokConfig>(r#"{"stepz": 3}"#).unwrap_err();
        assert!(e.to_string().contains("stepz"), "{e}");
    }
}
