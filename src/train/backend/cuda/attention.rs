//! Multi-head attention without storing the probabilities, on cuBLAS + three small kernels.
//!
//! Heads are read in place, as on the CPU: head `h` of `q [B, N, H·d]` is the `N×d` matrix at
//! column offset `h·d` with row stride `H·d`, so one strided-batched GEMM with batch stride `d`
//! covers every head of one batch entry. Queries are processed in blocks of `rows` so that the
//! scores `[H, rows, M]` of a block stay under the backend's scratch limit; the forward keeps only the
//! log-sum-exp of each score row, the backward recomputes the probabilities from it (the
//! FlashAttention recipe with whole key rows per block), exactly the CPU backend's formulas.
//!
//! The per-head outputs of one GEMM interleave (head `h` writes columns `h·d..(h+1)·d` of every
//! row): batch stride `d`, row stride `H·d`. The batches touch disjoint elements, and cuBLAS
//! writes only the `m×n` elements of each batch, never the gaps between rows, so this is safe.

use super::{elems, launch, rows_cfg, Cuda, CudaBuf};
use crate::train::backend::{AttnDims, Gemm};
use cudarc::driver::PushKernelArg;

fn check(d: &AttnDims, q: usize, k: usize, v: usize) {
    let c = d.heads * d.dim_head;
    assert_eq!(q, d.batch * d.q_len * c, "attention: q length");
    assert_eq!(k, d.batch * d.kv_len * c, "attention: k length");
    assert_eq!(v, d.batch * d.kv_len * c, "attention: v length");
    assert!(d.kv_len > 0, "attention: no keys");
    assert!(d.heads > 0 && d.dim_head > 0, "attention: no heads");
}

/// Query rows per block, so that one score buffer holds at most `budget` floats (the backward
/// holds two).
fn block_rows(d: &AttnDims, budget: usize) -> usize {
    (budget / (d.heads * d.kv_len).max(1)).clamp(1, d.q_len.max(1))
}

/// The GEMM shapes of one (batch entry `b`, query block at `n0` of `rows` rows). Scores are
/// `[H, rows, M]`, compact.
struct Block<'a> {
    d: &'a AttnDims,
    b: usize,
    n0: usize,
    rows: usize,
}

impl Block<'_> {
    fn c(&self) -> usize {
        self.d.heads * self.d.dim_head
    }
    /// Offset of row n0 of batch b in a `[B, N, C]` buffer.
    fn q_off(&self) -> usize {
        (self.b * self.d.q_len + self.n0) * self.c()
    }
    /// Offset of batch b in a `[B, M, C]` buffer.
    fn kv_off(&self) -> usize {
        self.b * self.d.kv_len * self.c()
    }
    fn s_stride(&self) -> usize {
        self.rows * self.d.kv_len
    }
    /// `S = scale·X_blk·Yᵀ` with X a `[B, N, C]` operand (Q, or dO) and Y a `[B, M, C]` one
    /// (K, or V), scale `alpha`.
    fn scores(&self, alpha: f32) -> Gemm {
        let (c, dh, m) = (self.c(), self.d.dim_head, self.d.kv_len);
        let mut g = Gemm::new(self.rows, m, dh).trans_b().alpha(alpha).batched(
            self.d.heads,
            dh,
            dh,
            self.s_stride(),
        );
        g.lda = c;
        g.ldb = c;
        g.offset_a = self.q_off();
        g.offset_b = self.kv_off();
        g
    }
    /// `Out_blk = alpha·S·Y` (+ Out when `acc`), S `[H, rows, M]`, Y `[B, M, C]`, Out `[B, N, C]`.
    fn s_times_kv(&self, alpha: f32, acc: bool) -> Gemm {
        let (c, dh, m) = (self.c(), self.d.dim_head, self.d.kv_len);
        let mut g =
            Gemm::new(self.rows, dh, m)
                .alpha(alpha)
                .batched(self.d.heads, self.s_stride(), dh, dh);
        g.ldb = c;
        g.ldc = c;
        g.offset_b = self.kv_off();
        g.offset_c = self.q_off();
        if acc {
            g.beta = 1.0;
        }
        g
    }
    /// `Out += alpha·Sᵀ·X_blk`, S `[H, rows, M]`, X `[B, N, C]`, Out `[B, M, C]` (dV, dK).
    fn st_times_q(&self, alpha: f32) -> Gemm {
        let (c, dh, m) = (self.c(), self.d.dim_head, self.d.kv_len);
        let mut g = Gemm::new(m, dh, self.rows)
            .trans_a()
            .alpha(alpha)
            .accumulate()
            .batched(self.d.heads, self.s_stride(), dh, dh);
        g.lda = m;
        g.ldb = c;
        g.ldc = c;
        g.offset_b = self.q_off();
        g.offset_c = self.kv_off();
        g
    }
    /// The `lse`/`D` offset of this block's first row of head 0: `[B, H, N]` layout.
    fn lse_off(&self) -> u64 {
        (self.b * self.d.heads * self.d.q_len + self.n0) as u64
    }
}

