//! Every non-GEMM primitive of the CUDA backend as CUDA C, compiled at run time by NVRTC (one
//! module, once per process and device architecture; see `super::module`).
//!
//! Why run-time compilation: the build machine (and CI) has no CUDA toolkit, and a binary built
//! there must run on a GPU machine; NVRTC ships with the CUDA runtime libraries.
//!
//! Contracts shared by all kernels:
//! - buffers are dense f32, row-major, exactly as the [`Backend`](super::super::Backend) docs say;
//!   lengths are checked on the host before each launch, so kernels only bound-check their own
//!   index range;
//! - element counts are `unsigned long long`; elementwise kernels use grid-stride loops, so any
//!   grid size is correct (the host caps it);
//! - reductions use a fixed block size (`BLOCK` = 256 threads, a multiple of 32) and a fixed tree
//!   (warp shuffles, then one warp over the per-warp partials), so results are deterministic run to
//!   run; sums are accumulated in double, as the CPU backend does in f64;
//! - no atomics anywhere: every gradient that scatters on the CPU (col2im, nearest-resize
//!   backward) is written here as a gather in the CPU's summation order, so those results equal the
//!   CPU's bit for bit given equal inputs;
//! - compiled with `--fmad=false` so that `a*b + c` is rounded like the CPU backend's (no FMA
//!   contraction); these kernels are memory-bound, the cost is nil.

/// Names of every `extern "C"` kernel in [`SOURCE`], in a fixed order (loaded by name).
pub(super) const NAMES: &[&str] = &[
    "k_add",
    "k_add_assign",
    "k_scale",
    "k_add_broadcast",
    "k_sum_inner",
    "k_transpose",
    "k_concat",
    "k_split",
    "k_silu",
    "k_silu_backward",
    "k_geglu",
    "k_geglu_backward",
    "k_group_norm",
    "k_group_norm_backward",
    "k_im2col",
    "k_col2im",
    "k_resize_nearest",
    "k_resize_nearest_backward",
    "k_softmax_rows",
    "k_attn_probs",
    "k_attn_dsoftmax",
    "k_attn_rowdot",
    "k_gemm_k0",
];

/// Threads per block of the reduction kernels; the host launches them with exactly this many.
pub(super) const BLOCK: u32 = 256;

pub(super) const SOURCE: &str = r#"
typedef unsigned long long u64;

/* NVRTC has no math.h macros: -infinity as a bit pattern. */
#define NEG_INF_F __int_as_float(0xff800000)

#define GRID_STRIDE(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (u64)blockDim.x * gridDim.x)

__device__ __forceinline__ double warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
    return v;
}

/* Sum of `v` over the whole block, returned to every thread. blockDim.x must be a multiple of 32
   (at most 1024); `sh` is shared memory of at least 33 doubles. The leading __syncthreads makes
   back-to-back calls with the same `sh` safe. */
__device__ double block_sum(double v, double* sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        double t = lane < nw ? sh[lane] : 0.0;
        t = warp_sum(t);
        if (lane == 0) sh[32] = t;
    }
    __syncthreads();
    return sh[32];
}

/* Maximum of `v` over the block, returned to every thread; same rules, `sh` >= 33 floats. */
__device__ float block_max(float v, float* sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float t = lane < nw ? sh[lane] : NEG_INF_F;
        t = warp_max(t);
        if (lane == 0) sh[32] = t;
    }
    __syncthreads();
    return sh[32];
}

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float silu1(float x) { return x * sigmoidf_(x); }
/* d/dx [x sigma(x)] = sigma(x) (1 + x (1 - sigma(x))), as the CPU backend writes it. */
__device__ __forceinline__ float silu_grad1(float x) {
    float s = sigmoidf_(x);
    return s * (1.0f + x * (1.0f - s));
}
/* Exact GELU x Phi(x) evaluated in double and rounded, like the CPU backend (libm erf in f64). */
__device__ __forceinline__ float gelu1(float xf) {
    double x = (double)xf;
    return (float)(0.5 * x * (1.0 + erf(x * 0.70710678118654752440)));
}
__device__ __forceinline__ float gelu_grad1(float xf) {
    double x = (double)xf;
    double cdf = 0.5 * (1.0 + erf(x * 0.70710678118654752440));
    double pdf = exp(-0.5 * x * x) / sqrt(2.0 * 3.14159265358979323846);
    return (float)(cdf + x * pdf);
}

