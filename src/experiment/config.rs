//! The experiment file: one JSON document naming the bundle, the reward and metric bundles, the
//! data, the evaluation settings, the compute budget and the arms. Unknown fields are refused
//! (a typo must not silently fall back to a default), relative paths are resolved against the
//! file's own directory (so a config and its prompt files travel together), and each arm's
//! training settings are the fields of [`DpoConfig`] / [`DpokConfig`] minus the ones the
//! experiment itself owns (paths, resume, pauses).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ExperimentError;
use crate::finetune::{Compute, DpoConfig, DpokConfig, Objective};

/// Per-arm compute cap in UNet sample-evaluations (forward + backward).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Budget {
    /// Largest number of UNet sample-evaluations (forwards + backwards, one latent through the
    /// UNet once; a CFG step counts two) any trained arm may plan. An arm that does not set
    /// `steps` gets the most steps that fit. `None`: no cap, every arm must set `steps`.
    pub unet_evals: Option<u64>,
}

/// How the held-out prompts are rendered and compared (the `dpoimg eval` knobs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSettings {
    pub images_per_prompt: u32,
    pub seed: u64,
    pub steps: Option<u32>,
    pub guidance: Option<f32>,
    pub bootstrap_resamples: usize,
    pub bootstrap_seed: u64,
    /// Seed of the blinded A/B export (side and order shuffles).
    pub blind_seed: u64,
}

impl Default for EvalSettings {
    fn default() -> Self {
        EvalSettings {
            images_per_prompt: 4,
            seed: 0,
            steps: None,
            guidance: None,
            bootstrap_resamples: 9999,
            bootstrap_seed: 0,
            blind_seed: 0,
        }
    }
}

/// Reward-vs-compute curves: each trained arm is trained in `points` segments and, after each,
/// its current adapter renders the first `prompts` held-out prompts × `images_per_prompt` seeds,
/// scored by the reward model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CurveSettings {
    pub points: usize,
    pub prompts: usize,
    pub images_per_prompt: u32,
    pub seed: u64,
}

impl Default for CurveSettings {
    fn default() -> Self {
        CurveSettings {
            points: 4,
            prompts: 8,
            images_per_prompt: 2,
            seed: 1_000_000,
        }
    }
}

/// The arms. `base` is the bundle without an adapter; the others hold the training settings
/// (fields of `DpoConfig` for `dpo` and `sft`, of `DpokConfig` for `dpok`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Arms {
    pub base: bool,
    pub dpo: Option<serde_json::Map<String, serde_json::Value>>,
    pub dpok: Option<serde_json::Map<String, serde_json::Value>>,
    pub sft: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Default for Arms {
    fn default() -> Self {
        Arms {
            base: true,
            dpo: None,
            dpok: None,
            sft: None,
        }
    }
}

/// The whole experiment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Model bundle directory.
    pub bundle: PathBuf,
    /// Reward bundle (ImageReward as ONNX): DPOK's reward, the curves' and the eval's metric.
    pub reward: PathBuf,
    /// Optional CLIP-score metric bundle (`tools/export_metrics.py`).
    #[serde(default)]
    pub clip: Option<PathBuf>,
    /// Optional Inception bundle: FID between arms (and against `fid_reference`) and IS.
    #[serde(default)]
    pub inception: Option<PathBuf>,
    #[serde(default)]
    pub fid_reference: Option<PathBuf>,
    /// DPOK's training prompts (one per line).
    #[serde(default)]
    pub train_prompts: Option<PathBuf>,
    /// DPO's and SFT's preference data (any format `dpoimg-finetune dpo --data` reads).
    #[serde(default)]
    pub preference_data: Option<PathBuf>,
    /// Held-out evaluation prompts (`prompt` or `category<TAB>prompt` lines).
    pub eval_prompts: PathBuf,
    #[serde(default)]
    pub budget: Budget,
    #[serde(default)]
    pub eval: EvalSettings,
    #[serde(default)]
    pub curve: CurveSettings,
    /// CPU threads for training, generation and scoring; 0 = all cores.
    #[serde(default)]
    pub threads: usize,
    /// `cpu`, `cuda` or `cuda:N`: ONNX Runtime sessions of the curves and the evaluation, and
    /// each arm's trainer unless the arm sets its own `device`.
    #[serde(default = "default_device")]
    pub device: String,
    pub arms: Arms,
}

