//! Row-major strided-batched GEMM on cuBLAS (column-major).
//!
//! A row-major `m×n` matrix with row stride `ld` is, byte for byte, a column-major `n×m` matrix
//! with leading dimension `ld`: its transpose. So row-major `C = op(A)·op(B)` is column-major
//! `Cᵀ = op(B)ᵀ·op(A)ᵀ`, which cuBLAS computes when given B as its first operand and A as its
//! second, with the same transpose flags and leading dimensions, and `m`, `n` swapped. Batch
//! strides and offsets carry over unchanged.

use super::{elems, launch, ok, Cuda};
use crate::train::backend::Gemm;
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{Gemm as _, GemmConfig, StridedBatchedConfig};
use cudarc::driver::{CudaSlice, PushKernelArg};

fn int(v: usize, what: &str, g: &Gemm) -> i32 {
    i32::try_from(v)
        .unwrap_or_else(|_| panic!("gemm: {what} = {v} exceeds cuBLAS' int range ({g:?})"))
}

fn stride(v: usize) -> i64 {
    i64::try_from(v).expect("gemm stride fits i64")
}

/// The cuBLAS (column-major) call computing the row-major product `g`: B becomes cuBLAS' first
/// operand and A its second, `m` and `n` swap, flags, leading dimensions and strides carry over.
pub(super) fn col_major(g: &Gemm) -> StridedBatchedConfig<f32> {
    let op = |t: bool| {
        if t {
            cublasOperation_t::CUBLAS_OP_T
        } else {
            cublasOperation_t::CUBLAS_OP_N
        }
    };
    StridedBatchedConfig {
        gemm: GemmConfig {
            transa: op(g.trans_b),
            transb: op(g.trans_a),
            m: int(g.n, "n", g),
            n: int(g.m, "m", g),
            k: int(g.k, "k", g),
            alpha: g.alpha,
            lda: int(g.ldb, "ldb", g),
            ldb: int(g.lda, "lda", g),
            beta: g.beta,
            ldc: int(g.ldc, "ldc", g),
        },
        batch_size: int(g.batch, "batch", g),
        stride_a: stride(g.stride_b),
        stride_b: stride(g.stride_a),
        stride_c: stride(g.stride_c),
    }
}

