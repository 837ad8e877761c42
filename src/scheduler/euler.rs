//! Euler (Karras et al. 2022, Algorithm 2 with `s_churn = 0`), port of diffusers'
//! `EulerDiscreteScheduler`.
//!
//! The sampler works on the variance-exploding parametrisation `x = x0 + sigma * eps` with
//! `sigma_t = sqrt((1 - a_t) / a_t)`, which is why the initial noise is multiplied by
//! [`init_noise_sigma`](super::Scheduler::init_noise_sigma) (the largest sigma, or
//! `sqrt(sigma_max^2 + 1)` for `leading` spacing) and the UNet input is divided by
//! `sqrt(sigma^2 + 1)` (back to the variance-preserving scale the UNet was trained on).
//!
//! Schedule (`set_timesteps`): float timesteps (`linspace(0, N-1, steps)` in float32 for
//! `linspace`), sigmas interpolated linearly **in sigma** (not log-sigma) between the training
//! sigmas at those fractional timesteps, then a final sigma of 0. With Karras sigmas the sigmas are
//! `(max^(1/7) + ramp (min^(1/7) - max^(1/7)))^7` between the interpolated extremes and the
//! timesteps become the fractional training timesteps of those sigmas (`_sigma_to_t`, linear in
//! log-sigma), not rounded.
//!
//! `trailing` spacing yields `steps + 1` timesteps for some step counts (61, 103, 121, 122 of
//! 1000; numpy's float `arange`), the last being -1 (sigma clamps to `sigma(0)`); diffusers runs
//! them all and so do we.
//!
//! Step (with `s_churn = 0`, so no noise and `sigma_hat = sigma`):
//! `x0 = x - sigma * eps`, `d = (x - x0) / sigma`, `x' = x + d * (sigma_next - sigma)`.
//! For v-prediction `x0 = v * (-sigma / sqrt(sigma^2 + 1)) + x / (sigma^2 + 1)`.

use super::tables::{
    karras_sigmas, np_arange, np_interp_index, np_linspace, np_round, sigma_to_t, train_sigmas_f32,
};
use super::{
    check_scale_index, check_step, to_f64, unsupported, NoiseSource, PredictionType, Resolved,
    Scheduler, SchedulerConfig, SchedulerError, TimestepSpacing,
};

/// Float timesteps of `EulerDiscreteScheduler` / `EulerAncestralDiscreteScheduler`
/// (`set_timesteps`, identical in both classes): float32 values.
pub(crate) fn euler_timesteps(
    spacing: TimestepSpacing,
    n_train: usize,
    steps: usize,
    steps_offset: usize,
) -> Vec<f32> {
    match spacing {
        // np.linspace(0, N - 1, steps, dtype=np.float32)[::-1]
        TimestepSpacing::Linspace => np_linspace(0.0, (n_train - 1) as f64, steps)
            .into_iter()
            .rev()
            .map(|t| t as f32)
            .collect(),
        // (np.arange(0, steps) * (N // steps)).round()[::-1].astype(np.float32) + steps_offset
        TimestepSpacing::Leading => {
            let ratio = n_train / steps;
            (0..steps)
                .rev()
                .map(|i| (i * ratio) as f32 + steps_offset as f32)
                .collect()
        }
        // np.arange(N, 0, -N / steps).round().astype(np.float32) - 1
        TimestepSpacing::Trailing => {
            let ratio = n_train as f64 / steps as f64;
            np_arange(n_train as f64, 0.0, -ratio)
                .into_iter()
                .map(|t| np_round(t) as f32 - 1.0)
                .collect()
        }
    }
}

/// The float32 `alphas_cumprod` of the Euler / DPM-Solver classes: with zero-terminal-SNR the
/// last entry (exactly 0) is replaced by `2^-24` so that its sigma stays finite (~4096).
pub(crate) fn alphas_cumprod_sigma_safe(cfg: &SchedulerConfig) -> Result<Vec<f32>, SchedulerError> {
    let mut ac = cfg.alphas_cumprod_f32()?;
    if cfg.rescale_betas_zero_snr {
        if let Some(last) = ac.last_mut() {
            *last = 2f32.powi(-24);
        }
    }
    Ok(ac)
}

/// `init_noise_sigma` of the Euler classes: the largest sigma for `linspace`/`trailing`,
/// `sqrt(max^2 + 1)` (float32) for `leading`.
pub(crate) fn euler_init_noise_sigma(sigmas: &[f32], spacing: TimestepSpacing) -> f64 {
    let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max as f64,
        TimestepSpacing::Leading => (max * max + 1.0f32).sqrt() as f64,
    }
}

/// Divides by `sqrt(sigma^2 + 1)` in float32 (`scale_model_input` of both Euler classes).
pub(crate) fn euler_scale_input(sample: &mut [f32], sigma: f32) {
    let denom = (sigma * sigma + 1.0f32).sqrt();
    for x in sample.iter_mut() {
        *x /= denom;
    }
}