/// One trained arm, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub enum ArmTrain {
    Dpo(Box<DpoConfig>),
    Dpok(Box<DpokConfig>),
}

/// An arm with its settings and the compute its settings imply.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedArm {
    pub name: String,
    /// None for `base`.
    pub train: Option<ArmTrain>,
    pub planned: Compute,
}

impl PlannedArm {
    pub fn steps(&self) -> usize {
        match &self.train {
            None => 0,
            Some(ArmTrain::Dpo(c)) => c.steps,
            Some(ArmTrain::Dpok(c)) => c.steps,
        }
    }
}

fn default_device() -> String {
    "cpu".into()
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> ExperimentError {
    ExperimentError::Config {
        field: field.into(),
        message: message.into(),
    }
}

/// Fields the experiment sets itself in every arm.
const OWNED_DPO: &[&str] = &[
    "bundle",
    "data",
    "output",
    "resume",
    "stop_after",
    "objective",
];
const OWNED_DPOK: &[&str] = &[
    "bundle",
    "reward",
    "prompts",
    "output",
    "resume",
    "stop_after",
];

impl ExperimentConfig {
    /// Reads and parses `path`; relative paths become relative to its directory.
    pub fn load(path: &Path) -> Result<(Self, Vec<u8>), ExperimentError> {
        let bytes = std::fs::read(path).map_err(|e| ExperimentError::Io {
            path: path.to_path_buf(),
            message: format!("{e}. Fix: give the experiment JSON file (see experiments/tiny.json)"),
        })?;
        let mut cfg: ExperimentConfig =
            serde_json::from_slice(&bytes).map_err(|e| ExperimentError::Io {
                path: path.to_path_buf(),
                message: format!(
                    "not a valid experiment config: {e}. Fix: see docs/experiment.md for the fields"
                ),
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve(base);
        Ok((cfg, bytes))
    }

    fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.bundle);
        fix(&mut self.reward);
        fix(&mut self.eval_prompts);
        for p in [
            &mut self.clip,
            &mut self.inception,
            &mut self.fid_reference,
            &mut self.train_prompts,
            &mut self.preference_data,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
    }

    /// Validates the settings and turns every arm into a runnable config under `out/runs/`.
    pub fn plan(&self, out: &Path) -> Result<Vec<PlannedArm>, ExperimentError> {
        for (field, p) in [
            ("bundle", Some(&self.bundle)),
            ("reward", Some(&self.reward)),
            ("eval_prompts", Some(&self.eval_prompts)),
            ("clip", self.clip.as_ref()),
            ("inception", self.inception.as_ref()),
            ("fid_reference", self.fid_reference.as_ref()),
        ] {
            if let Some(p) = p {
                if !p.exists() {
                    return Err(bad(
                        field,
                        format!("{} does not exist. Fix: correct the path (relative paths are relative to the config file)", p.display()),
                    ));
                }
            }
        }
        self.onnx_device()?;
        if self.fid_reference.is_some() && self.inception.is_none() {
            return Err(bad(
                "fid_reference",
                "needs `inception` (the feature extractor)",
            ));
        }
        if self.eval.images_per_prompt == 0 || self.eval.images_per_prompt > 1000 {
            return Err(bad("eval.images_per_prompt", "must be in 1..=1000"));
        }
        if self.eval.bootstrap_resamples == 0 {
            return Err(bad("eval.bootstrap_resamples", "must be >= 1"));
        }
        if !(1..=100).contains(&self.curve.points) {
            return Err(bad("curve.points", "must be in 1..=100"));
        }
        if self.curve.prompts == 0 || self.curve.images_per_prompt == 0 {
            return Err(bad("curve", "prompts and images_per_prompt must be >= 1"));
        }
        if self.budget.unet_evals == Some(0) {
            return Err(bad(
                "budget.unet_evals",
                "must be >= 1 (or absent for no cap)",
            ));
        }
        let mut arms = Vec::new();
        if self.arms.base {
            arms.push(PlannedArm {
                name: "base".into(),
                train: None,
                planned: Compute::default(),
            });
        }
        let runs = out.join("runs");
        for (name, map, objective) in [
            ("dpo", &self.arms.dpo, Objective::Dpo),
            ("sft", &self.arms.sft, Objective::Sft),
        ] {
            let Some(map) = map else { continue };
            let data = self.preference_data.clone().ok_or_else(|| {
                bad(
                    "preference_data",
                    format!("arm `{name}` needs preference data. Fix: set `preference_data`"),
                )
            })?;
            let mut c: DpoConfig = arm_config(name, map, OWNED_DPO)?;
            c.bundle = self.bundle.clone();
            c.data = data;
            c.output = runs.join(name);
            c.objective = objective;
            c.resume = true;
            if !map.contains_key("threads") {
                c.threads = self.threads;
            }
            if !map.contains_key("device") {
                c.device = self.device.clone();
            }
            if !map.contains_key("cache_dir") {
                c.cache_dir = Some(out.join("cache"));
            }
            let per_step = dpo_step_compute(&c);
            c.steps = self.steps_for(name, map, c.steps, |s| scale(per_step, s as u64))?;
            c.validate()
                .map_err(|e| bad(format!("arms.{name}"), e.to_string()))?;
            arms.push(PlannedArm {
                name: name.into(),
                planned: scale(per_step, c.steps as u64),
                train: Some(ArmTrain::Dpo(Box::new(c))),
            });
        }
        if let Some(map) = &self.arms.dpok {
            let prompts = self.train_prompts.clone().ok_or_else(|| {
                bad(
                    "train_prompts",
                    "arm `dpok` needs training prompts. Fix: set `train_prompts` (one prompt per line)",
                )
            })?;
            let mut c: DpokConfig = arm_config("dpok", map, OWNED_DPOK)?;
            c.bundle = self.bundle.clone();
            c.reward = self.reward.clone();
            c.prompts = prompts;
            c.output = runs.join("dpok");
            c.resume = true;
            if !map.contains_key("threads") {
                c.threads = self.threads;
            }
            if !map.contains_key("device") {
                c.device = self.device.clone();
            }
            let probe = c.clone();
            c.steps = self.steps_for("dpok", map, c.steps, |s| dpok_compute(&probe, s))?;
            c.validate().map_err(|e| bad("arms.dpok", e.to_string()))?;
            arms.push(PlannedArm {
                name: "dpok".into(),
                planned: dpok_compute(&c, c.steps),
                train: Some(ArmTrain::Dpok(Box::new(c))),
            });
        }
        // dpo, dpok, sft in a fixed order after base
        arms.sort_by_key(|a| {
            ["base", "dpo", "dpok", "sft"]
                .iter()
                .position(|n| *n == a.name)
        });
        if arms.len() < 2 {
            return Err(bad(
                "arms",
                "an experiment compares at least two arms. Fix: add `dpo`, `dpok` or `sft` (base is on by default)",
            ));
        }
        Ok(arms)
    }

    /// The ONNX Runtime device of the curves and the evaluation.
    pub fn onnx_device(&self) -> Result<crate::runtime::Device, ExperimentError> {
        let d = self.device.trim().to_ascii_lowercase();
        if d == "auto" {
            return Err(bad(
                "device",
                "`auto` would let the arms' trainers and the evaluation differ. Fix: cpu, cuda or cuda:N",
            ));
        }
        d.parse()
            .map_err(|e: String| bad("device", format!("{e}. Fix: cpu, cuda or cuda:N")))
    }

    /// The arm's step count: as given (checked against the budget), or the most that fit.
    fn steps_for(
        &self,
        name: &str,
        map: &serde_json::Map<String, serde_json::Value>,
        given: usize,
        cost: impl Fn(usize) -> Compute,
    ) -> Result<usize, ExperimentError> {
        let evals = |c: Compute| c.unet_forward + c.unet_backward;
        match (map.contains_key("steps"), self.budget.unet_evals) {
            (true, None) => Ok(given),
            (true, Some(b)) => {
                let need = evals(cost(given));
                if need > b {
                    return Err(bad(
                        format!("arms.{name}.steps"),
                        format!(
                            "{given} steps need {need} UNet evaluations, over the budget of {b}. \
                             Fix: lower `steps` or remove it to use the most that fit"
                        ),
                    ));
                }
                Ok(given)
            }
            (false, None) => Err(bad(
                format!("arms.{name}.steps"),
                "not given and no `budget.unet_evals` to derive it from. Fix: set one of them",
            )),
            (false, Some(b)) => {
                // cost is monotone in steps: binary search the largest that fits
                let (mut lo, mut hi) = (0usize, 10_000_000usize);
                while lo < hi {
                    let mid = lo + (hi - lo).div_ceil(2);
                    if evals(cost(mid)) <= b {
                        lo = mid;
                    } else {
                        hi = mid - 1;
                    }
                }
                if lo == 0 {
                    return Err(bad(
                        format!("arms.{name}"),
                        format!(
                            "one step needs {} UNet evaluations, over the budget of {b}. Fix: \
                             raise `budget.unet_evals` or shrink the arm's batch",
                            evals(cost(1))
                        ),
                    ));
                }
                Ok(lo)
            }
        }
    }
}

fn arm_config<T: serde::de::DeserializeOwned>(
    name: &str,
    map: &serde_json::Map<String, serde_json::Value>,
    owned: &[&str],
) -> Result<T, ExperimentError> {
    if let Some(k) = map.keys().find(|k| owned.contains(&k.as_str())) {
        return Err(bad(
            format!("arms.{name}.{k}"),
            "is set by the experiment (paths, resume and pauses are its own). Fix: remove it",
        ));
    }
    serde_json::from_value(serde_json::Value::Object(map.clone()))
        .map_err(|e| bad(format!("arms.{name}"), e.to_string()))
}

fn scale(c: Compute, k: u64) -> Compute {
    Compute {
        unet_forward: c.unet_forward * k,
        unet_backward: c.unet_backward * k,
        samples_drawn: c.samples_drawn * k,
        reward_evals: c.reward_evals * k,
        wall_seconds: 0.0,
    }
}

/// One DPO/SFT optimiser step: per pair, DPO runs the policy and the frozen reference on the
/// preferred and the rejected latent (4 forwards) and back-propagates the policy's 2; SFT runs
/// and back-propagates the preferred one (Wallace et al. 2023, eq. 14; the trainer's loop).
pub fn dpo_step_compute(c: &DpoConfig) -> Compute {
    let pairs = (c.batch_pairs * c.grad_accum) as u64;
    let (f, b) = match c.objective {
        Objective::Dpo => (4, 2),
        Objective::Sft => (1, 1),
    };
    Compute {
        unet_forward: f * pairs,
        unet_backward: b * pairs,
        ..Compute::default()
    }
}

/// `iterations` DPOK iterations: each rollout runs `sampling_steps` CFG steps (2 evaluations,
/// 1 at guidance ≤ 1) per sample; each policy micro-batch of `minibatch` transitions evaluates
/// the policy's branches (2·minibatch forwards and backwards, or 1·minibatch) plus the
/// reference's once the KL term is on (iteration ≥ `kl_warmup`) (Fan et al. 2023, Alg. 1;
/// google-research `dpok`).
pub fn dpok_compute(c: &DpokConfig, iterations: usize) -> Compute {
    let it = iterations as u64;
    let n = c.samples_per_iter as u64;
    let k = crate::finetune::dpok::branches(c.guidance) as u64;
    let b = k * c.minibatch as u64;
    let micro = (c.policy_steps * c.grad_accum) as u64;
    let with_kl = it.saturating_sub(c.kl_warmup as u64);
    Compute {
        unet_forward: it * k * c.sampling_steps as u64 * n + micro * (it * b + with_kl * b),
        unet_backward: it * micro * b,
        samples_drawn: it * n,
        reward_evals: it * n,
        wall_seconds: 0.0,
    }
}