impl Cuda {
    /// See [`Gemm`]; each operand is a device buffer with its logical length, checked against
    /// [`Gemm::extents`] before anything is queued.
    pub(super) fn gemm_raw(
        &self,
        g: &Gemm,
        (a, a_len): (&CudaSlice<f32>, usize),
        (b, b_len): (&CudaSlice<f32>, usize),
        (c, c_len): (&mut CudaSlice<f32>, usize),
    ) {
        let (ea, eb, ec) = g.extents();
        assert!(
            ea <= a_len && eb <= b_len && ec <= c_len,
            "gemm: operands too short for {g:?}: need ({ea}, {eb}, {ec}), have ({a_len}, {b_len}, {c_len})"
        );
        if g.m == 0 || g.n == 0 || g.batch == 0 {
            return;
        }
        if g.k == 0 {
            // C = beta·C: nothing to multiply, and cuBLAS' leading-dimension rules for empty
            // operands differ from ours, so a kernel does it.
            let n_out = g.batch * g.m * g.n;
            let (off, m, n, ldc, sc, beta, nn) = (
                g.offset_c as u64,
                g.m as u64,
                g.n as u64,
                g.ldc as u64,
                g.stride_c as u64,
                g.beta,
                n_out as u64,
            );
            launch!(
                self,
                "k_gemm_k0",
                elems(n_out),
                [c, &off, &m, &n, &ldc, &sc, &beta, &nn]
            );
            return;
        }
        let cfg = col_major(g);
        // In bounds: m, n, k > 0 make every extent exceed its offset.
        let av = a.slice(g.offset_a..);
        let bv = b.slice(g.offset_b..);
        let mut cv = c.slice_mut(g.offset_c..);
        let blas = self.blas.lock().unwrap_or_else(|e| e.into_inner());
        ok(self.ctx.bind_to_thread(), "binding the CUDA context");
        // SAFETY: the extents check above bounds every element cuBLAS reads or writes; C is a
        // distinct buffer from A and B (a `&mut` borrow).
        ok(
            unsafe { blas.gemm_strided_batched(cfg, &bv, &av, &mut cv) },
            "cublasSgemmStridedBatched",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::backend::{Backend, Cpu};

    /// cuBLAS' documented strided-batched column-major contract, naively: for each batch,
    /// `C[r + c·ldc] = alpha·Σ_p op(A)(r, p)·op(B)(p, c) + beta·C[r + c·ldc]`, where
    /// `op(X)(i, j)` is `X[i + j·ld]`, or `X[j + i·ld]` when transposed.
    fn reference_cublas(
        cfg: &StridedBatchedConfig<f32>,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        (oa, ob, oc): (usize, usize, usize),
    ) {
        let g = &cfg.gemm;
        let at = |x: &[f32], t: cublasOperation_t, ld: i32, i: usize, j: usize| {
            if t == cublasOperation_t::CUBLAS_OP_N {
                x[i + j * ld as usize]
            } else {
                x[j + i * ld as usize]
            }
        };
        for bi in 0..cfg.batch_size as usize {
            let a = &a[oa + bi * cfg.stride_a as usize..];
            let b = &b[ob + bi * cfg.stride_b as usize..];
            let c = &mut c[oc + bi * cfg.stride_c as usize..];
            for r in 0..g.m as usize {
                for col in 0..g.n as usize {
                    let mut s = 0f64;
                    for p in 0..g.k as usize {
                        s += at(a, g.transa, g.lda, r, p) as f64
                            * at(b, g.transb, g.ldb, p, col) as f64;
                    }
                    let dst = &mut c[r + col * g.ldc as usize];
                    *dst = g.alpha * s as f32 + if g.beta == 0.0 { 0.0 } else { g.beta * *dst };
                }
            }
        }
    }

    fn rand(n: usize, seed: u32) -> Vec<f32> {
        let mut k = seed.wrapping_mul(2654435761).wrapping_add(7);
        (0..n)
            .map(|_| {
                k = k.wrapping_mul(1664525).wrapping_add(1013904223);
                (k >> 8) as f32 / 16_777_216.0 - 0.5
            })
            .collect()
    }

    /// The row-/column-major mapping, checked without a GPU: the cuBLAS call that `col_major`
    /// builds, evaluated by the reference above, equals the CPU backend's row-major GEMM.
    #[test]
    fn col_major_mapping_equals_row_major_gemm() {
        let cpu = Cpu::new(1);
        let mut n_cases = 0;
        for (i, &(m, n, k)) in [(1, 1, 1), (3, 5, 7), (8, 2, 9), (6, 11, 4)]
            .iter()
            .enumerate()
        {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                for (batch, shared_a, pad, acc) in [(1, false, 0, false), (3, true, 2, true)] {
                    let mut g = Gemm::new(m, n, k);
                    if ta {
                        g = g.trans_a();
                    }
                    if tb {
                        g = g.trans_b();
                    }
                    g.lda += pad;
                    g.ldb += pad;
                    g.ldc += pad;
                    g = g.alpha(0.75);
                    if acc {
                        g = g.accumulate();
                    }
                    let ar = if ta { k } else { m };
                    let br = if tb { n } else { k };
                    let sa = if shared_a { 0 } else { ar * g.lda };
                    g = g.batched(batch, sa, br * g.ldb, m * g.ldc);
                    g.offset_a = pad;
                    g.offset_b = 2 * pad;
                    g.offset_c = pad;
                    let (ea, eb, ec) = g.extents();
                    let seed = 100 * i as u32 + 10 * ta as u32 + tb as u32;
                    let (a, b) = (rand(ea, seed), rand(eb, seed + 1));
                    let c0 = rand(ec, seed + 2);
                    let mut want = c0.clone();
                    cpu.gemm(&g, &a, &b, &mut want);
                    let mut got = c0.clone();
                    let cfg = col_major(&g);
                    // cuBLAS' first operand is B, its second A
                    reference_cublas(&cfg, &b, &a, &mut got, (g.offset_b, g.offset_a, g.offset_c));
                    for (x, y) in got.iter().zip(&want) {
                        assert!((x - y).abs() <= 1e-5, "{g:?}: {x} vs {y}");
                    }
                    n_cases += 1;
                }
            }
        }
        assert_eq!(n_cases, 32);
    }
}
