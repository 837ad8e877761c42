//! Paired statistics for comparing two arms of an evaluation, each equal to its SciPy
//! counterpart (scipy 1.17, checked by `tests/stats.rs` against goldens from
//! `tools/make_stats_goldens.py` to 1e-9):
//!
//! - [`wilcoxon`]: `scipy.stats.wilcoxon(d)` with its defaults (zero_method="wilcox",
//!   correction=False, method="auto": exact null distribution for n ≤ 50 without ties or zeros,
//!   exact sign-flip permutation test for n ≤ 13 with ties or zeros, normal approximation
//!   otherwise);
//! - [`binomtest`]: `scipy.stats.binomtest(k, n, 0.5)` two-sided p-value and its Clopper-Pearson
//!   interval (`proportion_ci(method="exact")`);
//! - [`sign_test`]: wins vs losses (ties dropped) through [`binomtest`];
//! - [`bootstrap_mean_ci`]: `scipy.stats.bootstrap((d,), np.mean, rng=np.random.default_rng(seed))`
//!   — numpy's PCG64 / SeedSequence / bounded `integers` reproduced bit for bit ([`pcg64`]) and
//!   numpy's pairwise summation for the means, so the resamples and their ordering are the same;
//!   BCa (SciPy's default) or percentile.
//!
//! Everything is f64. Why re-implement instead of shelling out: the engine is embeddable and
//! CI has no Python.

mod binom;
mod bootstrap;
pub mod pcg64;
mod special;
mod wilcoxon;

pub use binom::{binomtest, sign_test, BinomTest, SignTest};
pub use bootstrap::{bootstrap_mean_ci, numpy_mean, BootstrapCi, CiMethod};
pub use special::{ndtr, ndtri};
pub use wilcoxon::{wilcoxon, Wilcoxon, WilcoxonMethod};

/// Errors of the statistics layer: each names the input and what would make it valid.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StatsError {
    #[error("{what}: needs at least {min} values, got {got}")]
    TooFew {
        what: &'static str,
        min: usize,
        got: usize,
    },
    #[error("{what}: value {index} is not finite ({value}); drop NaN/inf scores before testing")]
    NotFinite {
        what: &'static str,
        index: usize,
        value: f64,
    },
    #[error("{what}: {detail}")]
    Invalid { what: &'static str, detail: String },
}

pub(crate) fn check_finite(what: &'static str, x: &[f64]) -> Result<(), StatsError> {
    for (index, &value) in x.iter().enumerate() {
        if !value.is_finite() {
            return Err(StatsError::NotFinite { what, index, value });
        }
    }
    Ok(())
}