/* out[i] = a[i] + b[i], i < n */
extern "C" __global__ void k_add(const float* a, const float* b, float* out, u64 n) {
    GRID_STRIDE(i, n) out[i] = a[i] + b[i];
}

/* acc[i] += x[i] */
extern "C" __global__ void k_add_assign(float* acc, const float* x, u64 n) {
    GRID_STRIDE(i, n) acc[i] += x[i];
}

/* x[i] *= s */
extern "C" __global__ void k_scale(float* x, float s, u64 n) {
    GRID_STRIDE(i, n) x[i] *= s;
}

/* y viewed as [outer, mid, inner], n = outer*mid*inner: y[o, m, i] += v[m]. */
extern "C" __global__ void k_add_broadcast(float* y, const float* v, u64 mid, u64 inner, u64 n) {
    GRID_STRIDE(i, n) y[i] += v[(i / inner) % mid];
}

/* One block (BLOCK threads) per row of x [rows, inner]: out[row] = sum of the row (double). */
extern "C" __global__ void k_sum_inner(const float* x, float* out, u64 inner) {
    __shared__ double sh[33];
    const float* r = x + (u64)blockIdx.x * inner;
    double s = 0.0;
    for (u64 i = threadIdx.x; i < inner; i += blockDim.x) s += (double)r[i];
    s = block_sum(s, sh);
    if (threadIdx.x == 0) out[blockIdx.x] = (float)s;
}

/* [batch, rows, cols] -> [batch, cols, rows]. Grid (ceil(cols/32), ceil(rows/32), batch), block
   (32, 8): a 32x32 tile through shared memory (+1 column against bank conflicts), so both the
   read and the write are coalesced. */
extern "C" __global__ void k_transpose(const float* x, float* out, int rows, int cols) {
    __shared__ float tile[32][33];
    const u64 plane = (u64)rows * cols;
    x += blockIdx.z * plane;
    out += blockIdx.z * plane;
    const int c0 = blockIdx.x * 32, r0 = blockIdx.y * 32;
    for (int j = threadIdx.y; j < 32; j += 8) {
        int r = r0 + j, c = c0 + threadIdx.x;
        if (r < rows && c < cols) tile[j][threadIdx.x] = x[(u64)r * cols + c];
    }
    __syncthreads();
    for (int j = threadIdx.y; j < 32; j += 8) {
        int c = c0 + j, r = r0 + threadIdx.x;
        if (c < cols && r < rows) out[(u64)c * rows + r] = tile[threadIdx.x][j];
    }
}

/* Per sample s: out[s] = [a[s] (la values) | b[s] (lb values)]; n = samples*(la+lb). */
extern "C" __global__ void k_concat(const float* a, const float* b, float* out, u64 la, u64 lb,
                                    u64 n) {
    const u64 l = la + lb;
    GRID_STRIDE(i, n) {
        u64 s = i / l, r = i % l;
        out[i] = r < la ? a[s * la + r] : b[s * lb + (r - la)];
    }
}

/* Inverse of k_concat. */
extern "C" __global__ void k_split(const float* x, float* a, float* b, u64 la, u64 lb, u64 n) {
    const u64 l = la + lb;
    GRID_STRIDE(i, n) {
        u64 s = i / l, r = i % l;
        if (r < la) a[s * la + r] = x[i];
        else b[s * lb + (r - la)] = x[i];
    }
}

extern "C" __global__ void k_silu(const float* x, float* y, u64 n) {
    GRID_STRIDE(i, n) y[i] = silu1(x[i]);
}

extern "C" __global__ void k_silu_backward(const float* x, const float* dy, float* dx, u64 n) {
    GRID_STRIDE(i, n) dx[i] = dy[i] * silu_grad1(x[i]);
}

/* h [rows, 2*inner] = [a | g] -> y [rows, inner] = a * gelu(g); n = rows*inner. */
extern "C" __global__ void k_geglu(const float* h, float* y, u64 inner, u64 n) {
    GRID_STRIDE(i, n) {
        u64 r = i / inner, j = i % inner;
        const float* hr = h + r * 2 * inner;
        y[i] = hr[j] * gelu1(hr[inner + j]);
    }
}

