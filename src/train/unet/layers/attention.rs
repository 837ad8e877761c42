//! diffusers `Attention` (self- or cross-), LoRA-capable on all four projections.
//!
//! `q = x·Wqᵀ`, `k = c·Wkᵀ`, `v = c·Wvᵀ` (c = x for self-attention, the text embeddings for
//! cross-attention), `o = softmax(q·kᵀ/√d)·v` per head, `out = o·Woᵀ + b`. `upcast_attention` is a
//! no-op here: everything already runs in f32.

use super::super::super::backend::{AttnDims, Backend};
use super::super::super::lora::LoraGrads;
use super::super::super::tensor::Tensor;
use super::super::super::TrainError;
use super::super::weights::Loader;
use super::{Ctx, Linear, LinearCache};

pub struct Attention<B: Backend> {
    pub to_q: Linear<B>,
    pub to_k: Linear<B>,
    pub to_v: Linear<B>,
    pub to_out: Linear<B>,
    pub heads: usize,
    pub dim_head: usize,
    pub query_dim: usize,
    /// `None` for self-attention.
    pub context_dim: Option<usize>,
}

/// Kept for backward: the projections (attention backward needs q, k, v and the output o; o is
/// also `to_out`'s input), the log-sum-exp rows, and the input x only if a LoRA on a projection
/// of x needs it for its A gradient.
pub struct AttnCache<B: Backend> {
    x: Option<Tensor<B>>,
    q: B::Buf,
    k: B::Buf,
    v: B::Buf,
    o: B::Buf,
    lse: B::Buf,
    cq: LinearCache<B>,
    ck: LinearCache<B>,
    cv: LinearCache<B>,
    co: LinearCache<B>,
    dims: AttnDims,
}

impl<B: Backend> Attention<B> {
    pub fn load(
        ld: &Loader<'_, B>,
        query_dim: usize,
        context_dim: Option<usize>,
        heads: usize,
        dim_head: usize,
    ) -> Result<Self, TrainError> {
        let inner = heads * dim_head;
        let kv_in = context_dim.unwrap_or(query_dim);
        Ok(Attention {
            to_q: Linear::load(ld, "to_q", query_dim, inner)?,
            to_k: Linear::load(ld, "to_k", kv_in, inner)?,
            to_v: Linear::load(ld, "to_v", kv_in, inner)?,
            to_out: Linear::load(ld, "to_out.0", inner, query_dim)?,
            heads,
            dim_head,
            query_dim,
            context_dim,
        })
    }

    fn dims(&self, batch: usize, q_len: usize, kv_len: usize) -> AttnDims {
        AttnDims {
            batch,
            heads: self.heads,
            dim_head: self.dim_head,
            q_len,
            kv_len,
            scale: 1.0 / (self.dim_head as f32).sqrt(),
        }
    }

    /// `x [B, N, query_dim]`, `ctx [B, M, context_dim]` (cross-attention only) → `[B·N, query_dim]`.
    pub fn forward(
        &self,
        cx: Ctx<'_, B>,
        x: &Tensor<B>,
        ctx: Option<&Tensor<B>>,
    ) -> (B::Buf, AttnCache<B>) {
        let (b, n) = (x.shape()[0], x.shape()[1]);
        let is_self = self.context_dim.is_none();
        let c = if is_self {
            x
        } else {
            ctx.expect("cross-attention needs encoder hidden states")
        };
        let m = c.shape()[1];
        let (q, cq) = self.to_q.forward(cx, x.buf(), b * n);
        let (k, ck) = self.to_k.forward(cx, c.buf(), b * m);
        let (v, cv) = self.to_v.forward(cx, c.buf(), b * m);
        let dims = self.dims(b, n, m);
        let (o, lse) = cx.be.attention(&q, &k, &v, &dims);
        let (out, co) = self.to_out.forward(cx, &o, b * n);
        let keep_x = cq.lora_active() || (is_self && (ck.lora_active() || cv.lora_active()));
        let cache = AttnCache {
            x: keep_x.then(|| x.clone()),
            q,
            k,
            v,
            o,
            lse,
            cq,
            ck,
            cv,
            co,
            dims,
        };
        (out, cache)
    }

    /// Input gradient (w.r.t. x only: the text embeddings are data, not trained) for
    /// `d_out [B·N, query_dim]`. Through `to_out`, then the attention backward (see
    /// [`Backend::attention_backward`]), then the three projections; for self-attention x feeds
    /// all three, so their input gradients add.
    pub fn backward(
        &self,
        cx: Ctx<'_, B>,
        cache: &AttnCache<B>,
        ctx: Option<&Tensor<B>>,
        d_out: &B::Buf,
        grads: &mut LoraGrads<B>,
    ) -> B::Buf {
        let be = cx.be;
        let d = &cache.dims;
        let (rq, rkv) = (d.batch * d.q_len, d.batch * d.kv_len);
        let x = cache.x.as_ref().map(|t| t.buf());
        let d_o = self
            .to_out
            .backward(cx, Some(&cache.o), &cache.co, d_out, rq, true, grads)
            .expect("dx requested");
        let (dq, dk, dv) =
            be.attention_backward(&cache.q, &cache.k, &cache.v, &cache.o, &cache.lse, &d_o, d);
        let mut dx = self
            .to_q
            .backward(cx, x, &cache.cq, &dq, rq, true, grads)
            .expect("dx requested");
        if self.context_dim.is_none() {
            for (lin, lc, dy) in [(&self.to_k, &cache.ck, &dk), (&self.to_v, &cache.cv, &dv)] {
                let part = lin
                    .backward(cx, x, lc, dy, rkv, true, grads)
                    .expect("dx requested");
                be.add_assign(&mut dx, &part);
            }
        } else {
            let c = ctx.map(|t| t.buf());
            self.to_k.backward(cx, c, &cache.ck, &dk, rkv, false, grads);
            self.to_v.backward(cx, c, &cache.cv, &dv, rkv, false, grads);
        }
        dx
    }
}
