//! Multi-head attention without storing the probability matrix.
//!
//! Heads are read in place: head `h` of `q [B, N, H·d]` is the `N×d` matrix at column offset `h·d`
//! with row stride `H·d`, which the strided GEMM takes directly. Queries are processed in blocks
//! so that the scores of one task (`block × kv_len`) stay small; the forward keeps only the
//! log-sum-exp of each score row, and the backward recomputes the probabilities from it (the
//! FlashAttention recipe, here with whole key rows per block).

use super::super::AttnDims;
use super::fastmath::{exp_rows, softmax_rows};
use super::gemm::{sgemm, View, ViewMut};
use super::SyncPtr;
use rayon::prelude::*;

/// Score elements per task (16 MB of f32).
const SCORE_BUDGET: usize = 1 << 22;

fn block_rows(d: &AttnDims) -> usize {
    (SCORE_BUDGET / d.kv_len.max(1)).max(16).min(d.q_len).max(1)
}

fn check(d: &AttnDims, q: usize, k: usize, v: usize) {
    let c = d.heads * d.dim_head;
    assert_eq!(q, d.batch * d.q_len * c, "attention: q length");
    assert_eq!(k, d.batch * d.kv_len * c, "attention: k length");
    assert_eq!(v, d.batch * d.kv_len * c, "attention: v length");
    assert!(d.kv_len > 0, "attention: no keys");
}

/// Row `i` of head `h`, batch `b`, query block starting at `n0`, in a `[B, len, H·d]` buffer.
fn at(d: &AttnDims, len: usize, b: usize, h: usize, n0: usize) -> usize {
    (b * len + n0) * d.heads * d.dim_head + h * d.dim_head
}

/// `scores [nb, M] = scale · Q_blk · Kᵀ` for one (batch, head, block).
///
/// # Safety
/// Offsets must be in bounds (checked by the callers' length asserts).
unsafe fn scores(
    d: &AttnDims,
    q: &[f32],
    k: &[f32],
    b: usize,
    h: usize,
    n0: usize,
    nb: usize,
) -> Vec<f32> {
    let c = (d.heads * d.dim_head) as isize;
    let m = d.kv_len;
    let mut s = vec![0f32; nb * m];
    sgemm(
        nb,
        m,
        d.dim_head,
        View {
            ptr: q.as_ptr().add(at(d, d.q_len, b, h, n0)),
            rs: c,
            cs: 1,
        },
        View {
            ptr: k.as_ptr().add(at(d, m, b, h, 0)),
            rs: 1,
            cs: c,
        },
        ViewMut {
            ptr: s.as_mut_ptr(),
            rs: m as isize,
            cs: 1,
        },
        d.scale,
        0.0,
        1,
    );
    s
}

