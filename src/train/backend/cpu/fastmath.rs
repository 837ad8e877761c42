//! `exp` and `erf` for f32 written so that loops over slices vectorise.
//!
//! Why: a profile of one Diffusion-DPO step on the shipped world bundle (16 pairs, 2 threads) spent
//! about a quarter of its time in scalar `expf` and f64 `erf` calls — the attention softmax at
//! 16x16 latents alone takes ~17 M exponentials per forward — against ~30 % in the matrix
//! products. Both functions here are branch-free (clamp, round by the 1.5·2²³ trick, polynomial,
//! exponent bits), so the compiler turns `for x in row { *x = exp(*x) }` into SIMD code; libm's
//! calls cannot be. Accuracy: `exp` is Cephes' `expf` polynomial (relative error ≤ 2e-7 on
//! [-87, 88], tested below); `erf` is Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7; the
//! formula PyTorch's vectorised CPU `erf` uses) with the Maclaurin series near 0 (≤ 3.5e-7 absolute
//! in f32, tested), so GELU stays within the trainer's 1e-5 goldens.

/// Arguments are clamped to this range: `exp(-87)` ≈ 1.6e-38 is the smallest normal result the
/// exponent trick can build, and `exp(88)` ≈ 1.7e38 the largest below `f32::MAX`. Below the range
/// the result is 1.6e-38 instead of 0 or a subnormal, which no caller (softmax weights, sigmoid)
/// can tell apart from 0.
const LO: f32 = -87.0;
const HI: f32 = 88.0;
/// Adding and subtracting 1.5·2²³ rounds an f32 of magnitude < 2²² to the nearest integer.
const ROUND: f32 = 12_582_912.0;

/// `e^x` (NaN stays NaN).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(LO, HI);
    // x = n·ln2 + r with |r| ≤ ln2/2; ln2 split in two so that n·C1 is exact.
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let z = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * z + r + 1.0;
    // t's low mantissa bits hold n + 2²² (two's complement), so its bits minus ROUND's are n.
    let k = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    y * f32::from_bits((k.wrapping_add(127) << 23) as u32)
}

/// The error function: its Maclaurin series below |x| = 0.5, where `1 − poly·e^{−x²}` would lose
/// the digits to cancellation, Abramowitz & Stegun 7.1.26 above. Both branches are computed and
/// one selected, which keeps the loop branch-free.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152) * t + 1.421_413_8) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    let tail = 1.0 - poly * exp(-a * a);
    // 2/√π · (a − a³/3 + a⁵/10 − a⁷/42 + a⁹/216 − a¹¹/1320); the next term is < 2e-8 at 0.5.
    let z = a * a;
    let series = a
        * (std::f32::consts::FRAC_2_SQRT_PI
            + z * (-0.376_126_4
                + z * (0.112_837_92
                    + z * (-0.026_866_17 + z * (5.223_977_6e-3 + z * -8.548_327e-4)))));
    let y = if a < 0.5 { series } else { tail };
    y.copysign(x)
}

/// Defines `pub fn $name` that runs the `#[inline(always)]` function `$body` compiled for AVX2
/// where the CPU has it, and as built (SSE2 on x86-64) elsewhere.
///
/// Why: the crate targets the baseline x86-64, so the loops here vectorise 4-wide; inlined into a
/// function with AVX2 enabled they run 8-wide. The arithmetic is the same IEEE operations in the
/// same order either way (Rust never contracts into FMA), so results do not depend on the CPU.
macro_rules! simd_dispatch {
    ($(#[$m:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => $body:ident) => {
        $(#[$m])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked just above).
                    return unsafe { wide($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

pub(super) use simd_dispatch;

/// Sum of a slice over eight fixed f32 lanes, then in f64: vectorisable and the same result on
/// every CPU (softmax rows of ≤ a few thousand values in (0, 1]).
#[inline(always)]
fn lane_sum(x: &[f32]) -> f64 {
    let mut lanes = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += *v;
        }
    }
    lanes.iter().chain(rest).map(|&v| f64::from(v)).sum()
}

#[inline(always)]
fn softmax_rows_body(p: &mut [f32], m: usize, lse: &mut [f32]) {
    for (row, l) in p.chunks_mut(m).zip(lse.iter_mut()) {
        let mx = row.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
        row.iter_mut().for_each(|x| *x = exp(*x - mx));
        let sum = lane_sum(row);
        let inv = (1.0 / sum) as f32;
        row.iter_mut().for_each(|x| *x *= inv);
        *l = mx + (sum as f32).ln();
    }
}

simd_dispatch! {
    /// Softmax of each `m`-long row of `p` in place; `lse[i]` = the log-sum-exp of row `i`.
    pub fn softmax_rows(p: &mut [f32], m: usize, lse: &mut [f32]) => softmax_rows_body
}

#[inline(always)]
fn exp_rows_body(p: &mut [f32], m: usize, shift: &[f32]) {
    for (row, &s) in p.chunks_mut(m).zip(shift) {
        row.iter_mut().for_each(|x| *x = exp(*x - s));
    }
}

simd_dispatch! {
    /// `p[i][j] = exp(p[i][j] − shift[i])` for each `m`-long row `i`.
    pub fn exp_rows(p: &mut [f32], m: usize, shift: &[f32]) => exp_rows_body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_2e_7_relative_on_its_range() {
        let mut worst = 0f64;
        let n = 2_000_000;
        for i in 0..=n {
            let x = LO + (HI - LO) * i as f32 / n as f32;
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
        }
        assert!(worst <= 2e-7, "exp: worst relative error {worst:.3e}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(-1e4) > 0.0 && exp(-1e4) < 2e-38);
        assert!(exp(1e4).is_finite() && exp(1e4) > 1e38);
    }

    #[test]
    fn row_kernels_match_the_scalar_formulas_on_any_length() {
        for m in [1, 7, 8, 9, 100, 256] {
            let src: Vec<f32> = (0..3 * m).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
            let (mut p, mut lse) = (src.clone(), vec![0f32; 3]);
            softmax_rows(&mut p, m, &mut lse);
            let mut e = src.clone();
            exp_rows(&mut e, m, &lse);
            for i in 0..3 {
                let row = &src[i * m..(i + 1) * m];
                let mx = row.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
                let z: f64 = row
                    .iter()
                    .map(|&x| (f64::from(x) - f64::from(mx)).exp())
                    .sum();
                let want_lse = f64::from(mx) + z.ln();
                assert!((f64::from(lse[i]) - want_lse).abs() <= 1e-6 * want_lse.abs().max(1.0));
                for j in 0..m {
                    let want = (f64::from(src[i * m + j]) - want_lse).exp();
                    assert!(
                        (f64::from(p[i * m + j]) - want).abs() <= 1e-6,
                        "m {m} softmax"
                    );
                    assert!(
                        (f64::from(e[i * m + j]) - want).abs() <= 1e-6,
                        "m {m} exp_rows"
                    );
                }
            }
        }
    }

    #[test]
    fn erf_is_within_3_5e_7_absolute() {
        let mut worst = 0f64;
        let n = 400_000;
        for i in 0..=n {
            let x = -6.0 + 12.0 * i as f32 / n as f32;
            worst = worst.max((erf(x) as f64 - libm::erf(x as f64)).abs());
        }
        assert!(worst <= 3.5e-7, "erf: worst absolute error {worst:.3e}");
        assert_eq!(erf(0.0), 0.0);
        assert!(erf(f32::NAN).is_nan());
    }
}