/* dh [rows, 2*inner]: da = dy gelu(g), dg = dy a gelu'(g); n = rows*inner. */
extern "C" __global__ void k_geglu_backward(const float* h, const float* dy, float* dh, u64 inner,
                                            u64 n) {
    GRID_STRIDE(i, n) {
        u64 r = i / inner, j = i % inner;
        const float* hr = h + r * 2 * inner;
        float* dr = dh + r * 2 * inner;
        float a = hr[j], g = hr[inner + j];
        dr[j] = dy[i] * gelu1(g);
        dr[inner + j] = dy[i] * a * gelu_grad1(g);
    }
}

/* Group norm of x [n, c, hw] in `groups` groups of cg = c/groups consecutive channels; one block
   (BLOCK threads) per (sample, group) = blockIdx.x, whose values are the contiguous run
   x[blockIdx.x * cg*hw ...]. Two passes in double (mean, then centred variance, as the CPU), then
   y = (x - mean) * rstd * gamma[c] + beta[c], optionally followed by SiLU. stats[2*blk] = mean,
   stats[2*blk+1] = 1/sqrt(var + eps). Layer norm is the case n = rows, c = dim, hw = 1,
   groups = 1. */
extern "C" __global__ void k_group_norm(const float* x, const float* gamma, const float* beta,
                                        float* y, float* stats, u64 c, u64 hw, u64 groups,
                                        float eps, int silu) {
    __shared__ double sh[33];
    const u64 cg = c / groups, len = cg * hw, blk = blockIdx.x;
    const u64 c0 = (blk % groups) * cg;
    const float* xb = x + blk * len;
    float* yb = y + blk * len;
    double s = 0.0;
    for (u64 i = threadIdx.x; i < len; i += blockDim.x) s += (double)xb[i];
    const double mean = block_sum(s, sh) / (double)len;
    double v = 0.0;
    for (u64 i = threadIdx.x; i < len; i += blockDim.x) {
        double d = (double)xb[i] - mean;
        v += d * d;
    }
    const double var = block_sum(v, sh) / (double)len;
    const float meanf = (float)mean;
    const float rstd = (float)(1.0 / sqrt(var + (double)eps));
    if (threadIdx.x == 0) {
        stats[2 * blk] = meanf;
        stats[2 * blk + 1] = rstd;
    }
    for (u64 i = threadIdx.x; i < len; i += blockDim.x) {
        u64 ch = c0 + i / hw;
        float a = (xb[i] - meanf) * rstd * gamma[ch] + beta[ch];
        yb[i] = silu ? silu1(a) : a;
    }
}

/* Input gradient of k_group_norm (same grid). With xh = (x - mean) rstd and
   g = dy * gamma[c] (times silu'(xh gamma + beta) when fused):
   dx = rstd (g - mean(g) - xh mean(g xh)); the two means in double. */
extern "C" __global__ void k_group_norm_backward(const float* x, const float* stats,
                                                 const float* gamma, const float* beta,
                                                 const float* dy, float* dx, u64 c, u64 hw,
                                                 u64 groups, int silu) {
    __shared__ double sh[33];
    const u64 cg = c / groups, len = cg * hw, blk = blockIdx.x;
    const u64 c0 = (blk % groups) * cg;
    const float* xb = x + blk * len;
    const float* gb = dy + blk * len;
    float* db = dx + blk * len;
    const float mean = stats[2 * blk], rstd = stats[2 * blk + 1];
    double sg = 0.0, sgx = 0.0;
    for (u64 i = threadIdx.x; i < len; i += blockDim.x) {
        u64 ch = c0 + i / hw;
        float xh = (xb[i] - mean) * rstd;
        float g = silu ? gb[i] * silu_grad1(xh * gamma[ch] + beta[ch]) : gb[i];
        g = g * gamma[ch];
        sg += (double)g;
        sgx += (double)(g * xh);
    }
    const float mg = (float)(block_sum(sg, sh) / (double)len);
    const float mgx = (float)(block_sum(sgx, sh) / (double)len);
    for (u64 i = threadIdx.x; i < len; i += blockDim.x) {
        u64 ch = c0 + i / hw;
        float xh = (xb[i] - mean) * rstd;
        float g = silu ? gb[i] * silu_grad1(xh * gamma[ch] + beta[ch]) : gb[i];
        g = g * gamma[ch];
        db[i] = rstd * (g - mg - xh * mgx);
    }
}

/* im2col for samples s0 .. s0+count of x [n, cin, h, w]: col [count, cin*kh*kw, oh*ow] with row
   (ci*kh + ky)*kw + kx (the flattening of a [cout, cin, kh, kw] weight), zero outside the padded
   input. n_out = count*cin*kh*kw*oh*ow. */
