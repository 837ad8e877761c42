//! DPOK (Fan et al. 2023) objective: the Gaussian log-probability of each sampled stochastic-DDIM
//! transition under the policy, the clamped importance ratio, the advantage, the KL regulariser to
//! the reference model, the combined loss, and its gradient with respect to the UNet's outputs
//! (the trainer's backward takes over from there).
//!
//! Exactly as google-research `dpok/` (not vendored; the formulas are re-derived here):
//! - `scheduling_ddim_extended.py::step_forward_logprob`: with ᾱ = `alphas_cumprod`,
//!   `t_prev = t − N // steps` (ᾱ_prev = `final_alpha_cumprod` when `t_prev < 0`),
//!   `x̂₀ = (x_t − √(1−ᾱ_t)·ε)/√ᾱ_t`, `σ_t = η·√((1−ᾱ_prev)/(1−ᾱ_t)·(1−ᾱ_t/ᾱ_prev))`,
//!   `μ = √ᾱ_prev·x̂₀ + √(1−ᾱ_prev−σ_t²)·ε` and
//!   `log π(x_{t−1}|x_t) = mean over C,H,W of log N(x_{t−1}; μ, σ_t²)` — a **mean** over the
//!   latent's elements, not a sum (the reference's `.mean(dim=-1)` three times), which keeps the
//!   ratio near 1 and is why its tiny `ratio_clip` (1e-4) is meaningful.
//! - `pipeline_stable_diffusion_extended.py::forward_calculate_logprob`: the UNet runs on
//!   `[x_t; x_t]` with `[uncond; cond]` embeddings, `ε = ε_u + g·(ε_c − ε_u)`; the regulariser is
//!   the elementwise `(ε_θ − ε_ref)²` of the CFG-combined predictions, the reference being the
//!   pretrained UNet (here: the same UNet with LoRA off). At a guidance scale of 1 or less the
//!   pipeline does not guide (`do_classifier_free_guidance` is `g > 1`): the UNet runs on `x_t`
//!   with the prompt's embeddings alone and `ε = ε_c` ([`uses_cfg`]), half the UNet work.
//! - `train_online_pg.py::_train_policy_func`: `ratio = clamp(exp(lp − lp_old), 1 ± ratio_clip)`
//!   (clamp, not PPO's min: a clamped ratio passes no gradient),
//!   `loss = mean_b(−reward_weight·adv_b·ratio_b) + kl_weight·mean_{b,c,h,w}(kl)` (the KL term only
//!   after `kl_warmup` steps), divided by `gradient_accumulation_steps`.
//!
//! Arithmetic is f64 throughout (inputs are f32 tensors; `alphas_cumprod` are diffusers' float32
//! table values widened), so the values agree with the float32 torch reference to its rounding.

use std::collections::{BTreeMap, VecDeque};

use std::sync::Arc;

use crate::lora::{AdapterRef, ComposedLora, LoraAdapter, LoraPair};
use crate::scheduler::{
    NoiseSource, PredictionType, SamplerKind, SamplerOptions, Scheduler, SchedulerConfig,
};
use crate::train::{Backend, LoraGrads, LoraSet, Tensor, UNet, UNetInput};
use crate::Engine;