/// `x0` from a v-prediction in sigma space: `c_out = -sigma / sqrt(sigma^2 + 1)`,
/// `c_skip = 1 / (sigma^2 + 1)` (applied as a division, as diffusers does).
#[inline]
pub(crate) fn v_to_x0(v: f32, x: f32, c_out: f32, sigma_sq_p1: f32) -> f32 {
    v * c_out + x / sigma_sq_p1
}

pub(crate) struct Euler {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    sigmas_f32: Vec<f32>,
    init_noise_sigma: f64,
    prediction: PredictionType,
}

impl Euler {
    pub(crate) fn new(cfg: &SchedulerConfig, r: &Resolved) -> Result<Self, SchedulerError> {
        const CLS: &str = "EulerDiscreteScheduler";
        if cfg.use_exponential_sigmas || cfg.use_beta_sigmas {
            return Err(unsupported(
                CLS,
                if cfg.use_beta_sigmas {
                    "use_beta_sigmas"
                } else {
                    "use_exponential_sigmas"
                },
                true,
                "only linear-interpolated and Karras sigmas are implemented",
            ));
        }
        if cfg.interpolation_type != "linear" {
            return Err(unsupported(
                CLS,
                "interpolation_type",
                &cfg.interpolation_type,
                "only linear interpolation is implemented",
            ));
        }
        let n = cfg.num_train_timesteps;
        let steps = r.steps;
        let ac = alphas_cumprod_sigma_safe(cfg)?;
        let train_sigmas = train_sigmas_f32(&ac);
        let log_sigmas: Vec<f32> = train_sigmas.iter().map(|s| s.ln()).collect();
        let train_sigmas_f64 = to_f64(&train_sigmas);

        let ts32 = euler_timesteps(r.spacing, n, steps, cfg.steps_offset);
        // np.interp(timesteps, arange(N), sigmas): float64 result
        let mut sigmas: Vec<f64> = ts32
            .iter()
            .map(|&t| np_interp_index(t as f64, &train_sigmas_f64))
            .collect();
        let mut ts64: Vec<f64> = ts32.iter().map(|&t| t as f64).collect();
        if r.karras {
            let smin = cfg.sigma_min.unwrap_or(sigmas[sigmas.len() - 1]);
            let smax = cfg.sigma_max.unwrap_or(sigmas[0]);
            sigmas = karras_sigmas(smin, smax, steps);
            ts64 = sigmas.iter().map(|&s| sigma_to_t(s, &log_sigmas)).collect();
        }
        let sigma_last = match cfg.final_sigmas_type.as_str() {
            "sigma_min" => train_sigmas[0],
            _ => 0.0,
        };
        let mut sigmas_f32: Vec<f32> = sigmas.iter().map(|&s| s as f32).collect();
        sigmas_f32.push(sigma_last);

        let timesteps: Vec<f64> =
            if cfg.timestep_type == "continuous" && r.prediction == PredictionType::VPrediction {
                // torch.Tensor([0.25 * sigma.log() for sigma in sigmas[:-1]])
                sigmas_f32[..sigmas_f32.len() - 1]
                    .iter()
                    .map(|s| (0.25f32 * s.ln()) as f64)
                    .collect()
            } else {
                ts64.iter().map(|&t| t as f32 as f64).collect()
            };
        Ok(Euler {
            timesteps,
            sigmas: to_f64(&sigmas_f32),
            init_noise_sigma: euler_init_noise_sigma(&sigmas_f32, r.spacing),
            sigmas_f32,
            prediction: r.prediction,
        })
    }
}

impl Scheduler for Euler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas)
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: &mut [f32], step_index: usize) {
        check_scale_index(step_index, self.timesteps.len());
        euler_scale_input(sample, self.sigmas_f32[step_index]);
    }

    fn step(
        &mut self,
        model_output: &[f32],
        step_index: usize,
        sample: &mut [f32],
        _noise: &mut dyn NoiseSource,
    ) -> Result<(), SchedulerError> {
        check_step(model_output, sample, step_index, self.timesteps.len())?;
        let sigma = self.sigmas_f32[step_index];
        // gamma = 0 (s_churn = 0): sigma_hat = sigma * (0 + 1) = sigma, no noise.
        let sigma_hat = sigma;
        let dt = self.sigmas_f32[step_index + 1] - sigma_hat;
        let sq_p1 = sigma * sigma + 1.0f32;
        let c_out = -sigma / sq_p1.sqrt();
        for (x, &m) in sample.iter_mut().zip(model_output) {
            let s = *x;
            let x0 = match self.prediction {
                PredictionType::Epsilon => s - sigma_hat * m,
                PredictionType::VPrediction => v_to_x0(m, s, c_out, sq_p1),
                PredictionType::Sample => m,
            };
            let derivative = (s - x0) / sigma_hat;
            *x = s + derivative * dt;
        }
        Ok(())
    }
}