impl Cuda {
    pub(super) fn attention_forward(
        &self,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        d: &AttnDims,
    ) -> (CudaBuf, CudaBuf) {
        check(d, q.len, k.len, v.len);
        let mut o = self.alloc(q.len);
        let mut lse = self.alloc(d.batch * d.heads * d.q_len);
        if q.len == 0 {
            return (o, lse);
        }
        let nb = block_rows(d, self.scratch_limit());
        let mut s = self.alloc(d.heads * nb * d.kv_len);
        for b in 0..d.batch {
            for n0 in (0..d.q_len).step_by(nb) {
                let blk = Block {
                    d,
                    b,
                    n0,
                    rows: nb.min(d.q_len - n0),
                };
                self.gemm_raw(
                    &blk.scores(d.scale),
                    (&q.data, q.len),
                    (&k.data, k.len),
                    (&mut s.data, s.len),
                );
                let (m, rows, off, ql) = (
                    d.kv_len as u64,
                    blk.rows as i32,
                    blk.lse_off(),
                    d.q_len as u64,
                );
                launch!(
                    self,
                    "k_softmax_rows",
                    rows_cfg(d.heads * blk.rows),
                    [&mut s.data, &mut lse.data, &m, &rows, &off, &ql]
                );
                self.gemm_raw(
                    &blk.s_times_kv(1.0, false),
                    (&s.data, s.len),
                    (&v.data, v.len),
                    (&mut o.data, o.len),
                );
            }
        }
        (o, lse)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_backward_impl(
        &self,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        o: &CudaBuf,
        lse: &CudaBuf,
        d_o: &CudaBuf,
        d: &AttnDims,
    ) -> (CudaBuf, CudaBuf, CudaBuf) {
        check(d, q.len, k.len, v.len);
        assert_eq!(o.len, q.len, "attention_backward: o length");
        assert_eq!(d_o.len, q.len, "attention_backward: d_o length");
        let rows_total = d.batch * d.heads * d.q_len;
        assert_eq!(lse.len, rows_total, "attention_backward: lse length");
        let mut dq = self.alloc(q.len);
        let mut dk = self.alloc(k.len);
        let mut dv = self.alloc(v.len);
        if q.len == 0 {
            return (dq, dk, dv);
        }
        // D = rowsum(dO ∘ O) per (batch, head, query), the contracted softmax Jacobian.
        let mut dd = self.alloc(rows_total);
        let (heads, dh, ql, n) = (
            d.heads as i32,
            d.dim_head as i32,
            d.q_len as u64,
            rows_total as u64,
        );
        launch!(
            self,
            "k_attn_rowdot",
            elems(rows_total),
            [&d_o.data, &o.data, &mut dd.data, &heads, &dh, &ql, &n]
        );
        let nb = block_rows(d, self.scratch_limit());
        let mut p = self.alloc(d.heads * nb * d.kv_len);
        let mut ds = self.alloc(d.heads * nb * d.kv_len);
        for b in 0..d.batch {
            for n0 in (0..d.q_len).step_by(nb) {
                let blk = Block {
                    d,
                    b,
                    n0,
                    rows: nb.min(d.q_len - n0),
                };
                // P = exp(scale·Q·Kᵀ − lse), recomputed
                self.gemm_raw(
                    &blk.scores(d.scale),
                    (&q.data, q.len),
                    (&k.data, k.len),
                    (&mut p.data, p.len),
                );
                let cnt = d.heads * blk.rows * d.kv_len;
                let (m, rows, off, cnt64) =
                    (d.kv_len as u64, blk.rows as i32, blk.lse_off(), cnt as u64);
                launch!(
                    self,
                    "k_attn_probs",
                    elems(cnt),
                    [&mut p.data, &lse.data, &m, &rows, &off, &ql, &cnt64]
                );
                // dV += Pᵀ·dO
                self.gemm_raw(
                    &blk.st_times_q(1.0),
                    (&p.data, p.len),
                    (&d_o.data, d_o.len),
                    (&mut dv.data, dv.len),
                );
                // dP = dO·Vᵀ
                self.gemm_raw(
                    &blk.scores(1.0),
                    (&d_o.data, d_o.len),
                    (&v.data, v.len),
                    (&mut ds.data, ds.len),
                );
                // dS = P ∘ (dP − D)
                launch!(
                    self,
                    "k_attn_dsoftmax",
                    elems(cnt),
                    [
                        &mut ds.data,
                        &p.data,
                        &dd.data,
                        &m,
                        &rows,
                        &off,
                        &ql,
                        &cnt64
                    ]
                );
                // dQ = scale·dS·K
                self.gemm_raw(
                    &blk.s_times_kv(d.scale, false),
                    (&ds.data, ds.len),
                    (&k.data, k.len),
                    (&mut dq.data, dq.len),
                );
                // dK += scale·dSᵀ·Q
                self.gemm_raw(
                    &blk.st_times_q(d.scale),
                    (&ds.data, ds.len),
                    (&q.data, q.len),
                    (&mut dk.data, dk.len),
                );
            }
        }
        (dq, dk, dv)
    }
}

#[cfg(test)]
mod tests {
    //! The block decomposition (GEMM descriptors, offsets, lse/D indexing) checked without a GPU:
    //! the same sequence of calls as the CUDA path, with the CPU backend's GEMM and host loops in
    //! place of the three kernels, must equal the CPU backend's attention.
    use super::*;
    use crate::train::backend::{Backend, Cpu};

