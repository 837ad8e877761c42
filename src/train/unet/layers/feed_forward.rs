//! diffusers `FeedForward` with GEGLU: `net.0.proj` (dim → 2·inner), `a·gelu(g)`, `net.2`
//! (inner → dim). Inner width is 4·dim, as every SD UNet has it.

use super::super::super::backend::Backend;
use super::super::super::lora::LoraGrads;
use super::super::super::tensor::Tensor;
use super::super::super::TrainError;
use super::super::weights::Loader;
use super::{Ctx, Linear, LinearCache};

pub struct FeedForward<B: Backend> {
    pub proj: Linear<B>,
    pub out: Linear<B>,
    pub dim: usize,
    pub inner: usize,
}

/// Kept for backward: the projection `h = [a | g]` (GEGLU's backward needs both halves); the
/// input and the GEGLU output only when a LoRA on `net.0.proj` / `net.2` needs them.
pub struct FfCache<B: Backend> {
    x: Option<Tensor<B>>,
    h: B::Buf,
    act: Option<B::Buf>,
    cp: LinearCache<B>,
    co: LinearCache<B>,
    rows: usize,
}

impl<B: Backend> FeedForward<B> {
    pub fn load(ld: &Loader<'_, B>, dim: usize) -> Result<Self, TrainError> {
        let inner = 4 * dim;
        Ok(FeedForward {
            proj: Linear::load(ld, "net.0.proj", dim, 2 * inner)?,
            out: Linear::load(ld, "net.2", inner, dim)?,
            dim,
            inner,
        })
    }

    /// `x [rows, dim] → [rows, dim]`.
    pub fn forward(&self, cx: Ctx<'_, B>, x: &Tensor<B>) -> (B::Buf, FfCache<B>) {
        let rows = x.numel() / self.dim;
        let (h, cp) = self.proj.forward(cx, x.buf(), rows);
        let act = cx.be.geglu(&h, rows, self.inner);
        let (y, co) = self.out.forward(cx, &act, rows);
        let cache = FfCache {
            x: cp.lora_active().then(|| x.clone()),
            act: co.lora_active().then_some(act),
            h,
            cp,
            co,
            rows,
        };
        (y, cache)
    }

    /// `dx` for `dy [rows, dim]`: `net.2` backward, GEGLU backward (see
    /// [`Backend::geglu_backward`]), `net.0.proj` backward.
    pub fn backward(
        &self,
        cx: Ctx<'_, B>,
        cache: &FfCache<B>,
        dy: &B::Buf,
        grads: &mut LoraGrads<B>,
    ) -> B::Buf {
        let rows = cache.rows;
        let d_act = self
            .out
            .backward(cx, cache.act.as_ref(), &cache.co, dy, rows, true, grads)
            .expect("dx requested");
        let dh = cx.be.geglu_backward(&cache.h, &d_act, rows, self.inner);
        self.proj
            .backward(
                cx,
                cache.x.as_ref().map(|t| t.buf()),
                &cache.cp,
                &dh,
                rows,
                true,
                grads,
            )
            .expect("dx requested")
    }
}
