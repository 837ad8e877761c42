//! The compute backend of the trainer: every numeric primitive the UNet layers need, on buffers that
//! live wherever the backend keeps them (host memory for [`Cpu`], device memory for a CUDA backend).
//!
//! Why a trait of coarse primitives rather than a tensor library: the layers (src/train/unet/layers)
//! are written once, with explicit forward and backward formulas, and call only these operations.
//! Each maps onto one well-known device routine — a strided-batched GEMM (cuBLAS
//! `sgemmStridedBatched`), an im2col convolution (or cuDNN), one fused kernel per normalisation,
//! activation or attention — so a CUDA backend (cudarc + NVRTC) implements this trait and reuses every
//! layer, cache and test unchanged. Shapes travel as plain dimensions next to the buffers: the
//! backend never has to understand a layout beyond what each call states.
//!
//! Conventions: all buffers are f32, densely packed, row-major; feature maps are NCHW, token
//! sequences `[batch, tokens, channels]`.

mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

pub use cpu::Cpu;
#[cfg(feature = "cuda")]
pub use cuda::{missing_libraries as cuda_missing_libraries, Cuda, CudaBuf};

/// One strided-batched, row-major GEMM: for `i in 0..batch`,
/// `C_i = alpha · op(A_i) · op(B_i) + beta · C_i`, with `op(A_i)` `m×k`, `op(B_i)` `k×n`, `C_i` `m×n`.
/// `A_i` starts at `offset_a + i·stride_a` and is stored `[m, k]` (`[k, m]` when `trans_a`) with row
/// stride `lda`; likewise B and C. This is exactly cuBLAS' strided-batched contract (after the usual
/// row-/column-major swap), so a device backend passes it through.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
    pub batch: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
    pub offset_a: usize,
    pub offset_b: usize,
    pub offset_c: usize,
    pub alpha: f32,
    pub beta: f32,
}

impl Gemm {
    /// `C = A·B` with dense `A [m,k]`, `B [k,n]`, `C [m,n]`, one batch, overwriting C.
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        Gemm {
            m,
            n,
            k,
            trans_a: false,
            trans_b: false,
            lda: k,
            ldb: n,
            ldc: n,
            batch: 1,
            stride_a: 0,
            stride_b: 0,
            stride_c: 0,
            offset_a: 0,
            offset_b: 0,
            offset_c: 0,
            alpha: 1.0,
            beta: 0.0,
        }
    }

    /// A is stored `[k, m]` (use its transpose).
    pub fn trans_a(mut self) -> Self {
        self.trans_a = true;
        self.lda = self.m;
        self
    }

    /// B is stored `[n, k]` (use its transpose) — the `x·Wᵀ` of every linear layer.
    pub fn trans_b(mut self) -> Self {
        self.trans_b = true;
        self.ldb = self.k;
        self
    }

    pub fn alpha(mut self, alpha: f32) -> Self {
        self.alpha = alpha;
        self
    }

    /// `C += alpha·op(A)·op(B)` instead of overwriting C.
    pub fn accumulate(mut self) -> Self {
        self.beta = 1.0;
        self
    }

    /// `batch` products; a stride of 0 reuses the same matrix (shared weights).
    pub fn batched(
        mut self,
        batch: usize,
        stride_a: usize,
        stride_b: usize,
        stride_c: usize,
    ) -> Self {
        self.batch = batch;
        self.stride_a = stride_a;
        self.stride_b = stride_b;
        self.stride_c = stride_c;
        self
    }

    /// Smallest buffer lengths `(a, b, c)` this call touches; backends check them.
    pub fn extents(&self) -> (usize, usize, usize) {
        let span = |rows: usize, cols: usize, ld: usize| {
            if rows == 0 || cols == 0 {
                0
            } else {
                (rows - 1) * ld + cols
            }
        };
        let last = self.batch.saturating_sub(1);
        let (ar, ac) = if self.trans_a {
            (self.k, self.m)
        } else {
            (self.m, self.k)
        };
        let (br, bc) = if self.trans_b {
            (self.n, self.k)
        } else {
            (self.k, self.n)
        };
        (
            self.offset_a + last * self.stride_a + span(ar, ac, self.lda),
            self.offset_b + last * self.stride_b + span(br, bc, self.ldb),
            self.offset_c + last * self.stride_c + span(self.m, self.n, self.ldc),
        )
    }
}

/// A 2-D convolution over an NCHW batch. Padding is given per side because diffusers'
/// `Downsample2D(padding=0)` pads only bottom and right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    pub n: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub pad_bottom: usize,
    pub pad_right: usize,
}

