//! Matrix products on the CPU through the `gemm` crate.

use super::super::Gemm;
use super::SyncPtr;
use gemm::Parallelism;
use rayon::prelude::*;

/// Below this many multiply-adds a product runs on one thread: splitting costs more than it saves.
const PAR_WORK: usize = 1 << 18;

/// A strided view of one operand: element `(r, c)` at `ptr + r·rs + c·cs`.
#[derive(Clone, Copy)]
pub(crate) struct View {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

/// The output of a product.
#[derive(Clone, Copy)]
pub(crate) struct ViewMut {
    pub ptr: *mut f32,
    pub rs: isize,
    pub cs: isize,
}

/// `C = alpha·A·B + beta·C` (`beta` 0 or 1 ignores or keeps C), A `m×k`, B `k×n`.
///
/// # Safety
/// Every view must address valid memory for its `m×k`, `k×n`, `m×n` extent, and C must not alias
/// A or B nor be written concurrently by another task.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: View,
    b: View,
    c: ViewMut,
    alpha: f32,
    beta: f32,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if beta == 0.0 {
            for i in 0..m {
                for j in 0..n {
                    *c.ptr.offset(i as isize * c.rs + j as isize * c.cs) = 0.0;
                }
            }
        }
        return;
    }
    let par = if threads > 1 && m * n * k >= PAR_WORK {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // The gemm crate computes dst := alpha·dst + beta·lhs·rhs (its alpha/beta are swapped with
    // respect to BLAS) and reads dst only when asked to.
    gemm::gemm(
        m,
        n,
        k,
        c.ptr,
        c.cs,
        c.rs,
        beta != 0.0,
        a.ptr,
        a.cs,
        a.rs,
        b.ptr,
        b.cs,
        b.rs,
        beta,
        alpha,
        false,
        false,
        false,
        par,
    );
}

/// [`Gemm`] on host buffers: batches run in parallel (one thread each) when there are enough of
/// them, otherwise one after another with the product itself parallelised.
pub(super) fn gemm(threads: usize, g: &Gemm, a: &[f32], b: &[f32], c: &mut [f32]) {
    let (la, lb, lc) = g.extents();
    assert!(
        a.len() >= la && b.len() >= lb && c.len() >= lc,
        "gemm {g:?}: buffers too short ({} {} {}; need {la} {lb} {lc})",
        a.len(),
        b.len(),
        c.len()
    );
    if g.batch == 0 {
        return;
    }
    assert!(
        g.batch == 1 || g.m == 0 || g.n == 0 || g.stride_c >= (g.m - 1) * g.ldc + g.n,
        "gemm: output batches overlap"
    );
    let (a_rs, a_cs) = if g.trans_a {
        (1, g.lda as isize)
    } else {
        (g.lda as isize, 1)
    };
    let (b_rs, b_cs) = if g.trans_b {
        (1, g.ldb as isize)
    } else {
        (g.ldb as isize, 1)
    };
    let cp = SyncPtr(c.as_mut_ptr());
    let one = |i: usize, t: usize| {
        // SAFETY: extents were checked above; batch i writes only its own C_i, and C_i regions
        // do not overlap (stride_c ≥ one matrix), so concurrent batches write disjoint memory.
        unsafe {
            sgemm(
                g.m,
                g.n,
                g.k,
                View {
                    ptr: a.as_ptr().add(g.offset_a + i * g.stride_a),
                    rs: a_rs,
                    cs: a_cs,
                },
                View {
                    ptr: b.as_ptr().add(g.offset_b + i * g.stride_b),
                    rs: b_rs,
                    cs: b_cs,
                },
                ViewMut {
                    ptr: cp.get().add(g.offset_c + i * g.stride_c),
                    rs: g.ldc as isize,
                    cs: 1,
                },
                g.alpha,
                g.beta,
                t,
            )
        }
    };
    if g.batch >= threads && threads > 1 {
        (0..g.batch).into_par_iter().for_each(|i| one(i, 1));
    } else {
        (0..g.batch).for_each(|i| one(i, threads));
    }
}
