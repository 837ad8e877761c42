//! Group and layer normalisation, forward and input-gradient. Statistics are accumulated in f64:
//! SD-1.5's 64×64 groups hold 40 960 values, where an f32 running sum would lose digits that the
//! 1e-4 parity budget cannot spare.

use super::super::GroupNormDims;
use super::act::{affine_silu_slice, silu_grad1};
use rayon::prelude::*;

/// Mean and 1/σ of one block of values (two passes: exact for any offset).
fn moments(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len().max(1) as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x
        .iter()
        .map(|&v| {
            let d = v as f64 - mean;
            d * d
        })
        .sum::<f64>()
        / n;
    (mean as f32, (1.0 / (var + eps as f64).sqrt()) as f32)
}

/// The shared backward of both norms for one block of `len` values: given the block's `g` (the
/// upstream gradient already multiplied by γ and, when fused, the SiLU derivative) and
/// `x̂ = (x − μ)/σ`, `dx = (1/σ)·(g − mean(g) − x̂·mean(g·x̂))`. This is the derivative of
/// `x̂(x)` contracted with g: the mean subtraction removes the component along the all-ones
/// direction, the second term the component along x̂ (the variance's dependence on x).
fn norm_backward_block(
    dx: &mut [f32],
    x: &[f32],
    mean: f32,
    rstd: f32,
    g_of: impl Fn(usize, f32) -> f32,
) {
    let len = x.len().max(1) as f64;
    let (mut sg, mut sgx) = (0f64, 0f64);
    for (i, (&xv, d)) in x.iter().zip(dx.iter_mut()).enumerate() {
        let xh = (xv - mean) * rstd;
        let g = g_of(i, xh);
        *d = g; // stash g; finalised below
        sg += g as f64;
        sgx += (g * xh) as f64;
    }
    let (mg, mgx) = ((sg / len) as f32, (sgx / len) as f32);
    for (&xv, d) in x.iter().zip(dx.iter_mut()) {
        let xh = (xv - mean) * rstd;
        *d = rstd * (*d - mg - xh * mgx);
    }
}

pub(super) fn group_norm(
    x: &[f32],
    d: &GroupNormDims,
    gamma: &[f32],
    beta: &[f32],
    silu: bool,
) -> (Vec<f32>, Vec<f32>) {
    check(x.len(), gamma, beta, d);
    let cg = d.c / d.groups;
    let block = cg * d.hw;
    let mut y = vec![0f32; x.len()];
    let mut stats = vec![0f32; d.n * d.groups * 2];
    if block == 0 {
        return (y, stats);
    }
    y.par_chunks_mut(block)
        .zip(x.par_chunks(block))
        .zip(stats.par_chunks_mut(2))
        .enumerate()
        .for_each(|(bi, ((y, x), st))| {
            let (mean, rstd) = moments(x, d.eps);
            st[0] = mean;
            st[1] = rstd;
            let c0 = (bi % d.groups) * cg;
            for (ci, (y, x)) in y.chunks_mut(d.hw).zip(x.chunks(d.hw)).enumerate() {
                affine_silu_slice(y, x, mean, rstd, gamma[c0 + ci], beta[c0 + ci], silu);
            }
        });
    (y, stats)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn group_norm_backward(
    x: &[f32],
    stats: &[f32],
    gamma: &[f32],
    beta: &[f32],
    dy: &[f32],
    d: &GroupNormDims,
    silu: bool,
) -> Vec<f32> {
    check(x.len(), gamma, beta, d);
    assert_eq!(dy.len(), x.len(), "group_norm_backward: dy length");
    assert_eq!(
        stats.len(),
        d.n * d.groups * 2,
        "group_norm_backward: stats"
    );
    let cg = d.c / d.groups;
    let block = cg * d.hw;
    let mut dx = vec![0f32; x.len()];
    if block == 0 {
        return dx;
    }
    dx.par_chunks_mut(block)
        .zip(x.par_chunks(block).zip(dy.par_chunks(block)))
        .zip(stats.par_chunks(2))
        .enumerate()
        .for_each(|(bi, ((dx, (x, dy)), st))| {
            let c0 = (bi % d.groups) * cg;
            norm_backward_block(dx, x, st[0], st[1], |i, xh| {
                let c = c0 + i / d.hw;
                let g = if silu {
                    dy[i] * silu_grad1(xh * gamma[c] + beta[c])
                } else {
                    dy[i]
                };
                g * gamma[c]
            });
        });
    dx
}

fn check(len: usize, gamma: &[f32], beta: &[f32], d: &GroupNormDims) {
    assert!(
        d.groups > 0 && d.c.is_multiple_of(d.groups),
        "group_norm: {} channels in {} groups",
        d.c,
        d.groups
    );
    assert_eq!(len, d.n * d.c * d.hw, "group_norm: x length");
    assert_eq!(gamma.len(), d.c, "group_norm: gamma length");
    assert_eq!(beta.len(), d.c, "group_norm: beta length");
}

/// Rows per rayon task for layer norm (rows are short: 320..1280 values).
fn row_chunk(dim: usize) -> usize {
    (super::CHUNK / dim.max(1)).max(1)
}

pub(super) fn layer_norm(
    x: &[f32],
    rows: usize,
    dim: usize,
    eps: f32,
    gamma: &[f32],
    beta: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(x.len(), rows * dim, "layer_norm: x length");
    assert_eq!(gamma.len(), dim, "layer_norm: gamma");
    assert_eq!(beta.len(), dim, "layer_norm: beta");
    let mut y = vec![0f32; x.len()];
    let mut stats = vec![0f32; rows * 2];
    if dim == 0 {
        return (y, stats);
    }
    let rc = row_chunk(dim);
    y.par_chunks_mut(rc * dim)
        .zip(x.par_chunks(rc * dim))
        .zip(stats.par_chunks_mut(rc * 2))
        .for_each(|((y, x), st)| {
            for ((y, x), st) in y.chunks_mut(dim).zip(x.chunks(dim)).zip(st.chunks_mut(2)) {
                let (mean, rstd) = moments(x, eps);
                st[0] = mean;
                st[1] = rstd;
                for (((y, &x), &ga), &be) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
                    *y = (x - mean) * rstd * ga + be;
                }
            }
        });
    (y, stats)
}

pub(super) fn layer_norm_backward(
    x: &[f32],
    stats: &[f32],
    gamma: &[f32],
    dy: &[f32],
    rows: usize,
    dim: usize,
) -> Vec<f32> {
    assert_eq!(x.len(), rows * dim, "layer_norm_backward: x length");
    assert_eq!(dy.len(), x.len(), "layer_norm_backward: dy length");
    assert_eq!(stats.len(), rows * 2, "layer_norm_backward: stats");
    let mut dx = vec![0f32; x.len()];
    if dim == 0 {
        return dx;
    }
    let rc = row_chunk(dim);
    dx.par_chunks_mut(rc * dim)
        .zip(x.par_chunks(rc * dim).zip(dy.par_chunks(rc * dim)))
        .zip(stats.par_chunks(rc * 2))
        .for_each(|((dx, (x, dy)), st)| {
            for ((dx, (x, dy)), st) in dx
                .chunks_mut(dim)
                .zip(x.chunks(dim).zip(dy.chunks(dim)))
                .zip(st.chunks(2))
            {
                norm_backward_block(dx, x, st[0], st[1], |i, _| dy[i] * gamma[i]);
            }
        });
    dx
}
