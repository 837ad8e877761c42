//! Euler ancestral, port of diffusers' `EulerAncestralDiscreteScheduler`.
//!
//! Same schedule as [`euler`](super::euler) without Karras sigmas (the class has no such
//! option). Each step splits the move from `sigma` to `sigma_next` into a deterministic Euler
//! step down to `sigma_down` and fresh noise of size `sigma_up`, chosen so that
//! `sigma_down^2 + sigma_up^2 = sigma_next^2` (the DDPM posterior in sigma space, eta = 1):
//!
//! ```text
//! sigma_up   = sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)
//! sigma_down = sqrt(sigma_next^2 - sigma_up^2)
//! x' = x + (x - x0) / sigma * (sigma_down - sigma) + noise * sigma_up
//! ```
//!
//! `sigma_down` is an ill-conditioned difference (`sigma_next^2 - sigma_up^2`, two nearly equal
//! numbers); it is computed in float32 in diffusers' order. Where torch's float32 `sqrt` (MKL,
//! not correctly rounded) and IEEE `sqrt` differ by an ulp this shows up amplified: with
//! zero-terminal-SNR (first sigma 4096) the first step differs from diffusers by ~1e-3
//! relative; with ordinary schedules by < 3e-6.
//!
//! Noise is drawn on **every** step, the last one included (where `sigma_up = 0`), so the
//! generator advances exactly as in diffusers.

use super::euler::{
    alphas_cumprod_sigma_safe, euler_init_noise_sigma, euler_scale_input, euler_timesteps, v_to_x0,
};
use super::tables::{np_interp_index, train_sigmas_f32};
use super::{
    check_scale_index, check_step, draw_noise, to_f64, unsupported, NoiseSource, PredictionType,
    Resolved, Scheduler, SchedulerConfig, SchedulerError,
};

pub(crate) struct EulerAncestral {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    sigmas_f32: Vec<f32>,
    init_noise_sigma: f64,
    prediction: PredictionType,
}

impl EulerAncestral {
    pub(crate) fn new(cfg: &SchedulerConfig, r: &Resolved) -> Result<Self, SchedulerError> {
        const CLS: &str = "EulerAncestralDiscreteScheduler";
        if r.prediction == PredictionType::Sample {
            return Err(unsupported(
                CLS,
                "prediction_type",
                r.prediction,
                "diffusers does not implement it for this sampler; use epsilon or v_prediction",
            ));
        }
        let ac = alphas_cumprod_sigma_safe(cfg)?;
        let train_sigmas = to_f64(&train_sigmas_f32(&ac));
        let ts32 = euler_timesteps(
            r.spacing,
            cfg.num_train_timesteps,
            r.steps,
            cfg.steps_offset,
        );
        let mut sigmas_f32: Vec<f32> = ts32
            .iter()
            .map(|&t| np_interp_index(t as f64, &train_sigmas) as f32)
            .collect();
        sigmas_f32.push(0.0);
        Ok(EulerAncestral {
            timesteps: ts32.iter().map(|&t| t as f64).collect(),
            sigmas: to_f64(&sigmas_f32),
            init_noise_sigma: euler_init_noise_sigma(&sigmas_f32, r.spacing),
            sigmas_f32,
            prediction: r.prediction,
        })
    }
}

impl Scheduler for EulerAncestral {
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
        noise: &mut dyn NoiseSource,
    ) -> Result<(), SchedulerError> {
        check_step(model_output, sample, step_index, self.timesteps.len())?;
        let sigma = self.sigmas_f32[step_index];
        let sigma_to = self.sigmas_f32[step_index + 1];
        let from_sq = sigma * sigma;
        let to_sq = sigma_to * sigma_to;
        let sigma_up = (to_sq * (from_sq - to_sq) / from_sq).sqrt();
        let sigma_down = (to_sq - sigma_up * sigma_up).sqrt();
        let dt = sigma_down - sigma;
        let sq_p1 = from_sq + 1.0f32;
        let c_out = -sigma / sq_p1.sqrt();

        let nb = draw_noise(noise, sample.len());
        for ((x, &m), &n) in sample.iter_mut().zip(model_output).zip(&nb) {
            let s = *x;
            let x0 = match self.prediction {
                PredictionType::VPrediction => v_to_x0(m, s, c_out, sq_p1),
                _ => s - sigma * m,
            };
            let derivative = (s - x0) / sigma;
            let prev = s + derivative * dt;
            *x = prev + n * sigma_up;
        }
        Ok(())
    }
}
