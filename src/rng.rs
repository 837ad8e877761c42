//! The product's random number generator: a bit-for-bit port of PyTorch's CPU generator, so that
//! `--seed S` gives the same initial latents (and the same ancestral/stochastic sampler noise) as
//! diffusers run with `generator=torch.Generator().manual_seed(S)` on an x86-64 CPU.
//!
//! # What is reproduced
//!
//! * **Engine** — `at::mt19937` (`ATen/core/MT19937RNGEngine.h`): the reference 32-bit MT19937
//!   with Knuth's seeding. `manual_seed(s)` keeps only the low 32 bits of the 64-bit seed
//!   (`init_with_uint32`: `state[0] = seed & 0xffffffff`), so seeds `s` and `s + 2^32` are the
//!   same stream. Seeding also clears the generator's cached normal sample.
//! * **Uniforms** — `uniform_real_distribution<float>(0, 1)` is `(random() & (2^24 - 1)) * 2^-24`
//!   (one 32-bit draw); the `double` version uses `random64() = (hi << 32) | lo` (two draws) masked
//!   to 53 bits and scaled by `2^-53`.
//! * **`torch.randn` of a contiguous f32 tensor with `numel >= 16`** (`normal_fill`,
//!   `ATen/native/cpu/DistributionTemplates.h`): first *all* `numel` uniforms are drawn, then
//!   every full block of 16 is converted in place by Box-Muller over the lane pairs `(j, j + 8)`:
//!   `u1 = 1 - data[j]`, `u2 = data[j + 8]`, `r = sqrt(-2 ln u1)`, `theta = 2 pi u2`,
//!   `data[j] = r cos theta`, `data[j + 8] = r sin theta`. When `numel % 16 != 0` the **last 16**
//!   values are redrawn from 16 fresh uniforms and transformed again (they overlap the previous
//!   block, so a `randn(n)` is not a prefix of a `randn(n + 1)`).
//!   On x86-64 torch builds this block transform with AVX2 (`NormalFill16<float>`), whose `log`
//!   and `sincos` are the Cephes single-precision polynomials of `avx_mathfun.h`, not libm, and
//!   GCC contracts their multiply-adds into FMAs (`-ffp-contract=fast`). Both the polynomials and
//!   the exact contraction pattern are reproduced below (`log256_lane`, `sincos256_lane`);
//!   with libm functions or without the FMAs about one value in a few hundred differs in the last
//!   bit. (Torch builds without AVX2 — e.g. aarch64 — use libm `logf`/`sinf`/`cosf` instead; this
//!   module reproduces the x86-64 AVX2 build, which is what diffusers users run on a PC.)
//! * **`torch.randn` with `numel < 16`** (or non-contiguous): each element comes from
//!   `at::normal_distribution<double>`: if the generator holds a cached sample it is returned
//!   (and the cache cleared); otherwise two double uniforms `u1, u2` are drawn,
//!   `r = sqrt(-2 log1p(-u2))`, `theta = 2 pi u1`, `r sin theta` is **cached in the generator**
//!   and `r cos theta` returned, then narrowed to f32. The cache survives across `randn` calls (a
//!   `randn(3)` leaves one cached value that the next small `randn` consumes first); the
//!   `numel >= 16` path neither reads nor writes it. This path uses the platform's double
//!   `log1p`/`sin`/`cos`, exactly as torch does.
//!
//! One [`NoiseSource::fill_normal`] call is one `torch.randn(shape)` call of `out.len()` elements.

use crate::scheduler::NoiseSource;

const MT_N: usize = 624;
const MT_M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// PyTorch's CPU generator (`CPUGeneratorImpl`): an `at::mt19937` engine plus the cached second
/// Box-Muller sample of `normal_distribution<double>`. See the [module docs](self) for the exact
/// algorithms.
#[derive(Clone)]
pub struct TorchRng {
    state: [u32; MT_N],
    /// Draws left before the state must be regenerated (`left_` in ATen; starts at 1 so the first
    /// draw after seeding regenerates).
    left: u32,
    next: usize,
    /// `next_double_normal_sample_` of the generator.
    cached_normal: Option<f64>,
    seed: u64,
}

impl std::fmt::Debug for TorchRng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchRng")
            .field("seed", &self.seed)
            .field("left", &self.left)
            .field("cached_normal", &self.cached_normal)
            .finish_non_exhaustive()
    }
}

impl TorchRng {
    /// Equivalent of `torch.Generator().manual_seed(seed)`. Only the low 32 bits of `seed` affect
    /// the stream (torch truncates the same way); a negative Python seed `-k` corresponds to
    /// `(-k as i64) as u64`.
    pub fn new(seed: u64) -> Self {
        let mut state = [0u32; MT_N];
        state[0] = (seed & 0xffff_ffff) as u32;
        for j in 1..MT_N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        TorchRng {
            state,
            left: 1,
            next: 0,
            cached_normal: None,
            seed,
        }
    }