/// Errors of the DPOK objective; each names the value at fault and the fix.
#[derive(Debug, thiserror::Error)]
pub enum DpokError {
    #[error("{what}: expected {expected} values, got {got}")]
    Shape {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("scheduler: {0}")]
    Scheduler(#[from] crate::scheduler::SchedulerError),
    #[error("trainer: {0}")]
    Train(#[from] crate::train::TrainError),
    #[error("sampling with the bundle's ONNX UNet: {0}")]
    Engine(#[from] crate::engine::EngineError),
    #[error("`{field}` = {value}: {message}")]
    Value {
        field: &'static str,
        value: String,
        message: &'static str,
    },
    #[error(
        "timestep {t} is not one of this {steps}-step DDIM schedule's timesteps {timesteps:?}"
    )]
    Timestep {
        t: i64,
        steps: usize,
        timesteps: Vec<i64>,
    },
}

/// The stochastic DDIM policy of one sampling configuration: the bundle's scheduler config, the
/// number of steps and η (DPOK: η = 1).
#[derive(Debug, Clone)]
pub struct DdimPolicy {
    config: SchedulerConfig,
    alphas_cumprod: Vec<f64>,
    final_alpha_cumprod: f64,
    stride: i64,
    timesteps: Vec<i64>,
    prediction: PredictionType,
    clip: Option<f64>,
    eta: f64,
}

impl DdimPolicy {
    /// Builds the policy as diffusers' `DDIMScheduler.from_config(cfg)` + `set_timesteps(steps)`.
    /// η must be > 0: with η = 0 the transition is deterministic and has no density.
    pub fn new(cfg: &SchedulerConfig, steps: usize, eta: f64) -> Result<Self, DpokError> {
        if !(eta.is_finite() && eta > 0.0) {
            return Err(DpokError::Value {
                field: "eta",
                value: eta.to_string(),
                message: "DPOK needs stochastic DDIM (eta > 0; the reference uses 1.0): a \
                          deterministic step has no log-probability",
            });
        }
        let mut opts = SamplerOptions::new(SamplerKind::Ddim);
        opts.eta = eta;
        let sched = crate::scheduler::build(cfg, &opts, steps)?;
        let timesteps = sched.timesteps().iter().map(|&t| t as i64).collect();
        let alphas_cumprod = cfg.alphas_cumprod();
        let final_alpha_cumprod = if cfg.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Ok(DdimPolicy {
            config: cfg.clone(),
            final_alpha_cumprod,
            stride: (cfg.num_train_timesteps / steps) as i64,
            timesteps,
            prediction: cfg.prediction_type()?,
            clip: cfg.clip_sample.then_some(cfg.clip_sample_range),
            eta,
            alphas_cumprod,
        })
    }

    /// η of the stochastic DDIM steps.
    pub fn eta(&self) -> f64 {
        self.eta
    }

    /// The crate's diffusers-exact DDIM sampler for this policy (the rollout steps with it, so a
    /// rollout is the very sample `dpoimg generate --sampler ddim --eta` draws).
    pub fn sampler(&self) -> Result<Box<dyn Scheduler>, DpokError> {
        let mut opts = SamplerOptions::new(SamplerKind::Ddim);
        opts.eta = self.eta;
        Ok(crate::scheduler::build(
            &self.config,
            &opts,
            self.timesteps.len(),
        )?)
    }

    /// The UNet timesteps of the sampling loop, in order.
    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    /// The transition taken at UNet timestep `t` (one of [`timesteps`](Self::timesteps)).
    pub fn transition(&self, t: i64) -> Result<DdimTransition, DpokError> {
        if !self.timesteps.contains(&t) {
            return Err(DpokError::Timestep {
                t,
                steps: self.timesteps.len(),
                timesteps: self.timesteps.clone(),
            });
        }
        let prev_t = t - self.stride;
        let a_t = self.alphas_cumprod[t as usize];
        let a_prev = if prev_t >= 0 {
            self.alphas_cumprod[prev_t as usize]
        } else {
            self.final_alpha_cumprod
        };
        let variance = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev);
        let std = self.eta * variance.sqrt();
        let dir2 = 1.0 - a_prev - std * std;
        if !(std > 0.0 && dir2 >= 0.0) {
            return Err(DpokError::Value {
                field: "eta",
                value: self.eta.to_string(),
                message: "gives a transition with sigma_t = 0 or 1 - alpha_prev - sigma_t^2 < 0 \
                          at this timestep; use eta in (0, 1]",
            });
        }
        Ok(DdimTransition {
            t,
            prev_t,
            alpha_t: a_t,
            alpha_prev: a_prev,
            std,
            dir: dir2.sqrt(),
            prediction: self.prediction,
            clip: self.clip,
        })
    }
}

/// One stochastic DDIM transition `x_t → x_{t−1} ~ N(μ_θ(x_t), σ_t²)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DdimTransition {
    pub t: i64,
    pub prev_t: i64,
    pub alpha_t: f64,
    pub alpha_prev: f64,
    /// σ_t = η·√variance.
    pub std: f64,
    /// √(1 − ᾱ_prev − σ_t²), the weight of the "direction pointing to x_t".
    pub dir: f64,
    pub prediction: PredictionType,
    pub clip: Option<f64>,
}

