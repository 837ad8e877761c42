//! DDPM ancestral sampling (Ho et al. 2020), port of diffusers' `DDPMScheduler`.
//!
//! With `a = alphas_cumprod`, `t_prev` the next timestep of the schedule (or "-1", where
//! `a_prev = 1`), `alpha = a_t / a_prev` and `beta = 1 - alpha` (the effective one-step beta
//! when steps are skipped):
//!
//! ```text
//! x0  = (x - sqrt(1 - a_t) eps) / sqrt(a_t)                     (optionally clamped)
//! mu  = sqrt(a_prev) beta / (1 - a_t) * x0 + sqrt(alpha) (1 - a_prev) / (1 - a_t) * x   (formula 7)
//! x'  = mu + sigma * noise                                       only when t > 0
//! ```
//!
//! `sigma^2` is the posterior variance `(1 - a_prev) / (1 - a_t) * beta` clamped to >= 1e-20
//! (`fixed_small`; `fixed_small_log` computes its square root as `exp(0.5 log var)`) or `beta`
//! (`fixed_large`). diffusers' `fixed_large_log` would take `sqrt(log(beta))` of a negative
//! number (NaN) and the `learned*` types need a model with twice the output channels, so those
//! are rejected.
//!
//! Noise is drawn once per step whose timestep is greater than 0: with `leading` spacing and
//! `steps_offset = 1` the last timestep is 1, so even the last step is noisy.

use super::{
    check_scale_index, check_step, check_timesteps_in_table, clamp_f32, ddim_ddpm_timesteps,
    draw_noise, unsupported, NoiseSource, PredictionType, Resolved, Scheduler, SchedulerConfig,
    SchedulerError, VarianceType,
};

pub(crate) struct Ddpm {
    alphas_cumprod: Vec<f32>,
    timesteps_i: Vec<i64>,
    timesteps: Vec<f64>,
    prediction: PredictionType,
    clip: Option<f32>,
    variance: VarianceType,
}

impl Ddpm {
    pub(crate) fn new(cfg: &SchedulerConfig, r: &Resolved) -> Result<Self, SchedulerError> {
        const CLS: &str = "DDPMScheduler";
        if cfg.thresholding {
            return Err(unsupported(
                CLS,
                "thresholding",
                true,
                "dynamic thresholding is for pixel-space models; set thresholding to false",
            ));
        }
        let variance = cfg.variance_type()?.unwrap_or(VarianceType::FixedSmall);
        match variance {
            VarianceType::FixedSmall | VarianceType::FixedSmallLog | VarianceType::FixedLarge => {}
            VarianceType::FixedLargeLog => {
                return Err(unsupported(
                    CLS,
                    "variance_type",
                    variance,
                    "diffusers computes sqrt(log(beta)) for it, which is NaN; use fixed_small or fixed_large",
                ))
            }
            VarianceType::Learned | VarianceType::LearnedRange => {
                return Err(unsupported(
                    CLS,
                    "variance_type",
                    variance,
                    "learned variances need a UNet with twice the latent channels; use fixed_small",
                ))
            }
        }
        let n = cfg.num_train_timesteps;
        let timesteps_i = ddim_ddpm_timesteps(r.spacing, n, r.steps, cfg.steps_offset);
        check_timesteps_in_table(&timesteps_i, n, r.spacing, r.steps)?;
        Ok(Ddpm {
            alphas_cumprod: cfg.alphas_cumprod_f32()?,
            timesteps: timesteps_i.iter().map(|&t| t as f64).collect(),
            timesteps_i,
            prediction: r.prediction,
            clip: cfg.clip_sample.then_some(cfg.clip_sample_range as f32),
            variance,
        })
    }
}

impl Scheduler for Ddpm {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        None
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, _sample: &mut [f32], step_index: usize) {
        check_scale_index(step_index, self.timesteps.len());
    }

    fn step(
        &mut self,
        model_output: &[f32],
        step_index: usize,
        sample: &mut [f32],
        noise: &mut dyn NoiseSource,
    ) -> Result<(), SchedulerError> {
        check_step(model_output, sample, step_index, self.timesteps_i.len())?;
        let t = self.timesteps_i[step_index];
        // previous_timestep(): the next entry of the schedule, -1 after the last.
        let prev_t = self.timesteps_i.get(step_index + 1).copied().unwrap_or(-1);
        let a_t = self.alphas_cumprod[t as usize];
        let a_prev = if prev_t >= 0 {
            self.alphas_cumprod[prev_t as usize]
        } else {
            1.0
        };
        let b_t = 1.0f32 - a_t;
        let b_prev = 1.0f32 - a_prev;
        let cur_alpha = a_t / a_prev;
        let cur_beta = 1.0f32 - cur_alpha;
        let sqrt_a = a_t.sqrt();
        let sqrt_b = b_t.sqrt();

        let x0_coef = (a_prev.sqrt() * cur_beta) / b_t;
        let x_coef = cur_alpha.sqrt() * b_prev / b_t;

        let noise_scale: Option<(f32, Vec<f32>)> = if t > 0 {
            let buf = draw_noise(noise, sample.len());
            // _get_variance
            let var = (1.0f32 - a_prev) / (1.0f32 - a_t) * cur_beta;
            // torch.clamp(variance, min=1e-20) (NaN passes through)
            let var = if var < 1e-20f32 { 1e-20f32 } else { var };
            let scale = match self.variance {
                VarianceType::FixedSmall => var.sqrt(),
                VarianceType::FixedSmallLog => (0.5f32 * var.ln()).exp(),
                _ => cur_beta.sqrt(), // fixed_large
            };
            Some((scale, buf))
        } else {
            None
        };

        for (i, (x, &m)) in sample.iter_mut().zip(model_output).enumerate() {
            let s = *x;
            let mut x0 = match self.prediction {
                PredictionType::Epsilon => (s - sqrt_b * m) / sqrt_a,
                PredictionType::Sample => m,
                PredictionType::VPrediction => sqrt_a * s - sqrt_b * m,
            };
            if let Some(r) = self.clip {
                x0 = clamp_f32(x0, -r, r);
            }
            let mut prev = x0_coef * x0 + x_coef * s;
            if let Some((scale, buf)) = &noise_scale {
                prev += scale * buf[i];
            }
            *x = prev;
        }
        Ok(())
    }
}