extern "C" __global__ void k_im2col(const float* x, float* col, u64 s0, int cin, int h, int w,
                                    int oh, int ow, int kh, int kw, int stride, int pad_top,
                                    int pad_left, u64 n_out) {
    GRID_STRIDE(i, n_out) {
        u64 t = i;
        int ox = (int)(t % ow); t /= ow;
        int oy = (int)(t % oh); t /= oh;
        int kx = (int)(t % kw); t /= kw;
        int ky = (int)(t % kh); t /= kh;
        int ci = (int)(t % cin);
        u64 s = t / cin + s0;
        int iy = oy * stride + ky - pad_top, ix = ox * stride + kx - pad_left;
        float v = 0.0f;
        if (iy >= 0 && iy < h && ix >= 0 && ix < w)
            v = x[((s * cin + ci) * h + iy) * (u64)w + ix];
        col[i] = v;
    }
}

/* col2im as a gather: for samples s0 .. s0+count, dx[s, ci, iy, ix] = sum over (ky, kx), in that
   order, of dcol[s - s0, (ci*kh + ky)*kw + kx, oy, ox] for the one (oy, ox) that read (iy, ix)
   through that kernel offset, if any. The CPU's col2im adds the same terms in the same order onto
   zero, so the results are equal bit for bit. n_out = count*cin*h*w. */
extern "C" __global__ void k_col2im(const float* dcol, float* dx, u64 s0, int cin, int h, int w,
                                    int oh, int ow, int kh, int kw, int stride, int pad_top,
                                    int pad_left, u64 n_out) {
    GRID_STRIDE(i, n_out) {
        u64 t = i;
        int ix = (int)(t % w); t /= w;
        int iy = (int)(t % h); t /= h;
        int ci = (int)(t % cin);
        u64 sl = t / cin; /* sample within the chunk */
        const u64 ohw = (u64)oh * ow;
        const float* base = dcol + (sl * cin + ci) * (u64)kh * kw * ohw;
        float acc = 0.0f;
        for (int ky = 0; ky < kh; ++ky) {
            int ty = iy + pad_top - ky;
            if (ty < 0 || ty % stride != 0) continue;
            int oy = ty / stride;
            if (oy >= oh) continue;
            for (int kx = 0; kx < kw; ++kx) {
                int tx = ix + pad_left - kx;
                if (tx < 0 || tx % stride != 0) continue;
                int ox = tx / stride;
                if (ox >= ow) continue;
                acc += base[(u64)(ky * kw + kx) * ohw + (u64)oy * ow + ox];
            }
        }
        dx[s0 * cin * (u64)h * w + i] = acc;
    }
}

/* PyTorch's nearest index (F.interpolate mode="nearest"): identity and exact 2x special-cased,
   otherwise min(floor(o * (float)in/out), in - 1) in float32, as the CPU backend. */
__device__ __forceinline__ int nearest_src(int o, int in, int out) {
    if (out == in) return o;
    if (out == 2 * in) return o >> 1;
    float scale = (float)in / (float)out;
    int s = (int)floorf((float)o * scale);
    return s < in - 1 ? s : in - 1;
}

/* x [nc, ih, iw] -> y [nc, oh, ow]; n = nc*oh*ow. */
extern "C" __global__ void k_resize_nearest(const float* x, float* y, int ih, int iw, int oh,
                                            int ow, u64 n) {
    GRID_STRIDE(i, n) {
        int ox = (int)(i % ow);
        int oy = (int)((i / ow) % oh);
        u64 p = i / ((u64)oh * ow);
        y[i] = x[(p * ih + nearest_src(oy, ih, oh)) * (u64)iw + nearest_src(ox, iw, ow)];
    }
}

/* Backward as a gather: dx[p, y, x] = sum over oy ascending, then ox ascending, of dy[p, oy, ox]
   with nearest_src(oy) == y and nearest_src(ox) == x (the CPU's order). The index map is
   non-decreasing, so the scans stop past the pixel. n = nc*ih*iw. */
