//! Exact binomial test with p = 0.5 (`scipy.stats.binomtest(k, n, 0.5)`, two-sided) and its
//! Clopper-Pearson 95 % interval (`BinomTestResult.proportion_ci()`, method "exact").

use super::special::{betainc, bisect_increasing, ln_choose};
use super::StatsError;
use serde::Serialize;

/// Result of [`binomtest`].
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct BinomTest {
    pub k: u64,
    pub n: u64,
    /// k / n.
    pub proportion: f64,
    /// Two-sided p-value against p = 0.5.
    pub pvalue: f64,
    /// Clopper-Pearson interval at the requested confidence.
    pub ci_low: f64,
    pub ci_high: f64,
}

/// Binomial(n, 1/2) probability mass, from log-gamma (relative error ~1e-11 for n ≤ 1e5).
fn pmf(x: u64, n: u64) -> f64 {
    if x > n {
        return 0.0;
    }
    (ln_choose(n, x) - n as f64 * std::f64::consts::LN_2).exp()
}

fn cdf(k: i64, n: u64) -> f64 {
    if k < 0 {
        return 0.0;
    }
    if k as u64 >= n {
        return 1.0;
    }
    // Sum from the smaller tail so that the result keeps its relative precision.
    let k = k as u64;
    if 2 * k <= n {
        (0..=k).map(|j| pmf(j, n)).sum()
    } else {
        1.0 - sf(k as i64, n)
    }
}

/// P(X > k).
fn sf(k: i64, n: u64) -> f64 {
    if k < 0 {
        return 1.0;
    }
    let k = k as u64;
    if k >= n {
        return 0.0;
    }
    if 2 * (k + 1) >= n {
        (k + 1..=n).map(|j| pmf(j, n)).sum()
    } else {
        1.0 - cdf(k as i64, n)
    }
}

/// SciPy's `_binary_search_for_binom_tst`: i in [lo, hi] with a(i) <= d < a(i+1).
fn binary_search(a: impl Fn(i64) -> f64, d: f64, mut lo: i64, mut hi: i64) -> i64 {
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let midval = a(mid);
        if midval < d {
            lo = mid + 1;
        } else if midval > d {
            hi = mid - 1;
        } else {
            return mid;
        }
    }
    if a(lo) <= d {
        lo
    } else {
        lo - 1
    }
}

/// Two-sided exact binomial test of k successes in n trials against p = 0.5, with the
/// Clopper-Pearson interval at `confidence` (e.g. 0.95). Follows SciPy's algorithm step for
/// step: the other tail is found as the outcomes whose probability is ≤ pmf(k)·(1 + 1e-7).
pub fn binomtest(k: u64, n: u64, confidence: f64) -> Result<BinomTest, StatsError> {
    if n == 0 {
        return Err(StatsError::TooFew {
            what: "binomial test trials",
            min: 1,
            got: 0,
        });
    }
    if k > n {
        return Err(StatsError::Invalid {
            what: "binomial test",
            detail: format!("successes k = {k} exceed trials n = {n}"),
        });
    }
    if !(confidence > 0.0 && confidence < 1.0) {
        return Err(StatsError::Invalid {
            what: "confidence level",
            detail: format!("{confidence} is not in (0, 1); use e.g. 0.95"),
        });
    }
    let p = 0.5f64;
    let nf = n as f64;
    let d = pmf(k, n);
    let rerr = 1.0 + 1e-7;
    let pn = p * nf;
    let pvalue = if (k as f64) == pn {
        1.0
    } else if (k as f64) < pn {
        let ix = binary_search(|x| -pmf(x as u64, n), -d * rerr, pn.ceil() as i64, n as i64);
        let y = n as i64 - ix + i64::from(d * rerr == pmf(ix as u64, n));
        cdf(k as i64, n) + sf(n as i64 - y, n)
    } else {
        let ix = binary_search(|x| pmf(x as u64, n), d * rerr, 0, pn.floor() as i64);
        let y = ix + 1;
        cdf(y - 1, n) + sf(k as i64 - 1, n)
    };
    let pvalue = pvalue.min(1.0);
    let alpha = (1.0 - confidence) / 2.0;
    let (kf, nk) = (k as f64, (n - k) as f64);
    // P(X >= k | p) = I_p(k, n-k+1) rises with p; P(X <= k | p) = 1 - I_p(k+1, n-k) falls.
    let ci_low = if k == 0 {
        0.0
    } else {
        bisect_increasing(|q| betainc(kf, nk + 1.0, q) - alpha)
    };
    let ci_high = if k == n {
        1.0
    } else {
        bisect_increasing(|q| betainc(kf + 1.0, nk, q) - (1.0 - alpha))
    };
    Ok(BinomTest {
        k,
        n,
        proportion: kf / nf,
        pvalue,
        ci_low,
        ci_high,
    })
}

/// Sign test on paired differences: wins (d > 0) against losses (d < 0), ties (d = 0) dropped.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct SignTest {
    pub wins: u64,
    pub losses: u64,
    pub ties: u64,
    /// wins / (wins + losses), with its binomial test and Clopper-Pearson interval; `None`
    /// when every pair is a tie.
    pub test: Option<BinomTest>,
}

pub fn sign_test(d: &[f64], confidence: f64) -> Result<SignTest, StatsError> {
    super::check_finite("sign test differences", d)?;
    let wins = d.iter().filter(|&&x| x > 0.0).count() as u64;
    let losses = d.iter().filter(|&&x| x < 0.0).count() as u64;
    let ties = d.len() as u64 - wins - losses;
    let test = if wins + losses == 0 {
        None
    } else {
        Some(binomtest(wins, wins + losses, confidence)?)
    };
    Ok(SignTest {
        wins,
        losses,
        ties,
        test,
    })
}
