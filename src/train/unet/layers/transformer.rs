//! diffusers `BasicTransformerBlock` (self-attention, cross-attention, GEGLU feed-forward, each
//! pre-LayerNorm with a residual) and `Transformer2DModel` (GroupNorm, proj_in, blocks, proj_out,
//! residual) as SD-1.x/2.x use them.
//!
//! SD-1's 1×1-convolution `proj_in/proj_out` and SD-2's linear ones compute the same map once the
//! feature map is laid out as tokens (a 1×1 convolution is a linear layer per pixel), so both are a
//! [`Linear`] applied after the NCHW → tokens transpose; the stored `[out, in, 1, 1]` weights load
//! as `[out, in]`. That also makes LoRA on proj_in/proj_out work for both.

use super::super::super::backend::Backend;
use super::super::super::lora::LoraGrads;
use super::super::super::tensor::Tensor;
use super::super::super::TrainError;
use super::super::weights::Loader;
use super::{
    Attention, AttnCache, Ctx, FeedForward, FfCache, GroupNorm, LayerNorm, Linear, LinearCache,
};

/// LayerNorm eps of the transformer blocks (diffusers' `norm_eps` default; the UNet does not
/// pass its own).
const BLOCK_NORM_EPS: f32 = 1e-5;
/// GroupNorm eps of `Transformer2DModel` (hard-coded in diffusers).
const T2D_NORM_EPS: f32 = 1e-6;

pub struct TransformerBlock<B: Backend> {
    norm1: LayerNorm<B>,
    pub attn1: Attention<B>,
    norm2: LayerNorm<B>,
    pub attn2: Attention<B>,
    norm3: LayerNorm<B>,
    pub ff: FeedForward<B>,
    pub dim: usize,
}

/// The residual stream before each sub-layer (each LayerNorm's input) and the sub-layer caches.
pub struct BlockCache<B: Backend> {
    h0: Tensor<B>,
    st1: B::Buf,
    c1: AttnCache<B>,
    h1: Tensor<B>,
    st2: B::Buf,
    c2: AttnCache<B>,
    h2: Tensor<B>,
    st3: B::Buf,
    c3: FfCache<B>,
}

impl<B: Backend> TransformerBlock<B> {
    pub fn load(
        ld: &Loader<'_, B>,
        dim: usize,
        heads: usize,
        dim_head: usize,
        context_dim: usize,
    ) -> Result<Self, TrainError> {
        Ok(TransformerBlock {
            norm1: LayerNorm::load(ld, "norm1", dim, BLOCK_NORM_EPS)?,
            attn1: Attention::load(&ld.sub("attn1"), dim, None, heads, dim_head)?,
            norm2: LayerNorm::load(ld, "norm2", dim, BLOCK_NORM_EPS)?,
            attn2: Attention::load(&ld.sub("attn2"), dim, Some(context_dim), heads, dim_head)?,
            norm3: LayerNorm::load(ld, "norm3", dim, BLOCK_NORM_EPS)?,
            ff: FeedForward::load(&ld.sub("ff"), dim)?,
            dim,
        })
    }

    /// `h [B, N, dim]`, `ehs [B, M, context_dim]` → `[B, N, dim]`:
    /// `h1 = h + attn1(LN1(h))`, `h2 = h1 + attn2(LN2(h1), ehs)`, `h3 = h2 + ff(LN3(h2))`.
    pub fn forward(
        &self,
        cx: Ctx<'_, B>,
        h0: &Tensor<B>,
        ehs: &Tensor<B>,
    ) -> (Tensor<B>, BlockCache<B>) {
        let be = cx.be;
        let shape = h0.shape().to_vec();
        let rows = shape[0] * shape[1];
        let (n1, st1) = self.norm1.forward(be, h0.buf(), rows);
        let (a1, c1) = self.attn1.forward(cx, &Tensor::new(be, n1, &shape), None);
        let h1 = Tensor::new(be, be.add(h0.buf(), &a1), &shape);
        let (n2, st2) = self.norm2.forward(be, h1.buf(), rows);
        let (a2, c2) = self
            .attn2
            .forward(cx, &Tensor::new(be, n2, &shape), Some(ehs));
        let h2 = Tensor::new(be, be.add(h1.buf(), &a2), &shape);
        let (n3, st3) = self.norm3.forward(be, h2.buf(), rows);
        let (f, c3) = self.ff.forward(cx, &Tensor::new(be, n3, &shape));
        let h3 = Tensor::new(be, be.add(h2.buf(), &f), &shape);
        let cache = BlockCache {
            h0: h0.clone(),
            st1,
            c1,
            h1,
            st2,
            c2,
            h2,
            st3,
            c3,
        };
        (h3, cache)
    }