    /// The seed this generator was created with (as given, before truncation).
    pub fn initial_seed(&self) -> u64 {
        self.seed
    }

    fn next_state(&mut self) {
        let s = &mut self.state;
        let twist = |u: u32, v: u32| -> u32 {
            (((u & UPPER_MASK) | (v & LOWER_MASK)) >> 1) ^ if v & 1 != 0 { MATRIX_A } else { 0 }
        };
        for i in 0..MT_N - MT_M {
            s[i] = s[i + MT_M] ^ twist(s[i], s[i + 1]);
        }
        for i in MT_N - MT_M..MT_N - 1 {
            s[i] = s[i + MT_M - MT_N] ^ twist(s[i], s[i + 1]);
        }
        s[MT_N - 1] = s[MT_M - 1] ^ twist(s[MT_N - 1], s[0]);
        self.left = MT_N as u32;
        self.next = 0;
    }

    /// One 32-bit draw (`CPUGeneratorImpl::random()`).
    pub fn random_u32(&mut self) -> u32 {
        self.left -= 1;
        if self.left == 0 {
            self.next_state();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// Two draws combined as `(first << 32) | second` (`CPUGeneratorImpl::random64()`).
    pub fn random_u64(&mut self) -> u64 {
        let hi = self.random_u32() as u64;
        let lo = self.random_u32() as u64;
        (hi << 32) | lo
    }

    /// `uniform_real_distribution<float>(0, 1)`: 24 random bits scaled into `[0, 1)`.
    pub fn uniform_f32(&mut self) -> f32 {
        (self.random_u32() & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
    }

    /// `uniform_real_distribution<double>(0, 1)`: 53 random bits of `random64()` scaled into `[0, 1)`.
    pub fn uniform_f64(&mut self) -> f64 {
        (self.random_u64() & ((1u64 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// One sample of `at::normal_distribution<double>(0, 1)` (the scalar path), using and
    /// refilling the generator's cached second sample.
    fn normal_f64(&mut self) -> f64 {
        if let Some(v) = self.cached_normal.take() {
            return v;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.cached_normal = Some(r * theta.sin());
        r * theta.cos()
    }

    /// `torch.randn(n)` (any shape with `n` elements), f32, on this generator.
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; n];
        self.fill_randn(&mut out);
        out
    }

    /// Fills `out` exactly as one `torch.randn` call of `out.len()` f32 elements would.
    pub fn fill_randn(&mut self, out: &mut [f32]) {
        let n = out.len();
        if n < 16 {
            for v in out.iter_mut() {
                *v = self.normal_f64() as f32;
            }
            return;
        }
        for v in out.iter_mut() {
            *v = self.uniform_f32();
        }
        for block in out.chunks_exact_mut(16) {
            normal_fill_16(block);
        }
        if !n.is_multiple_of(16) {
            let tail = &mut out[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            normal_fill_16(tail);
        }
    }
}

impl NoiseSource for TorchRng {
    fn fill_normal(&mut self, out: &mut [f32]) {
        self.fill_randn(out);
    }
}

/// `NormalFill16<float>` (AVX2) with mean 0 and std 1: Box-Muller over the lane pairs `(j, j+8)`.
/// The final `fmadd(n, std, mean)` with std 1 and mean 0 is exact, so it is omitted.
fn normal_fill_16(data: &mut [f32]) {
    debug_assert_eq!(data.len(), 16);
    // `_mm256_set1_ps(2.0f * c10::pi<double>)`: 2*pi rounded once to f32 (== 2 * f32 pi).
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    for j in 0..8 {
        let u1 = 1.0f32 - data[j];
        let u2 = data[j + 8];
        let radius = (-2.0f32 * log256_lane(u1)).sqrt();
        let theta = two_pi * u2;
        let (sin, cos) = sincos256_lane(theta);
        data[j] = radius * cos;
        data[j + 8] = radius * sin;
    }
}

/// One lane of `log256_ps` from `avx_mathfun.h` (Cephes `logf`), with the FMAs GCC forms when it
/// compiles torch: each `mul` feeding an `add`/`sub` becomes one fused operation, and where both
/// operands of an add are products (`y*z + e*q1`) the *first* one is fused.
#[allow(clippy::excessive_precision, clippy::approx_constant)] // Cephes' literals, verbatim
fn log256_lane(x_in: f32) -> f32 {
    const SQRTHF: f32 = 0.707_106_781_186_547_524;
    const P: [f32; 9] = [
        7.037_683_629_2E-2,
        -1.151_461_031_0E-1,
        1.167_699_874_0E-1,
        -1.242_014_084_6E-1,
        1.424_932_278_7E-1,
        -1.666_805_766_5E-1,
        2.000_071_476_5E-1,
        -2.499_999_399_3E-1,
        3.333_333_117_4E-1,
    ];
    const Q1: f32 = -2.121_944_40e-4;
    const Q2: f32 = 0.693_359_375;

    let invalid = x_in <= 0.0 || x_in.is_nan();
    // cut off denormals (`_mm256_max_ps(x, min_norm_pos)` returns the second operand for NaN)
    let x = if x_in > f32::MIN_POSITIVE {
        x_in
    } else {
        f32::MIN_POSITIVE
    };
    let bits = x.to_bits();
    let exponent = (bits >> 23) as i32 - 0x7f;
    // keep the mantissa, force the exponent so that x is in [0.5, 1)
    let mut x = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    let mut e = exponent as f32 + 1.0;
    let below = x < SQRTHF;
    let tmp = if below { x } else { 0.0 };
    x -= 1.0;
    if below {
        e -= 1.0;
    }
    x += tmp;

    let z = x * x;
    let mut y = P[0];
    for &p in &P[1..] {
        y = y.mul_add(x, p);
    }
    y *= x;
    y = y.mul_add(z, e * Q1);
    y = (-z).mul_add(0.5, y);
    x += y;
    x = e.mul_add(Q2, x);
    if invalid {
        f32::NAN
    } else {
        x
    }
}

/// One lane of `sincos256_ps` from `avx_mathfun.h` (Cephes `sinf`/`cosf`), returning
/// `(sin, cos)`, with GCC's FMA contraction (see [`log256_lane`]).
#[allow(clippy::excessive_precision)] // Cephes' literals, verbatim
fn sincos256_lane(x_in: f32) -> (f32, f32) {
    const FOPI: f32 = 1.273_239_544_735_16; // 4 / pi
    const DP1: f32 = -0.785_156_25;
    const DP2: f32 = -2.418_756_484_985_351_562_5e-4;
    const DP3: f32 = -3.774_894_977_445_941_08e-8;
    const SINCOF: [f32; 3] = [-1.951_529_589_1E-4, 8.332_160_873_6E-3, -1.666_665_461_1E-1];
    const COSCOF: [f32; 3] = [
        2.443_315_711_809_948E-5,
        -1.388_731_625_493_765E-3,
        4.166_664_568_298_827E-2,
    ];

    let mut sign_sin = x_in.to_bits() & 0x8000_0000;
    let mut x = f32::from_bits(x_in.to_bits() & 0x7fff_ffff);

    // `_mm256_cvttps_epi32` truncates toward zero (0x80000000 for out-of-range values)
    let scaled = x * FOPI;
    let mut j: i32 = if scaled < 2_147_483_648.0 {
        scaled as i32
    } else {
        i32::MIN
    };
    j = j.wrapping_add(1) & !1;
    let y = j as f32;

    let swap_sign_sin = ((j & 4) as u32) << 29;
    let use_sin_poly_for_sin = (j & 2) == 0;
    let sign_cos = ((!(j.wrapping_sub(2)) & 4) as u32) << 29;
    sign_sin ^= swap_sign_sin;

    // extended precision modular arithmetic: x = ((x - y*DP1) - y*DP2) - y*DP3
    x = y.mul_add(DP1, x);
    x = y.mul_add(DP2, x);
    x = y.mul_add(DP3, x);

    let z = x * x;
    // cosine polynomial on [0, pi/4]
    let mut yc = COSCOF[0].mul_add(z, COSCOF[1]);
    yc = yc.mul_add(z, COSCOF[2]);
    yc *= z;
    yc = yc.mul_add(z, -(z * 0.5));
    yc += 1.0;
    // sine polynomial on [0, pi/4]
    let mut ys = SINCOF[0].mul_add(z, SINCOF[1]);
    ys = ys.mul_add(z, SINCOF[2]);
    ys *= z;
    ys = ys.mul_add(x, x);

    let (s, c) = if use_sin_poly_for_sin {
        (ys, yc)
    } else {
        (yc, ys)
    };
    (
        f32::from_bits(s.to_bits() ^ sign_sin),
        f32::from_bits(c.to_bits() ^ sign_cos),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_reference_stream() {
        // std::mt19937 with the default seed 5489: the 10000th output is 4123659995.
        let mut g = TorchRng::new(5489);
        let mut v = 0;
        for _ in 0..10_000 {
            v = g.random_u32();
        }
        assert_eq!(v, 4_123_659_995);
    }

    #[test]
    fn seed_is_truncated_to_32_bits() {
        let mut a = TorchRng::new(7);
        let mut b = TorchRng::new(7 + (1u64 << 32));
        assert_eq!(a.randn(40), b.randn(40));
    }

    #[test]
    fn polynomials_are_close_to_libm() {
        for i in 1..1000 {
            let u = i as f32 / 1000.0;
            assert!((log256_lane(u) - u.ln()).abs() < 1e-6, "log {u}");
            let t = u * 6.3;
            let (s, c) = sincos256_lane(t);
            assert!(
                (s - t.sin()).abs() < 1e-6 && (c - t.cos()).abs() < 1e-6,
                "sincos {t}"
            );
        }
    }
}
