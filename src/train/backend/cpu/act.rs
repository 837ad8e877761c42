//! Elementwise activations: SiLU and GEGLU (exact GELU), forward and backward.

use super::CHUNK;
use rayon::prelude::*;

#[inline]
pub(super) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
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

/// Exact GELU `x·Φ(x)`, `Φ(x) = (1 + erf(x/√2))/2`, evaluated in f64 and rounded: PyTorch's
/// default (`approximate="none"`), which diffusers' GEGLU uses.
#[inline]
fn gelu1(x: f32) -> f32 {
    let x = x as f64;
    (0.5 * x * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2))) as f32
}

/// d/dx [x·Φ(x)] = Φ(x) + x·φ(x), `φ(x) = exp(−x²/2)/√(2π)`.
#[inline]
fn gelu_grad1(x: f32) -> f32 {
    let x = x as f64;
    let cdf = 0.5 * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2));
    let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
    (cdf + x * pdf) as f32
}

pub(super) fn silu(x: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, &x)| *y = silu1(x)));
    y
}

pub(super) fn silu_backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), dy.len(), "silu_backward: length mismatch");
    let mut dx = vec![0f32; x.len()];
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(dx, (x, dy))| {
            for ((o, &x), &g) in dx.iter_mut().zip(x).zip(dy) {
                *o = g * silu_grad1(x);
            }
        });
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
            for ((y, &a), &g) in y.iter_mut().zip(a).zip(g) {
                *y = a * gelu1(g);
            }
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
            for i in 0..inner {
                da[i] = dy[i] * gelu1(g[i]);
                dg[i] = dy[i] * a[i] * gelu_grad1(g[i]);
            }
        });
    dh
}
