//! Elementwise activations: SiLU and GEGLU (exact GELU), forward and backward.

use super::fastmath::{erf, exp, simd_dispatch};
use super::CHUNK;
use rayon::prelude::*;

#[inline]
pub(super) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[inline]
pub(super) fn silu1(x: f32) -> f32 {
    x * sigmoid(x)
}

/// d/dx [x·σ(x)] = σ(x) + x·σ(x)·(1 − σ(x)).
#[inline]
pub(super) fn silu_grad1(x: f32) -> f32 {
    let s = sigmoid(x);
    s * (1.0 + x * (1.0 - s))
}

/// Exact GELU `x·Φ(x)`, `Φ(x) = (1 + erf(x/√2))/2`: PyTorch's default (`approximate="none"`),
/// which diffusers' GEGLU uses. The erf is `fastmath::erf` (Abramowitz & Stegun 7.1.26, as in
/// PyTorch's vectorised CPU kernel, with the Maclaurin series near 0), so the loop vectorises.
#[inline]
fn gelu1(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// d/dx [x·Φ(x)] = Φ(x) + x·φ(x), `φ(x) = exp(−x²/2)/√(2π)`.
#[inline]
fn gelu_grad1(x: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    cdf + x * INV_SQRT_2PI * exp(-0.5 * x * x)
}

#[inline(always)]
fn silu_body(y: &mut [f32], x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, &x)| *y = silu1(x));
}

#[inline(always)]
fn silu_grad_body(dx: &mut [f32], x: &[f32], dy: &[f32]) {
    for ((o, &x), &g) in dx.iter_mut().zip(x).zip(dy) {
        *o = g * silu_grad1(x);
    }
}

#[inline(always)]
fn geglu_body(y: &mut [f32], a: &[f32], g: &[f32]) {
    for ((y, &a), &g) in y.iter_mut().zip(a).zip(g) {
        *y = a * gelu1(g);
    }
}

#[inline(always)]
fn geglu_grad_body(da: &mut [f32], dg: &mut [f32], dy: &[f32], a: &[f32], g: &[f32]) {
    for i in 0..da.len() {
        da[i] = dy[i] * gelu1(g[i]);
        dg[i] = dy[i] * a[i] * gelu_grad1(g[i]);
    }
}

#[inline(always)]
fn affine_silu_body(y: &mut [f32], x: &[f32], mean: f32, rstd: f32, ga: f32, be: f32, silu: bool) {
    if silu {
        y.iter_mut()
            .zip(x)
            .for_each(|(y, &x)| *y = silu1((x - mean) * rstd * ga + be));
    } else {
        y.iter_mut()
            .zip(x)
            .for_each(|(y, &x)| *y = (x - mean) * rstd * ga + be);
    }
}

simd_dispatch! {
    /// One channel of a normalisation: `y = (x − mean)·rstd·ga + be`, then SiLU when `silu`.
    #[allow(clippy::too_many_arguments)]
    pub fn affine_silu_slice(y: &mut [f32], x: &[f32], mean: f32, rstd: f32, ga: f32, be: f32, silu: bool) => affine_silu_body
}

simd_dispatch! {
    /// `y = silu(x)` elementwise.
    pub fn silu_slice(y: &mut [f32], x: &[f32]) => silu_body
}

simd_dispatch! {
    /// `dx = dy · silu'(x)` elementwise.
    pub fn silu_grad_slice(dx: &mut [f32], x: &[f32], dy: &[f32]) => silu_grad_body
}

simd_dispatch! {
    /// `y = a · gelu(g)` elementwise (one GEGLU row).
    pub fn geglu_slice(y: &mut [f32], a: &[f32], g: &[f32]) => geglu_body
}

simd_dispatch! {
    /// GEGLU's backward for one row: `da = dy · gelu(g)`, `dg = dy · a · gelu'(g)`.
    pub fn geglu_grad_slice(da: &mut [f32], dg: &mut [f32], dy: &[f32], a: &[f32], g: &[f32]) => geglu_grad_body
}

pub(super) fn silu(x: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| silu_slice(y, x));
    y
}

pub(super) fn silu_backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), dy.len(), "silu_backward: length mismatch");
    let mut dx = vec![0f32; x.len()];
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(dx, (x, dy))| silu_grad_slice(dx, x, dy));
    dx
}

pub(super) fn geglu(h: &[f32], rows: usize, inner: usize) -> Vec<f32> {
    assert_eq!(h.len(), rows * 2 * inner, "geglu: length");
    let mut y = vec![0f32; rows * inner];
    if inner == 0 {
        return y;
    }
    y.par_chunks_mut(inner)
        .zip(h.par_chunks(2 * inner))
        .for_each(|(y, h)| {
            let (a, g) = h.split_at(inner);
            geglu_slice(y, a, g)
        });
    y
}

pub(super) fn geglu_backward(h: &[f32], dy: &[f32], rows: usize, inner: usize) -> Vec<f32> {
    assert_eq!(h.len(), rows * 2 * inner, "geglu_backward: h length");
    assert_eq!(dy.len(), rows * inner, "geglu_backward: dy length");
    let mut dh = vec![0f32; h.len()];
    if inner == 0 {
        return dh;
    }
    dh.par_chunks_mut(2 * inner)
        .zip(h.par_chunks(2 * inner).zip(dy.par_chunks(inner)))
        .for_each(|(dh, (h, dy))| {
            let (a, g) = h.split_at(inner);
            let (da, dg) = dh.split_at_mut(inner);
            geglu_grad_slice(da, dg, dy, a, g)
        });
    dh
}