    fn rand(n: usize, seed: u32) -> Vec<f32> {
        let mut k = seed.wrapping_mul(2654435761).wrapping_add(3);
        (0..n)
            .map(|_| {
                k = k.wrapping_mul(1664525).wrapping_add(1013904223);
                (k >> 8) as f32 / 16_777_216.0 * 4.0 - 2.0
            })
            .collect()
    }

    /// Row `r` of a `[H, rows, M]` score block → its index in a `[B, H, N]` lse/D buffer.
    fn lse_index(blk: &Block<'_>, r: usize) -> usize {
        blk.lse_off() as usize + (r / blk.rows) * blk.d.q_len + r % blk.rows
    }

    type Grads = (Vec<f32>, Vec<f32>, Vec<f32>);

    /// The CPU GEMM refuses batches whose output rows interleave (its threads would share cache
    /// lines); the heads' outputs do interleave (disjoint columns of the same rows), so the
    /// emulation runs the batch one matrix at a time, which is the same product.
    fn gemm(cpu: &Cpu, g: &Gemm, a: &[f32], b: &[f32], c: &mut Vec<f32>) {
        for i in 0..g.batch {
            let mut one = *g;
            one.batch = 1;
            one.offset_a += i * g.stride_a;
            one.offset_b += i * g.stride_b;
            one.offset_c += i * g.stride_c;
            cpu.gemm(&one, &a.to_vec(), &b.to_vec(), c);
        }
    }

