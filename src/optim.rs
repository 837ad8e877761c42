//! The trainer's optimiser: AdamW, gradient-norm clipping and learning-rate schedules, with the
//! exact update order of `torch.optim.AdamW` (single-tensor path) and diffusers' `get_scheduler`,
//! so a run can be compared step for step with the reference trainer.

use serde::{Deserialize, Serialize};

/// Learning-rate multiplier over optimiser steps (diffusers' schedules of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    Constant,
    ConstantWithWarmup {
        warmup: usize,
    },
    /// Linear warm-up, then half a cosine period down to 0 at `total`.
    Cosine {
        warmup: usize,
        total: usize,
    },
}

impl LrSchedule {
    /// Multiplier for the update made at optimiser step `step` (0-based).
    pub fn factor(&self, step: usize) -> f64 {
        let warm = |w: usize| (step as f64 / w.max(1) as f64).min(1.0);
        match *self {
            LrSchedule::Constant => 1.0,
            LrSchedule::ConstantWithWarmup { warmup } => {
                if step < warmup {
                    warm(warmup)
                } else {
                    1.0
                }
            }
            LrSchedule::Cosine { warmup, total } => {
                if step < warmup {
                    return warm(warmup);
                }
                let progress =
                    (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        }
    }
}

/// AdamW hyper-parameters (defaults: Diffusion-DPO's SD-1.5 run).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

/// AdamW state for a list of parameter tensors (flat f32 buffers).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Number of updates made so far.
    pub step: u64,
    pub exp_avg: Vec<Vec<f32>>,
    pub exp_avg_sq: Vec<Vec<f32>>,
}

impl AdamW {
    pub fn new(config: AdamWConfig, sizes: &[usize]) -> Self {
        AdamW {
            config,
            step: 0,
            exp_avg: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            exp_avg_sq: sizes.iter().map(|&n| vec![0.0; n]).collect(),
        }
    }

    /// One update with learning rate `lr` (the schedule already applied), in torch's order:
    /// decoupled weight decay, moment updates, bias-corrected step.
    pub fn update(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]], lr: f64) {
        assert_eq!(params.len(), self.exp_avg.len(), "parameter count changed");
        self.step += 1;
        let c = self.config;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2_sqrt = (1.0 - c.beta2.powi(self.step as i32)).sqrt();
        let step_size = (lr / bc1) as f32;
        let decay = (1.0 - lr * c.weight_decay) as f32;
        let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
        let (bc2_sqrt, eps) = (bc2_sqrt as f32, c.eps as f32);
        for (((p, g), m), v) in params
            .iter_mut()
            .zip(grads)
            .zip(&mut self.exp_avg)
            .zip(&mut self.exp_avg_sq)
        {
            assert_eq!(p.len(), g.len(), "gradient size differs from its parameter");
            for i in 0..p.len() {
                p[i] *= decay;
                // torch: exp_avg.lerp_(grad, 1 - beta1)
                m[i] += (g[i] - m[i]) * (1.0 - b1);
                v[i] = v[i] * b2 + (1.0 - b2) * g[i] * g[i];
                let denom = v[i].sqrt() / bc2_sqrt + eps;
                p[i] -= step_size * m[i] / denom;
            }
        }
    }
}

/// Scales gradients so that their global L2 norm is at most `max_norm`
/// (`torch.nn.utils.clip_grad_norm_`); returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [&mut [f32]], max_norm: f64) -> f64 {
    let total = grads
        .iter()
        .map(|g| g.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>())
        .sum::<f64>()
        .sqrt();
    let coef = max_norm / (total + 1e-6);
    if coef < 1.0 {
        for g in grads.iter_mut() {
            g.iter_mut().for_each(|x| *x *= coef as f32);
        }
    }
    total
}