impl ConvGeom {
    pub fn out_h(&self) -> usize {
        (self.h + self.pad_top + self.pad_bottom - self.kh) / self.stride + 1
    }
    pub fn out_w(&self) -> usize {
        (self.w + self.pad_left + self.pad_right - self.kw) / self.stride + 1
    }
    /// A 1×1, stride-1, unpadded convolution is a plain GEMM on each sample (no im2col).
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.stride == 1
            && self.pad_top + self.pad_left + self.pad_bottom + self.pad_right == 0
    }
}

/// Group normalisation of `x [n, c, hw]` in `groups` groups of consecutive channels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupNormDims {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
    pub groups: usize,
    pub eps: f32,
}

/// Multi-head scaled-dot-product attention: `q [batch, q_len, heads·dim_head]`,
/// `k, v [batch, kv_len, heads·dim_head]` (heads interleaved along channels, as the projections
/// produce them), output like q, log-sum-exp `[batch, heads, q_len]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnDims {
    pub batch: usize,
    pub heads: usize,
    pub dim_head: usize,
    pub q_len: usize,
    pub kv_len: usize,
    /// `1/sqrt(dim_head)` for SD; kept explicit so a backend never guesses.
    pub scale: f32,
}

/// Every primitive the trainer's layers use. Implementations must be deterministic for a given
/// thread count; results may differ from other backends by float rounding only.
pub trait Backend: Send + Sync + 'static {
    /// A dense f32 buffer owned by the backend.
    type Buf: Clone + Send + Sync + 'static;

    fn name(&self) -> String;
    /// Runs `f` in the backend's execution context (the CPU backend's thread pool), so that the
    /// many calls of one forward or backward pass do not each pay for entering it. Calls made
    /// inside `f` still work as usual.
    fn scope<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        f()
    }
    fn upload(&self, data: &[f32]) -> Self::Buf;
    fn download(&self, buf: &Self::Buf) -> Vec<f32>;
    fn zeros(&self, len: usize) -> Self::Buf;
    fn len(&self, buf: &Self::Buf) -> usize;

    /// See [`Gemm`].
    fn gemm(&self, g: &Gemm, a: &Self::Buf, b: &Self::Buf, c: &mut Self::Buf);

    /// `a + b`.
    fn add(&self, a: &Self::Buf, b: &Self::Buf) -> Self::Buf;
    /// `acc += x`.
    fn add_assign(&self, acc: &mut Self::Buf, x: &Self::Buf);
    /// `x *= s`.
    fn scale(&self, x: &mut Self::Buf, s: f32);
    /// Viewing `y` as `[outer, mid, inner]`: `y[o, m, i] += v[m]` — a linear layer's bias
    /// (`inner = 1`), a convolution's (`outer = n, inner = h·w`), the time embedding added to a
    /// feature map (`outer = 1, mid = n·c, inner = h·w`).
    fn add_broadcast(
        &self,
        y: &mut Self::Buf,
        v: &Self::Buf,
        outer: usize,
        mid: usize,
        inner: usize,
    );
    /// `out[r] = Σ_i x[r, i]` over `x [rows, inner]` — the backward of [`Backend::add_broadcast`]
    /// with `outer = 1`.
    fn sum_inner(&self, x: &Self::Buf, rows: usize, inner: usize) -> Self::Buf;
    /// `[batch, rows, cols] → [batch, cols, rows]`: NCHW feature maps ↔ token sequences.
    fn transpose(&self, x: &Self::Buf, batch: usize, rows: usize, cols: usize) -> Self::Buf;
    /// Channel concatenation of `a [n, ca, inner]` and `b [n, cb, inner]` (the UNet's skips).
    fn concat_channels(
        &self,
        a: &Self::Buf,
        b: &Self::Buf,
        n: usize,
        ca: usize,
        cb: usize,
        inner: usize,
    ) -> Self::Buf;
    /// Inverse of [`Backend::concat_channels`] (its backward).
    fn split_channels(
        &self,
        x: &Self::Buf,
        n: usize,
        ca: usize,
        cb: usize,
        inner: usize,
    ) -> (Self::Buf, Self::Buf);

    /// `x·σ(x)`.
    fn silu(&self, x: &Self::Buf) -> Self::Buf;
    /// `dy·σ(x)·(1 + x·(1 − σ(x)))`, the derivative of `x·σ(x)`.
    fn silu_backward(&self, x: &Self::Buf, dy: &Self::Buf) -> Self::Buf;
    /// GEGLU on `h [rows, 2·inner]` = `[a | g]`: `a · gelu(g)` (exact, erf-based GELU).
    fn geglu(&self, h: &Self::Buf, rows: usize, inner: usize) -> Self::Buf;
    /// Backward of [`Backend::geglu`]: `da = dy·gelu(g)`, `dg = dy·a·gelu'(g)`,
    /// `gelu'(g) = Φ(g) + g·φ(g)`.
    fn geglu_backward(&self, h: &Self::Buf, dy: &Self::Buf, rows: usize, inner: usize)
        -> Self::Buf;

    /// `γ·x̂ + β` with `x̂ = (x − μ_g)/sqrt(σ²_g + eps)` per sample and group, optionally followed by
    /// SiLU (fused: every resnet does GroupNorm→SiLU, and fusing lets backward recompute the SiLU
    /// input instead of storing it). Returns the output and the per-(sample, group) `(μ, 1/σ)`.
    fn group_norm(
        &self,
        x: &Self::Buf,
        d: &GroupNormDims,
        gamma: &Self::Buf,
        beta: &Self::Buf,
        silu: bool,
    ) -> (Self::Buf, Self::Buf);
    /// Input gradient of [`Backend::group_norm`] (γ, β are frozen). With `g = dy·γ` (times the
    /// SiLU derivative at `γ·x̂ + β` when fused) and means over the group:
    /// `dx = (1/σ)·(g − mean(g) − x̂·mean(g·x̂))`.
    #[allow(clippy::too_many_arguments)]
    fn group_norm_backward(
        &self,
        x: &Self::Buf,
        stats: &Self::Buf,
        gamma: &Self::Buf,
        beta: &Self::Buf,
        dy: &Self::Buf,
        d: &GroupNormDims,
        silu: bool,
    ) -> Self::Buf;
    /// Layer normalisation over the last axis of `x [rows, dim]`; returns output and per-row
    /// `(μ, 1/σ)`.
    #[allow(clippy::too_many_arguments)]
    fn layer_norm(
        &self,
        x: &Self::Buf,
        rows: usize,
        dim: usize,
        eps: f32,
        gamma: &Self::Buf,
        beta: &Self::Buf,
    ) -> (Self::Buf, Self::Buf);
    /// Same formula as the group-norm backward, with the row as the group.
    fn layer_norm_backward(
        &self,
        x: &Self::Buf,
        stats: &Self::Buf,
        gamma: &Self::Buf,
        dy: &Self::Buf,
        rows: usize,
        dim: usize,
    ) -> Self::Buf;

    /// Cross-correlation (PyTorch's `conv2d`) of `x [n, cin, h, w]` with `w [cout, cin, kh, kw]`,
    /// plus an optional bias.
    fn conv2d(
        &self,
        x: &Self::Buf,
        w: &Self::Buf,
        bias: Option<&Self::Buf>,
        g: &ConvGeom,
    ) -> Self::Buf;
    /// Input gradient of [`Backend::conv2d`]: the transposed convolution of `dy` with the same
    /// weights, i.e. `col2im(Wᵀ·dy)`. No weight gradient: base weights are frozen.
    fn conv2d_backward_input(&self, dy: &Self::Buf, w: &Self::Buf, g: &ConvGeom) -> Self::Buf;

    /// Nearest-neighbour resize of `x [nc, h, w]` to `[nc, oh, ow]` with PyTorch's index rule
    /// `src = min(floor(dst · h/oh), h − 1)` (float32 scale, as `F.interpolate(mode="nearest")`).
    fn resize_nearest(
        &self,
        x: &Self::Buf,
        nc: usize,
        hw: (usize, usize),
        out_hw: (usize, usize),
    ) -> Self::Buf;
    /// Its backward: every output gradient is added to the source pixel it was copied from.
    fn resize_nearest_backward(
        &self,
        dy: &Self::Buf,
        nc: usize,
        hw: (usize, usize),
        out_hw: (usize, usize),
    ) -> Self::Buf;

    /// `softmax(scale·Q·Kᵀ)·V` per batch and head. Returns the output and the log-sum-exp of each
    /// score row; the probabilities are NOT kept (at SD-1.5's 64×64 latents they would be 1 GB per
    /// self-attention), backward recomputes them from Q, K and the log-sum-exp.
    fn attention(
        &self,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        d: &AttnDims,
    ) -> (Self::Buf, Self::Buf);
    /// With `P = exp(scale·Q·Kᵀ − lse)` recomputed: `dV = Pᵀ·dO`, `dP = dO·Vᵀ`,
    /// `dS = P ∘ (dP − D)` where `D_i = Σ_c dO_ic·O_ic` (= `Σ_j P_ij·dP_ij`, the softmax Jacobian
    /// contracted), `dQ = scale·dS·K`, `dK = scale·dSᵀ·Q`. Returns `(dq, dk, dv)`.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        o: &Self::Buf,
        lse: &Self::Buf,
        d_o: &Self::Buf,
        d: &AttnDims,
    ) -> (Self::Buf, Self::Buf, Self::Buf);
}