    fn emulate(
        cpu: &Cpu,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        d_o: &[f32],
        d: &AttnDims,
        budget: usize,
    ) -> (Vec<f32>, Vec<f32>, Grads) {
        let (q, k, v, d_o) = (q.to_vec(), k.to_vec(), v.to_vec(), d_o.to_vec());
        let m = d.kv_len;
        let mut o = vec![0f32; q.len()];
        let mut lse = vec![0f32; d.batch * d.heads * d.q_len];
        let nb = block_rows(d, budget);
        let mut s = vec![0f32; d.heads * nb * m];
        let blocks = |b| (0..d.q_len).step_by(nb).map(move |n0| (b, n0));
        for (b, n0) in (0..d.batch).flat_map(blocks) {
            let blk = Block {
                d,
                b,
                n0,
                rows: nb.min(d.q_len - n0),
            };
            gemm(cpu, &blk.scores(d.scale), &q, &k, &mut s);
            for r in 0..d.heads * blk.rows {
                let row = &mut s[r * m..(r + 1) * m];
                let mx = row.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
                let sum: f64 = row
                    .iter_mut()
                    .map(|x| {
                        *x = (*x - mx).exp();
                        *x as f64
                    })
                    .sum();
                row.iter_mut().for_each(|x| *x *= (1.0 / sum) as f32);
                lse[lse_index(&blk, r)] = mx + (sum as f32).ln();
            }
            gemm(cpu, &blk.s_times_kv(1.0, false), &s, &v, &mut o);
        }
        let c = d.heads * d.dim_head;
        let mut dd = vec![0f32; lse.len()];
        for (i, x) in dd.iter_mut().enumerate() {
            let (qi, bh) = (i % d.q_len, i / d.q_len);
            let off = ((bh / d.heads) * d.q_len + qi) * c + (bh % d.heads) * d.dim_head;
            *x = (0..d.dim_head)
                .map(|t| d_o[off + t] as f64 * o[off + t] as f64)
                .sum::<f64>() as f32;
        }
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; q.len()],
            vec![0f32; k.len()],
            vec![0f32; v.len()],
        );
        let mut p = vec![0f32; d.heads * nb * m];
        let mut ds = vec![0f32; d.heads * nb * m];
        for (b, n0) in (0..d.batch).flat_map(blocks) {
            let blk = Block {
                d,
                b,
                n0,
                rows: nb.min(d.q_len - n0),
            };
            gemm(cpu, &blk.scores(d.scale), &q, &k, &mut p);
            for i in 0..d.heads * blk.rows * m {
                p[i] = (p[i] - lse[lse_index(&blk, i / m)]).exp();
            }
            gemm(cpu, &blk.st_times_q(1.0), &p, &d_o, &mut dv);
            gemm(cpu, &blk.scores(1.0), &d_o, &v, &mut ds);
            for i in 0..d.heads * blk.rows * m {
                ds[i] = p[i] * (ds[i] - dd[lse_index(&blk, i / m)]);
            }
            gemm(cpu, &blk.s_times_kv(d.scale, false), &ds, &k, &mut dq);
            gemm(cpu, &blk.st_times_q(d.scale), &ds, &q, &mut dk);
        }
        (o, lse, (dq, dk, dv))
    }

    fn rel(a: &[f32], b: &[f32]) -> f64 {
        let num: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
            .sum();
        let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        (num / den.max(1e-30)).sqrt()
    }

    #[test]
    fn block_decomposition_equals_cpu_attention() {
        let cpu = Cpu::new(1);
        for &(batch, heads, dim_head, q_len, kv_len) in
            &[(2, 2, 8, 16, 16), (2, 3, 4, 10, 7), (1, 1, 5, 3, 1)]
        {
            let d = AttnDims {
                batch,
                heads,
                dim_head,
                q_len,
                kv_len,
                scale: 0.4,
            };
            let c = heads * dim_head;
            let q = rand(batch * q_len * c, 1);
            let k = rand(batch * kv_len * c, 2);
            let v = rand(batch * kv_len * c, 3);
            let d_o = rand(batch * q_len * c, 4);
            let (o, lse) = cpu.attention(&q, &k, &v, &d);
            let (dq, dk, dv) = cpu.attention_backward(&q, &k, &v, &o, &lse, &d_o, &d);
            // one block, and blocks of one or a few query rows
            for budget in [1 << 26, 1, 3 * heads * kv_len] {
                let (eo, el, (edq, edk, edv)) = emulate(&cpu, &q, &k, &v, &d_o, &d, budget);
                for (what, got, want) in [
                    ("o", &eo, &o),
                    ("lse", &el, &lse),
                    ("dq", &edq, &dq),
                    ("dk", &edk, &dk),
                    ("dv", &edv, &dv),
                ] {
                    let e = rel(got, want);
                    assert!(
                        e <= 1e-5,
                        "{d:?} budget {budget}: {what} relative error {e:.2e}"
                    );
                }
            }
        }
    }
}