impl DdimTransition {
    /// Mean μ of one element and dμ/d(model output), from the sample `x` and the (CFG-combined)
    /// model output `m`. With `clip_sample`, x̂₀ is clamped (and then passes no gradient) while
    /// the ε used for the direction stays unclipped, as in the reference.
    pub fn mean(&self, x: f64, m: f64) -> (f64, f64) {
        let (sa, sb) = (self.alpha_t.sqrt(), (1.0 - self.alpha_t).sqrt());
        let (mut x0, mut dx0, eps, deps) = match self.prediction {
            PredictionType::Epsilon => ((x - sb * m) / sa, -sb / sa, m, 1.0),
            PredictionType::Sample => (m, 1.0, (x - sa * m) / sb, -sa / sb),
            PredictionType::VPrediction => (sa * x - sb * m, -sb, sa * m + sb * x, sa),
        };
        if let Some(r) = self.clip {
            if x0 < -r || x0 > r {
                x0 = x0.clamp(-r, r);
                dx0 = 0.0;
            }
        }
        let sap = self.alpha_prev.sqrt();
        (sap * x0 + self.dir * eps, sap * dx0 + self.dir * deps)
    }

    /// `log N(x_prev; μ, σ_t²)` averaged over the elements of one sample (the reference's
    /// reduction), and, when `grad` is given, d(log-prob)/d(model output) per element.
    pub fn log_prob(
        &self,
        x_t: &[f32],
        model: &[f32],
        x_prev: &[f32],
        mut grad: Option<&mut [f64]>,
    ) -> f64 {
        let n = x_t.len() as f64;
        let var = self.std * self.std;
        let norm = self.std.ln() + 0.5 * (2.0 * std::f64::consts::PI).ln();
        let mut sum = 0.0;
        for i in 0..x_t.len() {
            let (mu, dmu) = self.mean(f64::from(x_t[i]), f64::from(model[i]));
            let d = f64::from(x_prev[i]) - mu;
            sum += -d * d / (2.0 * var) - norm;
            if let Some(g) = grad.as_deref_mut() {
                g[i] = d / var / n * dmu;
            }
        }
        sum / n
    }
}

/// Whether the policy guides: the engine's own rule (only a scale above 1 runs the unconditional
/// branch), so rollouts sample exactly as `generate` does.
pub use crate::engine::uses_cfg;

/// UNet inputs per sample: 2 (`[uncond (B); cond (B)]`) when [`uses_cfg`], else 1 (`[cond (B)]`).
pub fn branches(guidance: f64) -> usize {
    if uses_cfg(guidance) {
        2
    } else {
        1
    }
}

/// The policy's noise prediction from UNet outputs laid out as [`branches`] says: the CFG
/// combination when guiding, the conditional output itself otherwise.
pub fn guided_eps(out: &[f32], guidance: f64) -> Vec<f32> {
    if uses_cfg(guidance) {
        cfg_combine(out, guidance)
    } else {
        out.to_vec()
    }
}

/// CFG combination `ε_u + g·(ε_c − ε_u)` of UNet outputs laid out `[uncond (B); cond (B)]`, in
/// float32 as the reference pipeline computes it.
pub fn cfg_combine(out: &[f32], guidance: f64) -> Vec<f32> {
    let half = out.len() / 2;
    let g = guidance as f32;
    out[..half]
        .iter()
        .zip(&out[half..])
        .map(|(&u, &c)| u + g * (c - u))
        .collect()
}

/// Weights and switches of the DPOK loss (defaults: the reference's argparse defaults).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DpokWeights {
    pub reward_weight: f64,
    pub kl_weight: f64,
    /// The ratio is clamped to `[1 − ratio_clip, 1 + ratio_clip]`.
    pub ratio_clip: f64,
    /// Whether the KL term is in the loss (the reference adds it once `count > kl_warmup`).
    pub kl_active: bool,
    /// The loss is divided by this (the reference's `gradient_accumulation_steps`).
    pub grad_accum: usize,
    /// Classifier-free guidance scale g of the sampling policy.
    pub guidance: f64,
}

impl Default for DpokWeights {
    fn default() -> Self {
        DpokWeights {
            reward_weight: 100.0,
            kl_weight: 0.01,
            ratio_clip: 1e-4,
            kl_active: true,
            grad_accum: 12,
            guidance: 7.5,
        }
    }
}

/// A batch of B stored transitions (one per sample): latents laid out `[B, C, H, W]`.
#[derive(Debug, Clone, Copy)]
pub struct DpokBatch<'a> {
    pub transitions: &'a [DdimTransition],
    pub x_t: &'a [f32],
    pub x_prev: &'a [f32],
    /// log π_old(x_{t−1}|x_t) recorded when the transition was sampled.
    pub old_log_prob: &'a [f64],
    /// reward − baseline, per transition.
    pub advantage: &'a [f64],
}

