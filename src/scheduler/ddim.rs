//! DDIM (Song et al. 2020), port of diffusers' `DDIMScheduler`.
//!
//! Step from `t` to `t_prev = t - N // steps` (diffusers uses this stride for **every** spacing,
//! even `trailing`/`linspace` where the actual next timestep may differ; we keep that), with
//! `a = alphas_cumprod`:
//!
//! ```text
//! x0   = (x - sqrt(1 - a_t) eps) / sqrt(a_t)            (epsilon; v/sample analogously)
//! var  = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)  (formula 16)
//! std  = eta * sqrt(var)
//! x'   = sqrt(a_prev) x0 + sqrt(1 - a_prev - std^2) eps  (+ std * noise when eta > 0)
//! ```
//!
//! `a_prev` of the last step is 1 when `set_alpha_to_one`, else `alphas_cumprod[0]`. The scalar
//! coefficients are float32 torch scalars and the update is elementwise float32, as in diffusers
//! (which does not upcast here).

use super::{
    check_scale_index, check_step, check_timesteps_in_table, clamp_f32, ddim_ddpm_timesteps,
    draw_noise, unsupported, NoiseSource, PredictionType, Resolved, Scheduler, SchedulerConfig,
    SchedulerError,
};

pub(crate) struct Ddim {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps_i: Vec<i64>,
    timesteps: Vec<f64>,
    stride: i64,
    prediction: PredictionType,
    clip: Option<f32>,
    eta: f64,
}

impl Ddim {
    pub(crate) fn new(cfg: &SchedulerConfig, r: &Resolved) -> Result<Self, SchedulerError> {
        if cfg.thresholding {
            return Err(unsupported(
                "DDIMScheduler",
                "thresholding",
                true,
                "dynamic thresholding is for pixel-space models; set thresholding to false",
            ));
        }
        let n = cfg.num_train_timesteps;
        let alphas_cumprod = cfg.alphas_cumprod_f32()?;
        let final_alpha_cumprod = if cfg.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        let timesteps_i = ddim_ddpm_timesteps(r.spacing, n, r.steps, cfg.steps_offset);
        check_timesteps_in_table(&timesteps_i, n, r.spacing, r.steps)?;
        Ok(Ddim {
            final_alpha_cumprod,
            timesteps: timesteps_i.iter().map(|&t| t as f64).collect(),
            timesteps_i,
            stride: (n / r.steps) as i64,
            prediction: r.prediction,
            clip: cfg.clip_sample.then_some(cfg.clip_sample_range as f32),
            eta: r.eta,
            alphas_cumprod,
        })
    }
}

impl Scheduler for Ddim {
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
        let prev_t = t - self.stride;
        let a_t = self.alphas_cumprod[t as usize];
        let a_prev = if prev_t >= 0 {
            self.alphas_cumprod[prev_t as usize]
        } else {
            self.final_alpha_cumprod
        };
        let b_t = 1.0f32 - a_t;
        let sqrt_a = a_t.sqrt();
        let sqrt_b = b_t.sqrt();

        // _get_variance
        let b_prev = 1.0f32 - a_prev;
        let variance = (b_prev / b_t) * (1.0f32 - a_t / a_prev);
        // `eta * variance ** 0.5`: the Python float eta enters the f32 op as f32.
        let std_dev = (self.eta as f32) * variance.sqrt();
        let dir_coef = (1.0f32 - a_prev - std_dev * std_dev).sqrt();
        let sqrt_a_prev = a_prev.sqrt();

        let noise_buf = if self.eta > 0.0 {
            Some(draw_noise(noise, sample.len()))
        } else {
            None
        };

        for (i, (x, &m)) in sample.iter_mut().zip(model_output).enumerate() {
            let s = *x;
            let (mut x0, eps) = match self.prediction {
                PredictionType::Epsilon => ((s - sqrt_b * m) / sqrt_a, m),
                PredictionType::Sample => (m, (s - sqrt_a * m) / sqrt_b),
                PredictionType::VPrediction => (sqrt_a * s - sqrt_b * m, sqrt_a * m + sqrt_b * s),
            };
            if let Some(r) = self.clip {
                x0 = clamp_f32(x0, -r, r);
            }
            let mut prev = sqrt_a_prev * x0 + dir_coef * eps;
            if let Some(nb) = &noise_buf {
                prev += std_dev * nb[i];
            }
            *x = prev;
        }
        Ok(())
    }
}
