//! Wilcoxon signed-rank test, `scipy.stats.wilcoxon(d)` with its defaults (scipy 1.17):
//! zero_method "wilcox" (zero differences dropped from the ranking), no continuity correction,
//! method "auto".

use super::special::ndtr;
use super::StatsError;
use serde::Serialize;

/// How the p-value was computed (SciPy's choice under method="auto").
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WilcoxonMethod {
    /// n ≤ 50 without ties or zeros: the exact null distribution of r+.
    Exact,
    /// n ≤ 13 with ties or zeros: all 2^n sign flips (SciPy's exact permutation test).
    Permutation,
    /// Otherwise: normal approximation with the tie correction of the variance.
    Asymptotic,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Wilcoxon {
    /// min(r+, r−).
    pub statistic: f64,
    pub r_plus: f64,
    pub r_minus: f64,
    /// Two-sided p-value; NaN where SciPy's is (every difference zero with n > 13).
    pub pvalue: f64,
    pub method: WilcoxonMethod,
    /// Number of non-zero differences.
    pub n_nonzero: usize,
}

/// Average ranks (1-based) of `v` and the sizes of the tie groups.
fn average_ranks(v: &[f64]) -> (Vec<f64>, Vec<usize>) {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut ranks = vec![0.0; v.len()];
    let mut groups = Vec::new();
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let r = (i + 1 + j + 1) as f64 / 2.0;
        for &k in &idx[i..=j] {
            ranks[k] = r;
        }
        groups.push(j - i + 1);
        i = j + 1;
    }
    (ranks, groups)
}

/// Null distribution of r+ for n untied ranks, as SciPy builds it (halving convolution).
fn exact_distribution(n: usize) -> Vec<f64> {
    let mut c = vec![1.0f64];
    for k in 1..=n {
        let prev = c;
        c = vec![0.0; k * (k + 1) / 2 + 1];
        let m = prev.len();
        let len = c.len();
        for i in 0..m {
            c[i] = prev[i] * 0.5;
        }
        for i in 0..m {
            c[len - m + i] += prev[i] * 0.5;
        }
    }
    c
}

/// Two-sided Wilcoxon signed-rank test of the paired differences `d` (e.g. score of arm A
/// minus score of arm B per image).
pub fn wilcoxon(d: &[f64]) -> Result<Wilcoxon, StatsError> {
    super::check_finite("Wilcoxon differences", d)?;
    if d.is_empty() {
        return Err(StatsError::TooFew {
            what: "Wilcoxon differences",
            min: 1,
            got: 0,
        });
    }
    let n = d.len();
    let nonzero: Vec<usize> = (0..n).filter(|&i| d[i] != 0.0).collect();
    let n_zero = n - nonzero.len();
    let abs: Vec<f64> = nonzero.iter().map(|&i| d[i].abs()).collect();
    let (r, groups) = average_ranks(&abs);
    // rank of each original element (0 for zeros, which never count).
    let mut rank = vec![0.0; n];
    for (j, &i) in nonzero.iter().enumerate() {
        rank[i] = r[j];
    }
    let r_plus: f64 = (0..n).filter(|&i| d[i] > 0.0).map(|i| rank[i]).sum();
    let r_minus: f64 = (0..n).filter(|&i| d[i] < 0.0).map(|i| rank[i]).sum();
    let has_ties = groups.iter().any(|&g| g > 1);
    let count = nonzero.len() as f64;

    let method = if n > 50 {
        WilcoxonMethod::Asymptotic
    } else if !(has_ties || n_zero > 0) {
        WilcoxonMethod::Exact
    } else if n <= 13 {
        WilcoxonMethod::Permutation
    } else {
        WilcoxonMethod::Asymptotic
    };
    let pvalue = match method {
        WilcoxonMethod::Asymptotic => {
            let mn = count * (count + 1.0) * 0.25;
            let se = count * (count + 1.0) * (2.0 * count + 1.0);
            let tie: f64 = groups.iter().map(|&t| (t * t * t - t) as f64).sum();
            let se = ((se - tie / 2.0) / 24.0).sqrt();
            let z = (r_plus - mn) / se;
            2.0 * ndtr(-z.abs())
        }
        WilcoxonMethod::Exact => {
            let pmfs = exact_distribution(nonzero.len());
            let mn = count * (count + 1.0) / 4.0;
            let sum = |a: usize, b: usize| -> f64 {
                let b = b.min(pmfs.len());
                if a >= b {
                    0.0
                } else {
                    pmfs[a..b].iter().sum()
                }
            };
            // WilcoxonDistribution.cdf / .sf, including their switch at the mean.
            let cdf = |k: i64| -> f64 {
                if (k as f64) <= mn {
                    sum(0, (k + 1).max(0) as usize)
                } else {
                    1.0 - sum((k + 1) as usize, pmfs.len())
                }
            };
            let sf = |k: i64| -> f64 {
                if (k as f64) <= mn {
                    sum(k.max(0) as usize, pmfs.len())
                } else {
                    1.0 - sum(0, k as usize)
                }
            };
            (2.0 * sf(r_plus.floor() as i64).min(cdf(r_plus.ceil() as i64))).clamp(0.0, 1.0)
        }
        WilcoxonMethod::Permutation => {
            let gamma = (f64::EPSILON * 100.0 * r_plus).abs();
            let (mut less, mut greater) = (0u64, 0u64);
            let total = 1u64 << n;
            for mask in 0..total {
                // bit i set: the sign of d[i] is flipped.
                let mut s = 0.0;
                for i in 0..n {
                    let flipped = mask >> i & 1 == 1;
                    let positive = if flipped { d[i] < 0.0 } else { d[i] > 0.0 };
                    if positive {
                        s += rank[i];
                    }
                }
                if s <= r_plus + gamma {
                    less += 1;
                }
                if s >= r_plus - gamma {
                    greater += 1;
                }
            }
            let pl = less as f64 / total as f64;
            let pg = greater as f64 / total as f64;
            (pl.min(pg) * 2.0).clamp(0.0, 1.0)
        }
    };
    Ok(Wilcoxon {
        statistic: r_plus.min(r_minus),
        r_plus,
        r_minus,
        pvalue,
        method,
        n_nonzero: nonzero.len(),
    })
}
