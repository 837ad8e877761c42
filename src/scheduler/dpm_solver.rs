//! DPM-Solver++ multistep (Lu et al. 2022, arXiv 2211.01095), port of diffusers'
//! `DPMSolverMultistepScheduler` with `algorithm_type="dpmsolver++"` (data prediction).
//!
//! With `alpha_t = 1 / sqrt(sigma^2 + 1)`, `sigma_t = sigma * alpha_t` (the VP quantities
//! recovered from the VE sigma) and `lambda = ln(alpha_t) - ln(sigma_t)` (half log-SNR),
//! each step first converts the model output to a data prediction `m = x0(x, eps)`, then:
//!
//! ```text
//! h  = lambda_next - lambda
//! 1st order:            x' = (sigma_next/sigma) x - alpha_next (e^-h - 1) m0
//! 2nd order (midpoint): x' = (sigma_next/sigma) x - alpha_next (e^-h - 1) m0
//!                            - 0.5 alpha_next (e^-h - 1) D1,   D1 = (m0 - m1) / r0, r0 = h_prev / h
//! ```
//!
//! (`heun` replaces the last term by `+ alpha_next ((e^-h - 1)/h + 1) D1`; third order as in
//! diffusers.) The first step has no history and is first order; the last step is first order
//! when `final_sigmas_type = "zero"` (the default: its `lambda_next` is +inf, so the update
//! returns `m0` exactly), when `euler_at_final`, or with `lower_order_final` and fewer than 15
//! steps.
//!
//! Schedule: integer timesteps (`linspace(0, N-1, steps+1)` rounded half-to-even, dropping the
//! final 0, for `linspace`), sigmas read from the training table at those timesteps. With Karras
//! sigmas the sigmas span the whole training range (`sigma(0)`..`sigma(N-1)`, or the config's
//! `sigma_min`/`sigma_max`) and the timesteps are the fractional training timesteps of those
//! sigmas **rounded** (truncated instead for `squaredcos_cap_v2`, as diffusers skips the rounding
//! there and casts to int64). The final sigma is 0 (or `sigma(0)` for `sigma_min`).
//!
//! Quirks kept from diffusers: `trailing` spacing yields `steps + 1` timesteps for some step
//! counts (61, 103, 121, 122 of 1000; the extra last one is -1, whose sigma interpolation clamps to
//! `sigma(0)`), so loop over [`timesteps`](Scheduler::timesteps). With Karras sigmas on a
//! `squaredcos_cap_v2` schedule several of the first timesteps coincide (e.g. `998` five times
//! for 12 steps); diffusers' pipeline then looks up the first timestep, lands on its *second*
//! occurrence, starts at step index 1 and fails with an IndexError on the last step. Here the
//! caller passes the step index, so every sigma is used once.
//!
//! The model-output history makes this sampler stateful: steps must be taken in order. A step
//! whose index does not follow the previous one restarts the multistep history (as a fresh
//! diffusers scheduler does when it begins mid-schedule, e.g. img2img).

use super::euler::alphas_cumprod_sigma_safe;
use super::tables::{
    karras_sigmas, np_arange, np_interp_index, np_linspace, np_round, sigma_to_t, train_sigmas_f32,
};
use super::{
    check_scale_index, check_step, to_f64, unsupported, BetaSchedule, NoiseSource, PredictionType,
    Resolved, Scheduler, SchedulerConfig, SchedulerError, TimestepSpacing, VarianceType,
};

#[derive(Clone, Copy, PartialEq)]
enum SolverType {
    Midpoint,
    Heun,
}

pub(crate) struct DpmSolverMultistep {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    sigmas_f32: Vec<f32>,
    prediction: PredictionType,
    order: usize,
    solver_type: SolverType,
    lower_order_final: bool,
    euler_at_final: bool,
    final_sigma_zero: bool,
    /// Data predictions of the previous steps, oldest first (`model_outputs` in diffusers).
    history: Vec<Vec<f32>>,
    lower_order_nums: usize,
    last_step: Option<usize>,
}

/// `_sigma_to_alpha_sigma_t` in float32.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha_t = 1.0f32 / (sigma * sigma + 1.0f32).sqrt();
    (alpha_t, sigma * alpha_t)
}

fn lambda(alpha_t: f32, sigma_t: f32) -> f32 {
    alpha_t.ln() - sigma_t.ln()
}

