//! Bit-exact re-implementations of the torch / numpy table arithmetic diffusers uses.
//!
//! diffusers builds every table (betas, `alphas_cumprod`, sigmas) as **float32** torch tensors and
//! computes timesteps and interpolated sigmas with float64 numpy. To agree with it to the last
//! bit (and not merely to 1e-6) we redo the same operations in the same precision and order:
//!
//! * `torch.linspace(a, b, n, dtype=float32)` on CPU evaluates, per element, the scalar formula
//!   `start + step * i` (first half) / `end - step * (n - 1 - i)` (second half) in f32, and the
//!   shipped x86-64 build contracts it into one FMA. Verified against torch 2.15: without the FMA
//!   about 20% of the 1000 betas differ by one ulp.
//! * `torch.cumprod` of a float32 CPU tensor accumulates in **double** (`acc_type<float>` on CPU is
//!   `double`) and rounds each partial product to f32.
//! * numpy `linspace` is `arange(n) * step + start` with the last element forced to `stop`;
//!   `arange(start, stop, step)` for floats has `ceil((stop - start) / step)` elements
//!   `start + i * ((start + step) - start)`; `.round()` rounds half to even.
//! * `np.interp` is `slope * (x - x_j) + y_j` in f64 (exact hits return `y_j`).
//!
//! Results are kept in f32 where diffusers keeps f32, and exposed as f64 holding those values.

use super::{BetaSchedule, SchedulerConfig, SchedulerError};

/// `torch.linspace(start, end, steps, dtype=torch.float32)` (CPU).
pub(crate) fn torch_linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    if steps == 0 {
        return Vec::new();
    }
    let start = start as f32;
    let end = end as f32;
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - i - 1) as f32, end)
            }
        })
        .collect()
}