pub(super) fn forward(q: &[f32], k: &[f32], v: &[f32], d: &AttnDims) -> (Vec<f32>, Vec<f32>) {
    check(d, q.len(), k.len(), v.len());
    let c = d.heads * d.dim_head;
    let (n, m) = (d.q_len, d.kv_len);
    let mut o = vec![0f32; q.len()];
    let mut lse = vec![0f32; d.batch * d.heads * n];
    let nb = block_rows(d);
    let tasks: Vec<(usize, usize, usize)> = (0..d.batch)
        .flat_map(|b| (0..d.heads).flat_map(move |h| (0..n).step_by(nb).map(move |n0| (b, h, n0))))
        .collect();
    let (op, lp) = (SyncPtr(o.as_mut_ptr()), SyncPtr(lse.as_mut_ptr()));
    tasks.par_iter().for_each(|&(b, h, n0)| {
        let rows = nb.min(n - n0);
        // SAFETY: lengths were checked; each task writes only rows n0..n0+rows of head h of batch
        // b in `o` (columns h·d..(h+1)·d) and the matching entries of `lse`: disjoint across tasks.
        unsafe {
            let mut p = scores(d, q, k, b, h, n0, rows);
            let lse_blk =
                std::slice::from_raw_parts_mut(lp.get().add((b * d.heads + h) * n + n0), rows);
            softmax_rows(&mut p, m, lse_blk);
            sgemm(
                rows,
                d.dim_head,
                m,
                View {
                    ptr: p.as_ptr(),
                    rs: m as isize,
                    cs: 1,
                },
                View {
                    ptr: v.as_ptr().add(at(d, m, b, h, 0)),
                    rs: c as isize,
                    cs: 1,
                },
                ViewMut {
                    ptr: op.get().add(at(d, n, b, h, n0)),
                    rs: c as isize,
                    cs: 1,
                },
                1.0,
                0.0,
                1,
            );
        }
    });
    (o, lse)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    lse: &[f32],
    d_o: &[f32],
    d: &AttnDims,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    check(d, q.len(), k.len(), v.len());
    assert_eq!(o.len(), q.len(), "attention_backward: o length");
    assert_eq!(d_o.len(), q.len(), "attention_backward: d_o length");
    assert_eq!(
        lse.len(),
        d.batch * d.heads * d.q_len,
        "attention_backward: lse length"
    );
    let c = d.heads * d.dim_head;
    let (n, m, dh) = (d.q_len, d.kv_len, d.dim_head);
    let mut dq = vec![0f32; q.len()];
    let mut dk = vec![0f32; k.len()];
    let mut dv = vec![0f32; v.len()];
    let nb = block_rows(d);
    let ptrs = (
        SyncPtr(dq.as_mut_ptr()),
        SyncPtr(dk.as_mut_ptr()),
        SyncPtr(dv.as_mut_ptr()),
    );
    let heads: Vec<(usize, usize)> = (0..d.batch)
        .flat_map(|b| (0..d.heads).map(move |h| (b, h)))
        .collect();
    heads.par_iter().for_each(|&(b, h)| {
        let (dqp, dkp, dvp) = (ptrs.0.get(), ptrs.1.get(), ptrs.2.get());
        let cs = c as isize;
        // SAFETY: lengths were checked; the task for (b, h) writes only head h's columns of batch
        // b in dq, dk and dv, so tasks write disjoint memory. Query blocks of one task run in order
        // and accumulate into dk, dv (beta = 1 on zero-initialised buffers).
        unsafe {
            let kv = |buf: &[f32]| View {
                ptr: buf.as_ptr().add(at(d, m, b, h, 0)),
                rs: cs,
                cs: 1,
            };
            let kv_t = |buf: &[f32]| View {
                ptr: buf.as_ptr().add(at(d, m, b, h, 0)),
                rs: 1,
                cs,
            };
            for n0 in (0..n).step_by(nb) {
                let rows = nb.min(n - n0);
                let qrow = at(d, n, b, h, n0);
                let q_blk = View {
                    ptr: q.as_ptr().add(qrow),
                    rs: cs,
                    cs: 1,
                };
                let do_blk = View {
                    ptr: d_o.as_ptr().add(qrow),
                    rs: cs,
                    cs: 1,
                };
                // P = exp(S − lse), recomputed.
                let mut p = scores(d, q, k, b, h, n0, rows);
                let at_lse = (b * d.heads + h) * n + n0;
                exp_rows(&mut p, m, &lse[at_lse..at_lse + rows]);
                let pt = View {
                    ptr: p.as_ptr(),
                    rs: 1,
                    cs: m as isize,
                };
                // dV += Pᵀ·dO
                let dv_out = ViewMut {
                    ptr: dvp.add(at(d, m, b, h, 0)),
                    rs: cs,
                    cs: 1,
                };
                sgemm(m, dh, rows, pt, do_blk, dv_out, 1.0, 1.0, 1);
                // dP = dO·Vᵀ
                let mut ds = vec![0f32; rows * m];
                let ds_out = ViewMut {
                    ptr: ds.as_mut_ptr(),
                    rs: m as isize,
                    cs: 1,
                };
                sgemm(rows, m, dh, do_blk, kv_t(v), ds_out, 1.0, 0.0, 1);
                // dS = P ∘ (dP − D), D_i = Σ_c dO_ic·O_ic
                for (i, (dsr, pr)) in ds.chunks_mut(m).zip(p.chunks(m)).enumerate() {
                    let off = qrow + i * c;
                    let dd: f64 = (0..dh)
                        .map(|t| d_o[off + t] as f64 * o[off + t] as f64)
                        .sum();
                    let dd = dd as f32;
                    for (x, &pv) in dsr.iter_mut().zip(pr) {
                        *x = pv * (*x - dd);
                    }
                }
                let ds_v = View {
                    ptr: ds.as_ptr(),
                    rs: m as isize,
                    cs: 1,
                };
                let ds_t = View {
                    ptr: ds.as_ptr(),
                    rs: 1,
                    cs: m as isize,
                };
                // dQ = scale·dS·K
                let dq_out = ViewMut {
                    ptr: dqp.add(qrow),
                    rs: cs,
                    cs: 1,
                };
                sgemm(rows, dh, m, ds_v, kv(k), dq_out, d.scale, 0.0, 1);
                // dK += scale·dSᵀ·Q
                let dk_out = ViewMut {
                    ptr: dkp.add(at(d, m, b, h, 0)),
                    rs: cs,
                    cs: 1,
                };
                sgemm(m, dh, rows, ds_t, q_blk, dk_out, d.scale, 1.0, 1);
            }
        }
    });
    (dq, dk, dv)
}
