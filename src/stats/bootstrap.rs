//! Bootstrap confidence interval of the mean, equal to
//! `scipy.stats.bootstrap((d,), np.mean, n_resamples=B, confidence_level=c, method=M,
//! rng=np.random.default_rng(seed))`: the B×n resample indices are drawn in the same order
//! from the same generator ([`super::pcg64`]), means use numpy's pairwise summation (so that
//! equality tests in BCa's bias correction see the same bits), and the quantiles use SciPy's
//! `stats.quantile(method="linear")`.

use super::pcg64::Pcg64;
use super::special::{ndtr, ndtri};
use super::StatsError;
use serde::Serialize;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CiMethod {
    /// Bias-corrected and accelerated (SciPy's default).
    Bca,
    Percentile,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BootstrapCi {
    pub mean: f64,
    /// NaN where SciPy's is (BCa on a degenerate, all-equal sample).
    pub low: f64,
    pub high: f64,
    /// Sample standard deviation of the bootstrap distribution.
    pub standard_error: f64,
    pub method: CiMethod,
    pub n_resamples: usize,
    pub seed: u64,
    pub confidence: f64,
}

/// numpy's pairwise summation (`DOUBLE_pairwise_sum`, blocks of 8 below 128 elements).
fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        let mut r = 0.0;
        for &x in a {
            r += x;
        }
        r
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - n % 8 {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// `np.mean` of a contiguous f64 row, bit for bit.
pub fn numpy_mean(a: &[f64]) -> f64 {
    pairwise_sum(a) / a.len() as f64
}

/// SciPy `stats.quantile(sorted, p, method="linear")`.
fn quantile_linear(sorted: &[f64], p: f64) -> f64 {
    if p.is_nan() {
        return f64::NAN;
    }
    let n = sorted.len() as f64;
    let m = 1.0 - p;
    let jg = p * n + m;
    let jp1 = jg.div_euclid(1.0);
    let j = jp1 - 1.0;
    let mut g = jg.rem_euclid(1.0);
    if j < 0.0 {
        g = 0.0;
    }
    let j = j.clamp(0.0, n - 1.0) as usize;
    let jp1 = jp1.clamp(0.0, n - 1.0) as usize;
    (1.0 - g) * sorted[j] + g * sorted[jp1]
}

/// Two-sided bootstrap CI of the mean of `d`.
pub fn bootstrap_mean_ci(
    d: &[f64],
    n_resamples: usize,
    confidence: f64,
    method: CiMethod,
    seed: u64,
) -> Result<BootstrapCi, StatsError> {
    super::check_finite("bootstrap sample", d)?;
    let n = d.len();
    if n < 2 {
        return Err(StatsError::TooFew {
            what: "bootstrap sample",
            min: 2,
            got: n,
        });
    }
    if n_resamples == 0 {
        return Err(StatsError::TooFew {
            what: "bootstrap resamples",
            min: 1,
            got: 0,
        });
    }
    if n as u64 > 1 << 32 {
        return Err(StatsError::Invalid {
            what: "bootstrap sample",
            detail: format!("{n} values exceed 2^32"),
        });
    }
    if !(confidence > 0.0 && confidence < 1.0) {
        return Err(StatsError::Invalid {
            what: "confidence level",
            detail: format!("{confidence} is not in (0, 1); use e.g. 0.95"),
        });
    }
    let mut rng = Pcg64::from_seed(seed);
    let mut row = vec![0.0; n];
    let mut theta_b = Vec::with_capacity(n_resamples);
    for _ in 0..n_resamples {
        for slot in row.iter_mut() {
            *slot = d[rng.integers(n as u64) as usize];
        }
        theta_b.push(numpy_mean(&row));
    }
    let theta_hat = numpy_mean(d);
    let alpha = (1.0 - confidence) / 2.0;
    let (a1, a2) = match method {
        CiMethod::Percentile => (alpha, 1.0 - alpha),
        CiMethod::Bca => {
            let b = theta_b.len() as f64;
            let below = theta_b.iter().filter(|&&t| t < theta_hat).count();
            let at_or_below = theta_b.iter().filter(|&&t| t <= theta_hat).count();
            let percentile = (below + at_or_below) as f64 / (2.0 * b);
            let z0 = ndtri(percentile);
            // Jackknife means, each of n-1 values in their original order.
            let mut jk = Vec::with_capacity(n);
            let mut rest = Vec::with_capacity(n - 1);
            for leave in 0..n {
                rest.clear();
                rest.extend(
                    d.iter()
                        .enumerate()
                        .filter(|&(i, _)| i != leave)
                        .map(|(_, &v)| v),
                );
                jk.push(numpy_mean(&rest));
            }
            let nf = n as f64;
            let dot = numpy_mean(&jk);
            let u: Vec<f64> = jk.iter().map(|&t| (nf - 1.0) * (dot - t)).collect();
            let u3: Vec<f64> = u.iter().map(|&x| x.powi(3)).collect();
            let u2: Vec<f64> = u.iter().map(|&x| x.powi(2)).collect();
            let num = pairwise_sum(&u3) / nf.powi(3);
            let den = pairwise_sum(&u2) / nf.powi(2);
            let a_hat = 1.0 / 6.0 * num / den.powf(1.5);
            let z_alpha = ndtri(alpha);
            let num1 = z0 + z_alpha;
            let a1 = ndtr(z0 + num1 / (1.0 - a_hat * num1));
            let num2 = z0 - z_alpha;
            let a2 = ndtr(z0 + num2 / (1.0 - a_hat * num2));
            (a1, a2)
        }
    };
    let mean_b = numpy_mean(&theta_b);
    let dev: Vec<f64> = theta_b
        .iter()
        .map(|&t| (t - mean_b) * (t - mean_b))
        .collect();
    let standard_error = (pairwise_sum(&dev) / (theta_b.len() as f64 - 1.0)).sqrt();
    let mut sorted = theta_b;
    sorted.sort_by(f64::total_cmp);
    Ok(BootstrapCi {
        mean: theta_hat,
        low: quantile_linear(&sorted, a1),
        high: quantile_linear(&sorted, a2),
        standard_error,
        method,
        n_resamples,
        seed,
        confidence,
    })
}