impl DpmSolverMultistep {
    pub(crate) fn new(cfg: &SchedulerConfig, r: &Resolved) -> Result<Self, SchedulerError> {
        const CLS: &str = "DPMSolverMultistepScheduler";
        match cfg.algorithm_type.as_str() {
            // diffusers maps "deis" (a DEIS config) to dpmsolver++.
            "dpmsolver++" | "deis" => {}
            other => {
                return Err(unsupported(
                    CLS,
                    "algorithm_type",
                    other,
                    "only dpmsolver++ (DPM-Solver++ multistep) is implemented",
                ))
            }
        }
        let solver_type = match cfg.solver_type.as_str() {
            "heun" => SolverType::Heun,
            // "logrho", "bh1", "bh2" (DEIS/UniPC configs) are mapped to midpoint by diffusers.
            _ => SolverType::Midpoint,
        };
        if cfg.thresholding {
            return Err(unsupported(
                CLS,
                "thresholding",
                true,
                "dynamic thresholding is for pixel-space models; set thresholding to false",
            ));
        }
        if let Some(v @ (VarianceType::Learned | VarianceType::LearnedRange)) =
            cfg.variance_type()?
        {
            return Err(unsupported(
                CLS,
                "variance_type",
                v,
                "learned variances need a UNet with twice the latent channels; remove variance_type",
            ));
        }
        for (field, on) in [
            ("use_exponential_sigmas", cfg.use_exponential_sigmas),
            ("use_beta_sigmas", cfg.use_beta_sigmas),
            ("use_lu_lambdas", cfg.use_lu_lambdas),
            ("use_flow_sigmas", cfg.use_flow_sigmas),
        ] {
            if on {
                return Err(unsupported(
                    CLS,
                    field,
                    true,
                    "only interpolated and Karras sigmas are implemented",
                ));
            }
        }
        if r.karras && (cfg.use_exponential_sigmas || cfg.use_beta_sigmas) {
            return Err(unsupported(
                CLS,
                "use_karras_sigmas",
                true,
                "only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas may be set",
            ));
        }

        let n = cfg.num_train_timesteps;
        let steps = r.steps;
        let ac = alphas_cumprod_sigma_safe(cfg)?;

        // clipped_idx = searchsorted(flip(lambda_t), lambda_min_clipped): how many lambdas are
        // below the clip value.
        let clipped_idx = if cfg.lambda_min_clipped == f64::NEG_INFINITY {
            0
        } else {
            ac.iter()
                .filter(|&&a| {
                    let l = a.sqrt().ln() - (1.0f32 - a).sqrt().ln();
                    (l as f64) < cfg.lambda_min_clipped
                })
                .count()
        };
        let last_timestep = n - clipped_idx;

        let mut ts: Vec<i64> = match r.spacing {
            // np.linspace(0, last - 1, steps + 1).round()[::-1][:-1]
            TimestepSpacing::Linspace => {
                let mut v: Vec<i64> = np_linspace(0.0, last_timestep as f64 - 1.0, steps + 1)
                    .into_iter()
                    .rev()
                    .map(|t| np_round(t) as i64)
                    .collect();
                v.pop();
                v
            }
            // (arange(0, steps + 1) * (last // (steps + 1))).round()[::-1][:-1] + steps_offset
            TimestepSpacing::Leading => {
                let ratio = last_timestep / (steps + 1);
                (1..=steps)
                    .rev()
                    .map(|i| (i * ratio + cfg.steps_offset) as i64)
                    .collect()
            }
            // np.arange(last, 0, -N / steps).round() - 1
            TimestepSpacing::Trailing => {
                let ratio = n as f64 / steps as f64;
                np_arange(last_timestep as f64, 0.0, -ratio)
                    .into_iter()
                    .map(|t| np_round(t) as i64 - 1)
                    .collect()
            }
        };

        let train_sigmas = train_sigmas_f32(&ac);
        let train_sigmas_f64 = to_f64(&train_sigmas);
        let sigmas: Vec<f64> = if r.karras {
            let log_sigmas: Vec<f32> = train_sigmas.iter().map(|s| s.ln()).collect();
            // in_sigmas = flip(train sigmas): [-1] is sigma(0), [0] is sigma(N-1)
            let smin = cfg.sigma_min.unwrap_or(train_sigmas_f64[0]);
            let smax = cfg.sigma_max.unwrap_or(train_sigmas_f64[n - 1]);
            let ks = karras_sigmas(smin, smax, steps);
            let round = cfg.beta_schedule != BetaSchedule::SquaredcosCapV2.as_str();
            ts = ks
                .iter()
                .map(|&s| {
                    let t = sigma_to_t(s, &log_sigmas);
                    // `.round()` then `.to(torch.int64)` (which truncates)
                    (if round { np_round(t) } else { t }) as i64
                })
                .collect();
            ks
        } else {
            ts.iter()
                .map(|&t| np_interp_index(t as f64, &train_sigmas_f64))
                .collect()
        };
        let final_sigma_zero = cfg.final_sigmas_type != "sigma_min";
        let sigma_last = if final_sigma_zero {
            0.0
        } else {
            train_sigmas[0]
        };
        let mut sigmas_f32: Vec<f32> = sigmas.iter().map(|&s| s as f32).collect();
        sigmas_f32.push(sigma_last);

        Ok(DpmSolverMultistep {
            timesteps: ts.iter().map(|&t| t as f64).collect(),
            sigmas: to_f64(&sigmas_f32),
            sigmas_f32,
            prediction: r.prediction,
            order: cfg.solver_order,
            solver_type,
            lower_order_final: cfg.lower_order_final,
            euler_at_final: cfg.euler_at_final,
            final_sigma_zero,
            history: Vec::new(),
            lower_order_nums: 0,
            last_step: None,
        })
    }