/// What one DPOK loss evaluation gives besides the gradient.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct DpokStats {
    /// The loss including the `1/grad_accum` factor.
    pub loss: f64,
    /// `mean_b(−reward_weight·adv_b·ratio_b)` (before `1/grad_accum`).
    pub policy_loss: f64,
    /// `mean_{b,c,h,w}(ε_θ − ε_ref)²` (0 without a reference; [`policy_gradients`] skips the
    /// reference forward, and so reports 0, while the KL term is inactive).
    pub kl: f64,
    /// `kl_weight·kl` when the KL term is active, else 0 (before `1/grad_accum`).
    pub kl_term: f64,
    pub log_prob: Vec<f64>,
    /// Clamped ratios.
    pub ratio: Vec<f64>,
    /// Fraction of transitions whose ratio was clamped (and so pass no policy gradient).
    pub clamped: f64,
}

fn check(what: &'static str, got: usize, expected: usize) -> Result<(), DpokError> {
    if got == expected {
        Ok(())
    } else {
        Err(DpokError::Shape {
            what,
            expected,
            got,
        })
    }
}

/// The DPOK loss of a batch and `dL/d(UNet output)` for the policy's UNet outputs `model_out`
/// laid out `[uncond (B); cond (B)]` (each `[C, H, W]`; `[cond (B)]` alone when the guidance
/// does not guide, see [`branches`]), the layout the trainer's forward was run with. `ref_out` is
/// the reference UNet's output in the same layout; `None` means no KL term (the reference's
/// `unet_copy = None`).
pub fn dpok_loss(
    batch: &DpokBatch,
    model_out: &[f32],
    ref_out: Option<&[f32]>,
    w: &DpokWeights,
) -> Result<(DpokStats, Vec<f32>), DpokError> {
    let b = batch.transitions.len();
    if b == 0 {
        return Err(DpokError::Shape {
            what: "transitions",
            expected: 1,
            got: 0,
        });
    }
    for (field, v, ok) in [
        (
            "reward_weight",
            w.reward_weight,
            w.reward_weight.is_finite(),
        ),
        ("kl_weight", w.kl_weight, w.kl_weight.is_finite()),
        ("guidance", w.guidance, w.guidance.is_finite()),
        (
            "ratio_clip",
            w.ratio_clip,
            w.ratio_clip.is_finite() && w.ratio_clip >= 0.0,
        ),
    ] {
        if !ok {
            return Err(DpokError::Value {
                field,
                value: v.to_string(),
                message: "must be a finite number (ratio_clip >= 0)",
            });
        }
    }
    if w.grad_accum == 0 {
        return Err(DpokError::Value {
            field: "grad_accum",
            value: "0".into(),
            message: "must be at least 1",
        });
    }
    let n = batch.x_t.len() / b;
    check("x_t", batch.x_t.len(), b * n)?;
    check("x_prev", batch.x_prev.len(), b * n)?;
    check("old_log_prob", batch.old_log_prob.len(), b)?;
    check("advantage", batch.advantage.len(), b)?;
    let k = branches(w.guidance);
    check(
        "model_out ([uncond; cond], or [cond] at guidance <= 1)",
        model_out.len(),
        k * b * n,
    )?;
    if let Some(r) = ref_out {
        check("ref_out (as model_out)", r.len(), k * b * n)?;
    }
    let eps = guided_eps(model_out, w.guidance);
    let eps_ref = ref_out.map(|r| guided_eps(r, w.guidance));
    let accum = w.grad_accum as f64;
    let (lo, hi) = (1.0 - w.ratio_clip, 1.0 + w.ratio_clip);

    let mut stats = DpokStats::default();
    let mut d_eps = vec![0f64; b * n];
    for j in 0..b {
        let r = j * n..(j + 1) * n;
        let lp = batch.transitions[j].log_prob(
            &batch.x_t[r.clone()],
            &eps[r.clone()],
            &batch.x_prev[r.clone()],
            Some(&mut d_eps[r.clone()]),
        );
        let raw = (lp - batch.old_log_prob[j]).exp();
        let ratio = raw.clamp(lo, hi);
        // torch.clamp passes the gradient where lo <= x <= hi
        let inside = (lo..=hi).contains(&raw);
        if !inside {
            stats.clamped += 1.0 / b as f64;
        }
        stats.policy_loss += -w.reward_weight * batch.advantage[j] * ratio / b as f64;
        // dL/dlp = −rw·adv/B · dratio/dlp / accum, dratio/dlp = ratio (0 when clamped)
        let coef = if inside {
            -w.reward_weight * batch.advantage[j] / b as f64 * ratio / accum
        } else {
            0.0
        };
        d_eps[r].iter_mut().for_each(|g| *g *= coef);
        stats.log_prob.push(lp);
        stats.ratio.push(ratio);
    }
    if let Some(er) = &eps_ref {
        let total = (b * n) as f64;
        let mut kl = 0.0;
        for (i, (&e, &f)) in eps.iter().zip(er).enumerate() {
            let d = f64::from(e) - f64::from(f);
            kl += d * d / total;
            if w.kl_active {
                d_eps[i] += w.kl_weight * 2.0 * d / total / accum;
            }
        }
        stats.kl = kl;
        if w.kl_active {
            stats.kl_term = w.kl_weight * kl;
        }
    }
    stats.loss = (stats.policy_loss + stats.kl_term) / accum;
    if k == 1 {
        // ε = ε_c
        return Ok((stats, d_eps.iter().map(|&v| v as f32).collect()));
    }
    // ε = ε_u + g(ε_c − ε_u): dε_u = (1 − g)·dε, dε_c = g·dε
    let g = w.guidance;
    let mut grad = vec![0f32; 2 * b * n];
    let (gu, gc) = grad.split_at_mut(b * n);
    for i in 0..b * n {
        gu[i] = ((1.0 - g) * d_eps[i]) as f32;
        gc[i] = (g * d_eps[i]) as f32;
    }
    Ok((stats, grad))
}