extern "C" __global__ void k_resize_nearest_backward(const float* dy, float* dx, int ih, int iw,
                                                     int oh, int ow, u64 n) {
    GRID_STRIDE(i, n) {
        int xx = (int)(i % iw);
        int yy = (int)((i / iw) % ih);
        u64 p = i / ((u64)ih * iw);
        const float* g = dy + p * (u64)oh * ow;
        float acc = 0.0f;
        for (int oy = 0; oy < oh; ++oy) {
            int sy = nearest_src(oy, ih, oh);
            if (sy < yy) continue;
            if (sy > yy) break;
            for (int ox = 0; ox < ow; ++ox) {
                int sx = nearest_src(ox, iw, ow);
                if (sx < xx) continue;
                if (sx > xx) break;
                acc += g[(u64)oy * ow + ox];
            }
        }
        dx[i] = acc;
    }
}

/* Attention forward, one block (BLOCK threads) per score row. The scores of one batch and query
   block are s [heads, rows, m] (row r = h*rows + i); each row becomes its softmax in place, and
   lse[lse_off + h*q_len + i] = max + log(sum) (the [batch, heads, q_len] layout). As the CPU:
   e = exp(s - max) in float, sum in double, p = e * (float)(1/sum). */
extern "C" __global__ void k_softmax_rows(float* s, float* lse, u64 m, int rows, u64 lse_off,
                                          u64 q_len) {
    __shared__ double shd[33];
    __shared__ float shf[33];
    const u64 r = blockIdx.x;
    float* row = s + r * m;
    float mx = NEG_INF_F;
    for (u64 j = threadIdx.x; j < m; j += blockDim.x) mx = fmaxf(mx, row[j]);
    mx = block_max(mx, shf);
    double sum = 0.0;
    for (u64 j = threadIdx.x; j < m; j += blockDim.x) {
        float e = expf(row[j] - mx);
        row[j] = e;
        sum += (double)e;
    }
    sum = block_sum(sum, shd);
    const float inv = (float)(1.0 / sum);
    for (u64 j = threadIdx.x; j < m; j += blockDim.x) row[j] *= inv;
    if (threadIdx.x == 0) {
        u64 h = r / rows, i = r % rows;
        lse[lse_off + h * q_len + i] = mx + logf((float)sum);
    }
}

/* Attention backward: p = exp(s - lse) in place over s [heads, rows, m], lse indexed as in
   k_softmax_rows; n = heads*rows*m. */
extern "C" __global__ void k_attn_probs(float* s, const float* lse, u64 m, int rows, u64 lse_off,
                                        u64 q_len, u64 n) {
    GRID_STRIDE(i, n) {
        u64 r = i / m, h = r / rows, q = r % rows;
        s[i] = expf(s[i] - lse[lse_off + h * q_len + q]);
    }
}

/* ds = p * (ds - D[row]) over [heads, rows, m], D indexed like lse; n = heads*rows*m. */
extern "C" __global__ void k_attn_dsoftmax(float* ds, const float* p, const float* dd, u64 m,
                                           int rows, u64 lse_off, u64 q_len, u64 n) {
    GRID_STRIDE(i, n) {
        u64 r = i / m, h = r / rows, q = r % rows;
        ds[i] = p[i] * (ds[i] - dd[lse_off + h * q_len + q]);
    }
}

/* D[(b*heads + h)*q_len + i] = sum over t < dim_head of dO*O at row (b, i), head h, in double and
   in the CPU's order; n = batch*heads*q_len, one thread each. */
extern "C" __global__ void k_attn_rowdot(const float* d_o, const float* o, float* dd, int heads,
                                         int dim_head, u64 q_len, u64 n) {
    GRID_STRIDE(i, n) {
        u64 q = i % q_len, bh = i / q_len;
        u64 h = bh % heads, b = bh / heads;
        u64 off = (b * q_len + q) * (u64)heads * dim_head + h * dim_head;
        double acc = 0.0;
        for (int t = 0; t < dim_head; ++t) acc += (double)d_o[off + t] * (double)o[off + t];
        dd[i] = (float)acc;
    }
}

/* C = beta*C for a GEMM with k = 0 (cuBLAS needs no call then): batch matrices of m x n at
   offset + b*stride_c, row stride ldc; beta 0 writes zeros (never reads C). n_out = batch*m*n. */
extern "C" __global__ void k_gemm_k0(float* c, u64 offset, u64 m, u64 n, u64 ldc, u64 stride_c,
                                     float beta, u64 n_out) {
    GRID_STRIDE(i, n_out) {
        u64 col = i % n, row = (i / n) % m, b = i / (m * n);
        float* p = c + offset + b * stride_c + row * ldc + col;
        *p = beta == 0.0f ? 0.0f : beta * *p;
    }
}
"#;