    /// `convert_model_output` for dpmsolver++: the data prediction x0.
    fn data_prediction(&self, model_output: &[f32], sample: &[f32], step_index: usize) -> Vec<f32> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas_f32[step_index]);
        match self.prediction {
            PredictionType::Epsilon => sample
                .iter()
                .zip(model_output)
                .map(|(&x, &m)| (x - sigma_t * m) / alpha_t)
                .collect(),
            PredictionType::VPrediction => sample
                .iter()
                .zip(model_output)
                .map(|(&x, &m)| alpha_t * x - sigma_t * m)
                .collect(),
            PredictionType::Sample => model_output.to_vec(),
        }
    }
}

impl Scheduler for DpmSolverMultistep {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas)
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
        _noise: &mut dyn NoiseSource,
    ) -> Result<(), SchedulerError> {
        let n = self.timesteps.len();
        check_step(model_output, sample, step_index, n)?;
        if self.last_step.map(|l| l + 1) != Some(step_index) {
            self.history.clear();
            self.lower_order_nums = 0;
        }
        self.last_step = Some(step_index);

        let lower_order_final = step_index == n - 1
            && (self.euler_at_final || (self.lower_order_final && n < 15) || self.final_sigma_zero);
        let lower_order_second = step_index + 2 == n && self.lower_order_final && n < 15;

        let m0 = self.data_prediction(model_output, sample, step_index);
        self.history.push(m0);
        if self.history.len() > self.order {
            self.history.remove(0);
        }

        let i = step_index;
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas_f32[i + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas_f32[i]);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let h = lambda_t - lambda_s0;
        let c_x = sigma_t / sigma_s0;
        let em1 = (-h).exp() - 1.0f32;
        let c_m0 = alpha_t * em1;

        let hist = &self.history;
        let m0 = &hist[hist.len() - 1];
        let use_order = if self.order == 1 || self.lower_order_nums < 1 || lower_order_final {
            1
        } else if self.order == 2 || self.lower_order_nums < 2 || lower_order_second {
            2
        } else {
            3
        };

        match use_order {
            1 => {
                for (x, &d0) in sample.iter_mut().zip(m0) {
                    *x = c_x * *x - c_m0 * d0;
                }
            }
            2 => {
                let m1 = &hist[hist.len() - 2];
                let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas_f32[i - 1]);
                let lambda_s1 = lambda(alpha_s1, sigma_s1);
                let h_0 = lambda_s0 - lambda_s1;
                let r0 = h_0 / h;
                let d1_coef = 1.0f32 / r0;
                match self.solver_type {
                    SolverType::Midpoint => {
                        let c_d1 = 0.5f32 * c_m0;
                        for ((x, &d0), &p1) in sample.iter_mut().zip(m0).zip(m1) {
                            let d1 = d1_coef * (d0 - p1);
                            *x = c_x * *x - c_m0 * d0 - c_d1 * d1;
                        }
                    }
                    SolverType::Heun => {
                        let c_d1 = alpha_t * (em1 / h + 1.0f32);
                        for ((x, &d0), &p1) in sample.iter_mut().zip(m0).zip(m1) {
                            let d1 = d1_coef * (d0 - p1);
                            *x = c_x * *x - c_m0 * d0 + c_d1 * d1;
                        }
                    }
                }
            }
            _ => {
                let m1 = &hist[hist.len() - 2];
                let m2 = &hist[hist.len() - 3];
                let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas_f32[i - 1]);
                let (alpha_s2, sigma_s2) = alpha_sigma(self.sigmas_f32[i - 2]);
                let lambda_s1 = lambda(alpha_s1, sigma_s1);
                let lambda_s2 = lambda(alpha_s2, sigma_s2);
                let h_0 = lambda_s0 - lambda_s1;
                let h_1 = lambda_s1 - lambda_s2;
                let r0 = h_0 / h;
                let r1 = h_1 / h;
                let c10 = 1.0f32 / r0;
                let c11 = 1.0f32 / r1;
                let c_mix = r0 / (r0 + r1);
                let c_d2 = 1.0f32 / (r0 + r1);
                let c_d1 = alpha_t * (em1 / h + 1.0f32);
                let c_d2_out = alpha_t * ((em1 + h) / (h * h) - 0.5f32);
                for (((x, &d0), &p1), &p2) in sample.iter_mut().zip(m0).zip(m1).zip(m2) {
                    let d1_0 = c10 * (d0 - p1);
                    let d1_1 = c11 * (p1 - p2);
                    let d1 = d1_0 + c_mix * (d1_0 - d1_1);
                    let d2 = c_d2 * (d1_0 - d1_1);
                    *x = c_x * *x - c_m0 * d0 + c_d1 * d1 - c_d2_out * d2;
                }
            }
        }
        if self.lower_order_nums < self.order {
            self.lower_order_nums += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn leading_matches_diffusers_formula() {
        // (arange(0, 21) * (1000 // 21)).round()[::-1][:-1] + 1 -> 941, 894, ..., 48
        let ratio = 1000 / 21;
        let v: Vec<usize> = (1..=20).rev().map(|i| i * ratio + 1).collect();
        assert_eq!(v[0], 941);
        assert_eq!(v[19], 48);
    }
}