/// One stored transition of the replay buffer, as the reference keeps it.
#[derive(Debug, Clone, Copy)]
pub struct StoredTransition<'a> {
    /// x_t and x_{t−1}, `C·H·W` values each.
    pub x_t: &'a [f32],
    pub x_prev: &'a [f32],
    /// UNet timestep of the step.
    pub t: i64,
    pub old_log_prob: f64,
    pub advantage: f64,
    /// Prompt embeddings `[L, D]`.
    pub uncond: &'a [f32],
    pub cond: &'a [f32],
}

/// One DPOK policy micro-batch (the reference's `_train_policy_func`): the trainer's UNet with
/// `lora` on `[x_t; x_t]` with `[uncond; cond]` (on `x_t` with `cond` alone when the guidance
/// does not guide), the reference (LoRA off) when the KL term is
/// active, [`dpok_loss`], and the backward, whose LoRA gradients are **added** to `grads` (so
/// micro-batches accumulate; `w.grad_accum` already divides the loss). `latent_chw` is the
/// latent's `[C, H, W]`, `ehs_ld` the embeddings' `[L, D]`.
#[allow(clippy::too_many_arguments)]
pub fn policy_gradients<B: Backend>(
    unet: &UNet<B>,
    lora: &LoraSet<B>,
    policy: &DdimPolicy,
    batch: &[StoredTransition],
    latent_chw: [usize; 3],
    ehs_ld: [usize; 2],
    w: &DpokWeights,
    grads: &mut LoraGrads<B>,
) -> Result<DpokStats, DpokError> {
    let b = batch.len();
    let n: usize = latent_chw.iter().product();
    let m: usize = ehs_ld.iter().product();
    for s in batch {
        check("x_t (C·H·W)", s.x_t.len(), n)?;
        check("x_prev (C·H·W)", s.x_prev.len(), n)?;
        check("uncond (L·D)", s.uncond.len(), m)?;
        check("cond (L·D)", s.cond.len(), m)?;
    }
    let transitions = batch
        .iter()
        .map(|s| policy.transition(s.t))
        .collect::<Result<Vec<_>, _>>()?;
    let x_t: Vec<f32> = batch.iter().flat_map(|s| s.x_t.iter().copied()).collect();
    let x_prev: Vec<f32> = batch
        .iter()
        .flat_map(|s| s.x_prev.iter().copied())
        .collect();
    let old: Vec<f64> = batch.iter().map(|s| s.old_log_prob).collect();
    let adv: Vec<f64> = batch.iter().map(|s| s.advantage).collect();
    let k = branches(w.guidance);
    let xx = x_t.repeat(k);
    let mut ehs: Vec<f32> = Vec::with_capacity(k * b * m);
    if k == 2 {
        ehs.extend(batch.iter().flat_map(|s| s.uncond.iter().copied()));
    }
    ehs.extend(batch.iter().flat_map(|s| s.cond.iter().copied()));
    let ts: Vec<f32> = (0..k)
        .flat_map(|_| batch.iter().map(|s| s.t as f32))
        .collect();
    let be = unet.backend();
    let shape = [k * b, latent_chw[0], latent_chw[1], latent_chw[2]];
    let sample = Tensor::from_host(be, &xx, &shape);
    let c = Tensor::from_host(be, &ehs, &[k * b, ehs_ld[0], ehs_ld[1]]);
    let input = UNetInput {
        sample: &sample,
        timesteps: &ts,
        ehs: &c,
    };
    let (out, cache) = unet.forward_train(&input, Some(lora), false)?;
    let out_ref = if w.kl_active {
        Some(unet.forward(&input, None)?.to_host(be))
    } else {
        None
    };
    let d = DpokBatch {
        transitions: &transitions,
        x_t: &x_t,
        x_prev: &x_prev,
        old_log_prob: &old,
        advantage: &adv,
    };
    let (stats, d_out) = dpok_loss(&d, &out.to_host(be), out_ref.as_deref(), w)?;
    unet.backward(
        cache,
        &Tensor::from_host(be, &d_out, &shape),
        Some(lora),
        grads,
    )?;
    Ok(stats)
}