    /// Each residual `h_{i+1} = h_i + f(LN(h_i))` gives `dh_i = dh_{i+1} + LN'ᵀ(f'ᵀ(dh_{i+1}))`,
    /// applied for the three sub-layers in reverse.
    pub fn backward(
        &self,
        cx: Ctx<'_, B>,
        c: &BlockCache<B>,
        ehs: &Tensor<B>,
        dh3: &B::Buf,
        grads: &mut LoraGrads<B>,
    ) -> B::Buf {
        let be = cx.be;
        let rows = c.h0.shape()[0] * c.h0.shape()[1];
        let dn3 = self.ff.backward(cx, &c.c3, dh3, grads);
        let mut dh2 = self.norm3.backward(be, c.h2.buf(), &c.st3, &dn3, rows);
        be.add_assign(&mut dh2, dh3);
        let dn2 = self.attn2.backward(cx, &c.c2, Some(ehs), &dh2, grads);
        let mut dh1 = self.norm2.backward(be, c.h1.buf(), &c.st2, &dn2, rows);
        be.add_assign(&mut dh1, &dh2);
        let dn1 = self.attn1.backward(cx, &c.c1, None, &dh1, grads);
        let mut dh0 = self.norm1.backward(be, c.h0.buf(), &c.st1, &dn1, rows);
        be.add_assign(&mut dh0, &dh1);
        dh0
    }
}

pub struct Transformer2D<B: Backend> {
    norm: GroupNorm<B>,
    pub proj_in: Linear<B>,
    pub blocks: Vec<TransformerBlock<B>>,
    pub proj_out: Linear<B>,
    pub channels: usize,
    pub inner: usize,
}

/// The input (for the GroupNorm backward), the GroupNorm statistics, the token inputs of
/// proj_in/proj_out when a LoRA needs them, and the blocks' caches.
pub struct Transformer2DCache<B: Backend> {
    x: Tensor<B>,
    st: B::Buf,
    t0: Option<B::Buf>,
    cpi: LinearCache<B>,
    blocks: Vec<BlockCache<B>>,
    hn: Option<Tensor<B>>,
    cpo: LinearCache<B>,
}

impl<B: Backend> Transformer2D<B> {
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        ld: &Loader<'_, B>,
        channels: usize,
        heads: usize,
        dim_head: usize,
        context_dim: usize,
        groups: usize,
        depth: usize,
    ) -> Result<Self, TrainError> {
        let inner = heads * dim_head;
        let blocks = (0..depth)
            .map(|i| {
                TransformerBlock::load(
                    &ld.sub(&format!("transformer_blocks.{i}")),
                    inner,
                    heads,
                    dim_head,
                    context_dim,
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(Transformer2D {
            norm: GroupNorm::load(ld, "norm", channels, groups, T2D_NORM_EPS)?,
            proj_in: Linear::load(ld, "proj_in", channels, inner)?,
            blocks,
            proj_out: Linear::load(ld, "proj_out", inner, channels)?,
            channels,
            inner,
        })
    }

    /// `x [B, C, H, W]` → `x + proj_out(blocks(proj_in(tokens(GN(x)))))` laid out as NCHW again.
    pub fn forward(
        &self,
        cx: Ctx<'_, B>,
        x: &Tensor<B>,
        ehs: &Tensor<B>,
    ) -> (Tensor<B>, Transformer2DCache<B>) {
        let be = cx.be;
        let (b, c) = (x.shape()[0], x.shape()[1]);
        let hw = x.numel() / (b * c);
        let (gn, st) = self.norm.forward(be, x.buf(), b, hw, false);
        let t0 = be.transpose(&gn, b, c, hw);
        let (h, cpi) = self.proj_in.forward(cx, &t0, b * hw);
        let mut h = Tensor::new(be, h, &[b, hw, self.inner]);
        let mut caches = Vec::with_capacity(self.blocks.len());
        for blk in &self.blocks {
            let (next, cache) = blk.forward(cx, &h, ehs);
            caches.push(cache);
            h = next;
        }
        let (p, cpo) = self.proj_out.forward(cx, h.buf(), b * hw);
        let mut y = be.transpose(&p, b, hw, c);
        be.add_assign(&mut y, x.buf());
        let cache = Transformer2DCache {
            x: x.clone(),
            st,
            t0: cpi.lora_active().then_some(t0),
            cpi,
            blocks: caches,
            hn: cpo.lora_active().then_some(h),
            cpo,
        };
        (Tensor::new(be, y, x.shape()), cache)
    }

    /// Reverse of forward; the residual passes `dy` straight to `dx`, and the transposes are their
    /// own adjoints with rows and columns swapped.
    pub fn backward(
        &self,
        cx: Ctx<'_, B>,
        c: &Transformer2DCache<B>,
        ehs: &Tensor<B>,
        dy: &B::Buf,
        grads: &mut LoraGrads<B>,
    ) -> B::Buf {
        let be = cx.be;
        let (b, ch) = (c.x.shape()[0], c.x.shape()[1]);
        let hw = c.x.numel() / (b * ch);
        let rows = b * hw;
        let dp = be.transpose(dy, b, ch, hw);
        let mut dh = self
            .proj_out
            .backward(
                cx,
                c.hn.as_ref().map(|t| t.buf()),
                &c.cpo,
                &dp,
                rows,
                true,
                grads,
            )
            .expect("dx requested");
        for (blk, bc) in self.blocks.iter().zip(&c.blocks).rev() {
            dh = blk.backward(cx, bc, ehs, &dh, grads);
        }
        let dt0 = self
            .proj_in
            .backward(cx, c.t0.as_ref(), &c.cpi, &dh, rows, true, grads)
            .expect("dx requested");
        let dgn = be.transpose(&dt0, b, hw, ch);
        let mut dx = self.norm.backward(be, c.x.buf(), &c.st, &dgn, b, hw, false);
        be.add_assign(&mut dx, dy);
        dx
    }
}
