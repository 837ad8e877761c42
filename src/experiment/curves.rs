//! Reward-vs-compute curves: the reward of an arm's adapter at moments of its training, against
//! the UNet evaluations spent to get there. Every point renders the same prompts with the same
//! seeds (only the adapter differs), so points are comparable across arms and time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::config::{dpo_step_compute, ArmTrain};
use crate::cancel::CancelToken;
use crate::engine::{Engine, GenerateRequest};
use crate::finetune::{adapter_file, checkpoint, Compute};
use crate::lora::AdapterRef;
use crate::score::{RewardModel, RgbRef};

/// One point of a curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Training steps done (DPO/SFT optimiser steps; DPOK iterations).
    pub step: usize,
    pub unet_forward: u64,
    pub unet_backward: u64,
    pub samples_drawn: u64,
    /// Training wall time up to this point (sum of the steps' times).
    pub wall_seconds: f64,
    /// Mean reward of the curve images and its standard error.
    pub reward_mean: f64,
    pub reward_sem: f64,
    pub images: usize,
    /// sha256 of the adapter measured (None for the base model).
    pub adapter_sha256: Option<String>,
}

pub(crate) struct Curves<'a> {
    pub engine: &'a Engine,
    pub reward: &'a RewardModel,
    pub prompts: Vec<String>,
    pub images_per_prompt: u32,
    pub seed: u64,
    pub steps: Option<u32>,
    pub guidance: Option<f32>,
}

impl Curves<'_> {
    /// Renders prompt `p`'s image `i` with seed `seed + p·n + i` (one image per request, as
    /// `dpoimg eval` does) and scores all of them.
    pub fn point(
        &self,
        adapter: Option<&Path>,
        step: usize,
        compute: Compute,
        cancel: &CancelToken,
    ) -> Result<CurvePoint, String> {
        let (refs, sha) = match adapter {
            Some(p) => {
                let a = self
                    .engine
                    .load_adapter(p)
                    .map_err(|e| format!("adapter {}: {e}", p.display()))?;
                let sha = a.hash.clone();
                (
                    vec![AdapterRef {
                        adapter: a,
                        strength: 1.0,
                    }],
                    Some(sha),
                )
            }
            None => (Vec::new(), None),
        };
        let n = self.images_per_prompt;
        let mut scores = Vec::new();
        for (p, prompt) in self.prompts.iter().enumerate() {
            let mut images = Vec::new();
            for i in 0..n {
                let mut req = GenerateRequest::new(prompt.clone());
                req.seed = self.seed + p as u64 * u64::from(n) + u64::from(i);
                req.steps = self.steps;
                req.guidance = self.guidance;
                req.adapters = refs.clone();
                let g = self
                    .engine
                    .generate(&req, &mut |_| true, cancel)
                    .map_err(|e| format!("generating `{prompt}`: {e}"))?;
                images.extend(g.images);
            }
            let rgb: Vec<RgbRef<'_>> = images.iter().map(RgbRef::from).collect();
            let s = self
                .reward
                .score(prompt, &rgb)
                .map_err(|e| format!("scoring `{prompt}`: {e}"))?;
            scores.extend(s.into_iter().map(f64::from));
        }
        let k = scores.len() as f64;
        let mean = scores.iter().sum::<f64>() / k;
        let var = if scores.len() > 1 {
            scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (k - 1.0)
        } else {
            0.0
        };
        Ok(CurvePoint {
            step,
            unet_forward: compute.unet_forward,
            unet_backward: compute.unet_backward,
            samples_drawn: compute.samples_drawn,
            wall_seconds: compute.wall_seconds,
            reward_mean: mean,
            reward_sem: (var / k).sqrt(),
            images: scores.len(),
            adapter_sha256: sha,
        })
    }
}

/// Writes the LoRA of the run's newest checkpoint as an adapter file (the format the trainer's
/// final adapter has) into `dir`, named by the checkpoint; returns its path.
pub(crate) fn snapshot(run: &Path, targets: &[String], dir: &Path) -> Result<PathBuf, String> {
    let latest = checkpoint::latest(run)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{}: paused without a checkpoint", run.display()))?;
    let ck = checkpoint::load(&latest).map_err(|e| e.to_string())?;
    let modules: BTreeMap<String, adapter_file::ModuleWeights<'_>> = ck
        .modules
        .iter()
        .map(|(name, m)| {
            (
                name.clone(),
                adapter_file::ModuleWeights {
                    a: &m.a,
                    b: &m.b,
                    rank: m.rank,
                    scale: ck.state.lora_scale,
                },
            )
        })
        .collect();
    let name = latest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "snapshot".into());
    let path = dir.join(format!("{name}.safetensors"));
    let mut meta = BTreeMap::new();
    meta.insert(
        "provenance".to_string(),
        serde_json::json!({"snapshot_of": latest.display().to_string(), "step": ck.state.step})
            .to_string(),
    );
    adapter_file::write(&path, &modules, targets, meta).map_err(|e| e.to_string())?;
    Ok(path)
}

/// Steps done and compute used so far, from the run's metrics log: DPOK logs its cumulative
/// counters per step; a DPO/SFT step's evaluations are fixed by its batch (see
/// [`dpo_step_compute`]).
pub(crate) fn compute_so_far(train: &ArmTrain, run: &Path) -> Result<(usize, Compute), String> {
    let log = run.join("metrics.jsonl");
    match train {
        ArmTrain::Dpo(c) => {
            let m = crate::finetune::metrics::read(&log).map_err(|e| e.to_string())?;
            let per = dpo_step_compute(c);
            let s = m.len() as u64;
            Ok((
                m.len(),
                Compute {
                    unet_forward: per.unet_forward * s,
                    unet_backward: per.unet_backward * s,
                    samples_drawn: 0,
                    reward_evals: 0,
                    wall_seconds: m.iter().map(|x| x.step_seconds).sum(),
                },
            ))
        }
        ArmTrain::Dpok(_) => {
            let m = crate::finetune::read_dpok_metrics(&log).map_err(|e| e.to_string())?;
            let Some(last) = m.last() else {
                return Ok((0, Compute::default()));
            };
            Ok((
                last.iteration,
                Compute {
                    unet_forward: last.unet_forward,
                    unet_backward: last.unet_backward,
                    samples_drawn: last.samples_drawn,
                    reward_evals: last.reward_evals,
                    wall_seconds: m.iter().map(|x| x.step_seconds).sum(),
                },
            ))
        }
    }
}