/// The trainer's current LoRA as an in-memory adapter for the ONNX UNet (the rollout samples from
/// the current policy without writing a file); `name` is what provenance shows.
pub fn adapter_from_lora<B: Backend>(be: &B, lora: &LoraSet<B>, name: &str) -> LoraAdapter {
    let modules = lora
        .iter()
        .map(|(_, m, p)| {
            (
                m.name.clone(),
                LoraPair {
                    a: be.download(&p.a),
                    b: be.download(&p.b),
                    rank: p.rank,
                    scale: p.scale,
                },
            )
        })
        .collect();
    LoraAdapter {
        path: std::path::PathBuf::from(name),
        name: name.to_string(),
        hash: String::new(),
        modules,
        metadata: BTreeMap::new(),
    }
}

/// Composes `adapter` at strength 1 for [`Engine::unet_forward`].
pub fn compose_current(engine: &Engine, adapter: LoraAdapter) -> Result<ComposedLora, DpokError> {
    Ok(engine.compose(&[AdapterRef {
        adapter: Arc::new(adapter),
        strength: 1.0,
    }])?)
}

/// A sampled trajectory of B samples: what the DPOK reference stores per rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// UNet timestep of each step.
    pub timesteps: Vec<i64>,
    /// `steps + 1` latents of `B·C·H·W` values: x_T, then x after each step; transition `i` is
    /// `latents[i] → latents[i + 1]` at `timesteps[i]`.
    pub latents: Vec<Vec<f32>>,
    /// `log π_old(x_{t−1}|x_t)` per step and sample (`[steps][B]`).
    pub log_prob: Vec<Vec<f64>>,
}

/// Samples one trajectory with stochastic DDIM and CFG (no unconditional branch when the guidance
/// does not guide, see [`uses_cfg`]) through the ONNX UNet with the policy's
/// adapter `lora`, from initial latents `x_t` (`latent_shape = [B, C, H, W]`, already scaled by
/// `init_noise_sigma`, which is 1 for DDIM), prompt embeddings `uncond`/`cond` (`[B, L, D]`
/// each, `ehs_shape` = that shape) and the variance noise from `noise` (one draw of `B·C·H·W`
/// per step, as diffusers' `randn_tensor`). Records every latent and the log-probability of each
/// transition under the sampling policy.
#[allow(clippy::too_many_arguments)]
pub fn rollout(
    engine: &Engine,
    lora: &ComposedLora,
    policy: &DdimPolicy,
    guidance: f64,
    latent_shape: &[usize],
    x_t: &[f32],
    uncond: &[f32],
    cond: &[f32],
    ehs_shape: &[usize],
    noise: &mut dyn NoiseSource,
) -> Result<Rollout, DpokError> {
    let numel = |s: &[usize]| s.iter().product::<usize>();
    if latent_shape.len() != 4 || ehs_shape.len() != 3 || latent_shape[0] != ehs_shape[0] {
        return Err(DpokError::Value {
            field: "latent_shape / ehs_shape",
            value: format!("{latent_shape:?} / {ehs_shape:?}"),
            message: "must be [B, C, H, W] and [B, L, D] with the same B",
        });
    }
    check("x_t", x_t.len(), numel(latent_shape))?;
    check("uncond", uncond.len(), numel(ehs_shape))?;
    check("cond", cond.len(), numel(ehs_shape))?;
    let b = latent_shape[0];
    let n = x_t.len() / b;
    let mut sched = policy.sampler()?;
    let ts: Vec<i64> = policy.timesteps().to_vec();
    let k = branches(guidance);
    let shape2 = [k * b, latent_shape[1], latent_shape[2], latent_shape[3]];
    let ehs_shape2 = [k * b, ehs_shape[1], ehs_shape[2]];
    let ehs = if k == 2 {
        [uncond, cond].concat()
    } else {
        cond.to_vec()
    };
    let mut x = x_t.to_vec();
    let mut out = Rollout {
        timesteps: ts.clone(),
        latents: vec![x.clone()],
        log_prob: Vec::with_capacity(ts.len()),
    };
    for (i, &t) in ts.iter().enumerate() {
        let unet_out = engine.unet_forward(
            &shape2,
            &x.repeat(k),
            &vec![t as f32; k * b],
            &ehs_shape2,
            &ehs,
            lora,
        )?;
        let eps = guided_eps(&unet_out, guidance);
        let prev = x.clone();
        sched.step(&eps, i, &mut x, noise)?;
        let tr = policy.transition(t)?;
        out.log_prob.push(
            (0..b)
                .map(|j| {
                    let r = j * n..(j + 1) * n;
                    tr.log_prob(&prev[r.clone()], &eps[r.clone()], &x[r], None)
                })
                .collect(),
        );
        out.latents.push(x.clone());
    }
    Ok(out)
}