/// diffusers' `betas_for_alpha_bar` for the `cosine` (`squaredcos_cap_v2`) and `laplace`
/// transforms: computed in Python floats (f64), stored as float32.
fn betas_for_alpha_bar(n: usize, laplace: bool) -> Vec<f32> {
    let alpha_bar = |t: f64| -> f64 {
        if laplace {
            let lmb = -0.5 * (1.0f64).copysign(0.5 - t) * (1.0 - 2.0 * (0.5 - t).abs() + 1e-6).ln();
            let snr = lmb.exp();
            (snr / (1.0 + snr)).sqrt()
        } else {
            let c = ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos();
            c * c
        }
    };
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// The float32 betas diffusers' constructors compute (`self.betas`), including the zero-terminal-
/// SNR rescale when enabled. Assumes a validated config.
pub(crate) fn betas_f32(cfg: &SchedulerConfig) -> Result<Vec<f32>, SchedulerError> {
    let n = cfg.num_train_timesteps;
    let betas = if let Some(tb) = &cfg.trained_betas {
        // torch.tensor(trained_betas, dtype=torch.float32)
        tb.iter().map(|&b| b as f32).collect()
    } else {
        match cfg.beta_schedule()? {
            BetaSchedule::Linear => torch_linspace_f32(cfg.beta_start, cfg.beta_end, n),
            BetaSchedule::ScaledLinear => {
                // linspace(sqrt(a), sqrt(b)) ** 2: the square roots are Python floats, the square
                // is a float32 multiply.
                torch_linspace_f32(cfg.beta_start.sqrt(), cfg.beta_end.sqrt(), n)
                    .into_iter()
                    .map(|b| b * b)
                    .collect()
            }
            BetaSchedule::SquaredcosCapV2 => betas_for_alpha_bar(n, false),
            BetaSchedule::Laplace => betas_for_alpha_bar(n, true),
            BetaSchedule::Sigmoid => {
                // torch.sigmoid(torch.linspace(-6, 6, n)) * (end - start) + start, in float32.
                let scale = (cfg.beta_end - cfg.beta_start) as f32;
                let offset = cfg.beta_start as f32;
                torch_linspace_f32(-6.0, 6.0, n)
                    .into_iter()
                    .map(|x| {
                        let s = (1.0 / (1.0 + (-(x as f64)).exp())) as f32;
                        s * scale + offset
                    })
                    .collect()
            }
        }
    };
    Ok(if cfg.rescale_betas_zero_snr {
        rescale_zero_terminal_snr(&betas)
    } else {
        betas
    })
}

/// `torch.cumprod(1.0 - betas)` on float32: products accumulated in f64, each rounded to f32.
pub(crate) fn alphas_cumprod_f32(betas: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    betas
        .iter()
        .map(|&b| {
            acc *= (1.0f32 - b) as f64;
            acc as f32
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr` (Lin et al. 2023, Algorithm 1), op for op in float32:
/// shift `sqrt(alphas_cumprod)` so that the last one is 0, rescale so that the first one is
/// unchanged, and turn the result back into betas (the last beta becomes exactly 1).
pub(crate) fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    if betas.is_empty() {
        return Vec::new();
    }
    let mut sqrt_ab: Vec<f32> = alphas_cumprod_f32(betas)
        .into_iter()
        .map(f32::sqrt)
        .collect();
    let first = sqrt_ab[0];
    let last = sqrt_ab[sqrt_ab.len() - 1];
    let scale = first / (first - last);
    for v in sqrt_ab.iter_mut() {
        *v -= last;
        *v *= scale;
    }
    let alphas_bar: Vec<f32> = sqrt_ab.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(betas.len());
    out.push(1.0f32 - alphas_bar[0]);
    for i in 1..alphas_bar.len() {
        out.push(1.0f32 - alphas_bar[i] / alphas_bar[i - 1]);
    }
    out
}

/// `((1 - alphas_cumprod) / alphas_cumprod) ** 0.5` on the float32 table (the Karras-style
/// sigma of each training timestep).
///
/// torch's float32 `sqrt` on x86-64 CPUs goes through MKL's vector math, which is not correctly
/// rounded (off by one ulp for ~15% of inputs, up to 0.75 ulp); we use the IEEE square root, so
/// sigmas may differ from diffusers' in the last bit, which is harmless (~1e-7 relative) except
/// in one place: the zero-terminal-SNR entry `alphas_cumprod = 2^-24`, whose sigma
/// `sqrt(2^24 - 1)` lies a hair below the midpoint between `4096 - 2^-12` and 4096. MKL returns
/// 4096, IEEE rounding the value below, and the first Euler step (`x + (x - x0)/sigma * dt`
/// with `x ~ 4096 * noise`) cancels catastrophically, turning that one ulp into a 5e-4 difference
/// of the output. That single value is therefore taken as torch computes it.
pub(crate) fn train_sigmas_f32(alphas_cumprod: &[f32]) -> Vec<f32> {
    const ZERO_SNR_ALPHA: f32 = 1.0 / 16_777_216.0; // 2^-24
    alphas_cumprod
        .iter()
        .map(|&a| {
            if a == ZERO_SNR_ALPHA {
                4096.0
            } else {
                ((1.0f32 - a) / a).sqrt()
            }
        })
        .collect()
}

/// `np.linspace(start, stop, num)` (endpoint included), float64.
pub(crate) fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    if num == 1 {
        return vec![start];
    }
    let div = (num - 1) as f64;
    let delta = stop - start;
    let step = delta / div;
    let mut y: Vec<f64> = if step == 0.0 {
        (0..num).map(|i| (i as f64 / div) * delta + start).collect()
    } else {
        (0..num).map(|i| i as f64 * step + start).collect()
    };
    y[num - 1] = stop;
    y
}

/// `np.arange(start, stop, step)` for Python floats.
pub(crate) fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if len.is_nan() || len <= 0.0 {
        return Vec::new();
    }
    let len = len as usize;
    let mut out = Vec::with_capacity(len);
    out.push(start);
    if len > 1 {
        let next = start + step;
        out.push(next);
        let delta = next - start;
        for i in 2..len {
            out.push(start + i as f64 * delta);
        }
    }
    out
}

/// numpy `.round()` (half to even).
pub(crate) fn np_round(x: f64) -> f64 {
    x.round_ties_even()
}

/// `np.interp(x, np.arange(len(fp)), fp)` for one point.
pub(crate) fn np_interp_index(x: f64, fp: &[f64]) -> f64 {
    let last = fp.len() - 1;
    if x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return fp[0];
    }
    if x >= last as f64 {
        return fp[last];
    }
    let j = x.floor() as usize;
    let xj = j as f64;
    if xj == x {
        return fp[j];
    }
    let slope = (fp[j + 1] - fp[j]) / ((j + 1) as f64 - xj);
    let r = slope * (x - xj) + fp[j];
    if r.is_nan() {
        let r2 = slope * (x - (j + 1) as f64) + fp[j + 1];
        if r2.is_nan() && fp[j] == fp[j + 1] {
            return fp[j];
        }
        return r2;
    }
    r
}

/// diffusers' `_sigma_to_t`: the (fractional) training timestep whose log-sigma brackets
/// `log(sigma)`, interpolated linearly in log-sigma. `log_sigmas` is the float32 table
/// `np.log(train_sigmas)`; note that `low - high` is a float32 difference in numpy.
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let n = log_sigmas.len();
    let log_sigma = sigma.max(1e-10).ln();
    // np.cumsum(dists >= 0).argmax(): index of the last entry with log_sigma >= log_sigmas[i]
    // (0 when there is none), clipped to n - 2.
    let mut low_idx = 0usize;
    let mut count = 0usize;
    let mut best = 0usize;
    for (i, &ls) in log_sigmas.iter().enumerate() {
        if log_sigma - ls as f64 >= 0.0 {
            count += 1;
            if count > best {
                best = count;
                low_idx = i;
            }
        }
    }
    let low_idx = low_idx.min(n.saturating_sub(2));
    let high_idx = low_idx + 1;
    let low = log_sigmas[low_idx];
    let high = log_sigmas[high_idx];
    let w = ((low as f64 - log_sigma) / (low - high) as f64).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// Karras et al. (2022) noise levels: `(max^(1/7) + ramp * (min^(1/7) - max^(1/7)))^7` for
/// `ramp = linspace(0, 1, n)`, exactly as diffusers' `_convert_to_karras` (float64).
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0f64;
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    np_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv_rho + r * (min_inv_rho - max_inv_rho)).powf(rho))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arange_and_round_follow_numpy() {
        // np.arange(1000, 0, -62.5).round() -> 1000, 938 (937.5 rounds to even), 875, 812, ...
        let v: Vec<f64> = np_arange(1000.0, 0.0, -62.5)
            .into_iter()
            .map(np_round)
            .collect();
        assert_eq!(v.len(), 16);
        assert_eq!(&v[..4], &[1000.0, 938.0, 875.0, 812.0]);
        assert_eq!(np_arange(0.0, 1.0, 2.0), vec![0.0]);
        assert!(np_arange(1.0, 0.0, 1.0).is_empty());
    }

    #[test]
    fn linspace_endpoints() {
        let v = np_linspace(0.0, 999.0, 7);
        assert_eq!(v[0], 0.0);
        assert_eq!(v[6], 999.0);
        assert_eq!(np_linspace(3.0, 5.0, 1), vec![3.0]);
        let b = torch_linspace_f32(0.0001, 0.02, 1000);
        assert_eq!(b[0], 0.0001f32);
        assert_eq!(b[999], 0.02f32);
    }

    #[test]
    fn interp_hits_and_edges() {
        let fp = [1.0, 2.0, 4.0];
        assert_eq!(np_interp_index(1.0, &fp), 2.0);
        assert_eq!(np_interp_index(1.5, &fp), 3.0);
        assert_eq!(np_interp_index(-1.0, &fp), 1.0);
        assert_eq!(np_interp_index(9.0, &fp), 4.0);
    }
}
