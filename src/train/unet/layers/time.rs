//! Timestep embedding: diffusers' `get_timestep_embedding` (sinusoids, one timestep per sample)
//! and `TimestepEmbedding` (linear, SiLU, linear).

use super::super::super::backend::Backend;
use super::super::super::lora::LoraGrads;
use super::super::super::tensor::Tensor;
use super::super::super::TrainError;
use super::super::weights::Loader;
use super::{Ctx, Linear, LinearCache};

/// `[len(t), dim]` sinusoids: `freq_i = exp(−ln(10000)·i/(dim/2 − freq_shift))`, `[sin(t·freq),
/// cos(t·freq)]` (swapped to `[cos, sin]` by `flip_sin_to_cos`), zero-padded when `dim` is odd.
/// Rounded to f32 at each step where PyTorch rounds, so that large timesteps (t·freq ≈ 1000, where
/// an ulp of the argument moves sin by 6e-5) match diffusers. Timesteps are data: no gradient.
pub fn sinusoidal_embedding(
    t: &[f32],
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f32,
) -> Vec<f32> {
    let half = dim / 2;
    let ln = -(10000f64.ln()) as f32;
    let denom = half as f32 - freq_shift;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (((ln * i as f32) / denom) as f64).exp() as f32)
        .collect();
    let mut out = vec![0f32; t.len() * dim];
    for (row, &tv) in out.chunks_mut(dim.max(1)).zip(t) {
        for (i, &f) in freqs.iter().enumerate() {
            let arg = (tv * f) as f64;
            let (s, c) = (arg.sin() as f32, arg.cos() as f32);
            let (first, second) = if flip_sin_to_cos { (c, s) } else { (s, c) };
            row[i] = first;
            row[half + i] = second;
        }
    }
    out
}

pub struct TimeEmbedding<B: Backend> {
    pub linear_1: Linear<B>,
    pub linear_2: Linear<B>,
    pub in_dim: usize,
    pub dim: usize,
}

/// The MLP's input (for LoRA on linear_1), its hidden pre-activation, and its output's cache.
pub struct TimeEmbeddingCache<B: Backend> {
    x: Tensor<B>,
    h: B::Buf,
    c1: LinearCache<B>,
    c2: LinearCache<B>,
}

impl<B: Backend> TimeEmbedding<B> {
    pub fn load(ld: &Loader<'_, B>, in_dim: usize, dim: usize) -> Result<Self, TrainError> {
        Ok(TimeEmbedding {
            linear_1: Linear::load(ld, "linear_1", in_dim, dim)?,
            linear_2: Linear::load(ld, "linear_2", dim, dim)?,
            in_dim,
            dim,
        })
    }

    /// `x [n, in_dim]` (sinusoids) → `[n, dim]`.
    pub fn forward(&self, cx: Ctx<'_, B>, x: &Tensor<B>) -> (Tensor<B>, TimeEmbeddingCache<B>) {
        let be = cx.be;
        let n = x.shape()[0];
        let (h, c1) = self.linear_1.forward(cx, x.buf(), n);
        let a = be.silu(&h);
        let (y, c2) = self.linear_2.forward(cx, &a, n);
        let cache = TimeEmbeddingCache {
            x: x.clone(),
            h,
            c1,
            c2,
        };
        (Tensor::new(be, y, &[n, self.dim]), cache)
    }

    /// LoRA gradients of both linears; the input gradient only when `want_dx` (the model never
    /// needs it: the sinusoids are not trained).
    pub fn backward(
        &self,
        cx: Ctx<'_, B>,
        c: &TimeEmbeddingCache<B>,
        dy: &B::Buf,
        want_dx: bool,
        grads: &mut LoraGrads<B>,
    ) -> Option<B::Buf> {
        let be = cx.be;
        let n = c.x.shape()[0];
        let a = c.c2.lora_active().then(|| be.silu(&c.h));
        let da = self
            .linear_2
            .backward(cx, a.as_ref(), &c.c2, dy, n, true, grads)
            .expect("dx requested");
        let dh = be.silu_backward(&c.h, &da);
        self.linear_1
            .backward(cx, Some(c.x.buf()), &c.c1, &dh, n, want_dx, grads)
    }
}