/// Advantage with a per-prompt running-mean baseline: each prompt keeps its last `window`
/// rewards; a batch's rewards are recorded first, then `advantage = reward − mean(history)`
/// (the reference's alternative to its learned value function when `v_flag = 0` is to use the raw
/// reward; a per-prompt mean removes the prompt's difficulty from the signal at no cost).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PromptBaseline {
    window: usize,
    history: BTreeMap<String, VecDeque<f64>>,
}

impl PromptBaseline {
    /// `window` = rewards remembered per prompt (0 = unlimited).
    pub fn new(window: usize) -> Self {
        PromptBaseline {
            window,
            history: BTreeMap::new(),
        }
    }

    /// Records `rewards` of `prompts` (same length) and returns their advantages.
    pub fn advantages(&mut self, prompts: &[&str], rewards: &[f64]) -> Result<Vec<f64>, DpokError> {
        check("rewards (one per prompt)", rewards.len(), prompts.len())?;
        if let Some(bad) = rewards.iter().find(|r| !r.is_finite()) {
            return Err(DpokError::Value {
                field: "reward",
                value: bad.to_string(),
                message: "is not finite; check the reward model's output",
            });
        }
        for (p, &r) in prompts.iter().zip(rewards) {
            let h = self.history.entry((*p).to_string()).or_default();
            h.push_back(r);
            if self.window > 0 && h.len() > self.window {
                h.pop_front();
            }
        }
        Ok(prompts
            .iter()
            .zip(rewards)
            .map(|(p, &r)| {
                let h = &self.history[*p];
                r - h.iter().sum::<f64>() / h.len() as f64
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transition(prediction: PredictionType, clip: Option<f64>) -> DdimTransition {
        DdimTransition {
            t: 501,
            prev_t: 251,
            alpha_t: 0.3,
            alpha_prev: 0.6,
            std: 0.35,
            dir: (1.0f64 - 0.6 - 0.35 * 0.35).sqrt(),
            prediction,
            clip,
        }
    }

    /// The analytic gradient of the whole loss w.r.t. the UNet outputs against central finite
    /// differences of the loss itself (f64 loss, so steps of 1e-3 are accurate to ~1e-7).
    /// (At guidance 2.5 over `[uncond; cond]`, and at guidance 1 over `[cond]` alone.)
    #[test]
    fn gradient_matches_finite_differences() {
        for (pred, clip, guidance) in [
            (PredictionType::Epsilon, None, 2.5),
            (PredictionType::VPrediction, None, 2.5),
            (PredictionType::Sample, None, 2.5),
            (PredictionType::Epsilon, Some(1.0), 2.5),
            (PredictionType::Epsilon, None, 1.0),
            (PredictionType::VPrediction, None, 0.5),
        ] {
            let (b, n) = (2usize, 6usize);
            let k = branches(guidance);
            let tr = [transition(pred, clip), transition(pred, clip)];
            let val = |i: usize, s: f32| (i as f32 * 0.37 + s).sin() * 1.3;
            let x_t: Vec<f32> = (0..b * n).map(|i| val(i, 0.1)).collect();
            let x_prev: Vec<f32> = (0..b * n).map(|i| val(i, 0.9) * 0.8).collect();
            let mut out: Vec<f32> = (0..k * b * n).map(|i| val(i, 2.0) * 0.5).collect();
            let refo: Vec<f32> = (0..k * b * n).map(|i| val(i, 3.0) * 0.5).collect();
            let w = DpokWeights {
                reward_weight: 3.0,
                kl_weight: 0.7,
                ratio_clip: 10.0, // wide: the ratio's gradient is on
                kl_active: true,
                grad_accum: 3,
                guidance,
            };
            let old = [-1.0, -1.2];
            let adv = [0.8, -0.4];
            let batch = DpokBatch {
                transitions: &tr,
                x_t: &x_t,
                x_prev: &x_prev,
                old_log_prob: &old,
                advantage: &adv,
            };
            let (_, grad) = dpok_loss(&batch, &out, Some(&refo), &w).unwrap();
            for i in 0..out.len() {
                let h = 1e-3f32;
                let orig = out[i];
                out[i] = orig + h;
                let lp = dpok_loss(&batch, &out, Some(&refo), &w).unwrap().0.loss;
                out[i] = orig - h;
                let lm = dpok_loss(&batch, &out, Some(&refo), &w).unwrap().0.loss;
                out[i] = orig;
                let fd = (lp - lm) / (2.0 * f64::from(h));
                let g = f64::from(grad[i]);
                assert!(
                    (fd - g).abs() <= 1e-4 * fd.abs().max(1e-2),
                    "{pred:?} clip {clip:?} element {i}: analytic {g} vs finite difference {fd}"
                );
            }
        }
    }

    #[test]
    fn clamped_ratio_passes_no_policy_gradient() {
        let tr = [transition(PredictionType::Epsilon, None)];
        let x: Vec<f32> = (0..4).map(|i| i as f32 * 0.1).collect();
        let out = vec![0.2f32; 8];
        let w = DpokWeights {
            kl_active: false,
            ..Default::default()
        };
        let lp = tr[0].log_prob(&x, &cfg_combine(&out, w.guidance), &x, None);
        for (shift, clamped) in [(0.0, false), (0.01, true), (-0.01, true)] {
            let old = [lp + shift];
            let batch = DpokBatch {
                transitions: &tr,
                x_t: &x,
                x_prev: &x,
                old_log_prob: &old,
                advantage: &[1.0],
            };
            let (s, g) = dpok_loss(&batch, &out, None, &w).unwrap();
            assert_eq!(s.clamped > 0.0, clamped);
            assert_eq!(g.iter().any(|&v| v != 0.0), !clamped, "shift {shift}");
            let want_ratio = if clamped {
                1.0 - shift.signum() * w.ratio_clip
            } else {
                1.0
            };
            assert!((s.ratio[0] - want_ratio).abs() < 1e-12);
        }
    }

    #[test]
    fn bad_inputs_are_named() {
        let tr = [transition(PredictionType::Epsilon, None)];
        let x = [0f32; 4];
        let batch = DpokBatch {
            transitions: &tr,
            x_t: &x,
            x_prev: &x,
            old_log_prob: &[0.0],
            advantage: &[1.0],
        };
        let e = dpok_loss(&batch, &[0f32; 4], None, &DpokWeights::default()).unwrap_err();
        assert!(e.to_string().contains("model_out"), "{e}");
        // without guidance one branch is expected, so the CFG layout is the wrong length
        let unguided = DpokWeights {
            guidance: 1.0,
            ..Default::default()
        };
        let e = dpok_loss(&batch, &[0f32; 8], None, &unguided).unwrap_err();
        assert!(e.to_string().contains("model_out"), "{e}");
        assert!(dpok_loss(&batch, &[0f32; 4], None, &unguided).is_ok());
        let w = DpokWeights {
            grad_accum: 0,
            ..Default::default()
        };
        let e = dpok_loss(&batch, &[0f32; 8], None, &w).unwrap_err();
        assert!(e.to_string().contains("grad_accum"), "{e}");
    }

    #[test]
    fn per_prompt_baseline() {
        let mut b = PromptBaseline::new(2);
        let a = b
            .advantages(&["cat", "dog", "cat"], &[1.0, 4.0, 3.0])
            .unwrap();
        assert_eq!(a, vec![-1.0, 0.0, 1.0]);
        // window 2: "cat" now remembers [3, 5]
        let a = b.advantages(&["cat"], &[5.0]).unwrap();
        assert_eq!(a, vec![1.0]);
        assert!(b.advantages(&["cat"], &[f64::NAN]).is_err());
        assert!(b.advantages(&["cat"], &[1.0, 2.0]).is_err());
    }
}
