//! The CPU backend: `Vec<f32>` buffers, the `gemm` crate for every matrix product, rayon for
//! everything else, all inside one private thread pool so that the trainer uses exactly the threads
//! it was given (the machine may be shared with ONNX Runtime sessions).
//!
//! Why `gemm` (sarah-ek/gemm) over `matrixmultiply`: on this project's 2-core machines a single
//! thread of either reaches 45–65 GFLOP/s on the SD shapes, but `gemm` is clearly faster on the
//! thin shapes that attention and the tiny test model produce (k or n = 8..64: 33–73 vs 27–56
//! GFLOP/s measured), accepts arbitrary row and column strides on every operand (attention heads
//! are read in place, without permute copies), and parallelises through rayon — the same pool as
//! the rest of this backend — where `matrixmultiply` would start a second thread pool.

mod act;
mod attention;
mod conv;
mod fastmath;
mod gemm;
mod layout;
mod norm;

use super::{AttnDims, Backend, ConvGeom, Gemm, GroupNormDims};
use rayon::prelude::*;

/// Elements per rayon task in elementwise loops: big enough that scheduling costs nothing.
const CHUNK: usize = 1 << 14;

/// The CPU backend. Cheap to share by reference; owns its thread pool.
pub struct Cpu {
    pool: rayon::ThreadPool,
    threads: usize,
}

impl std::fmt::Debug for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cpu")
            .field("threads", &self.threads)
            .finish()
    }
}

impl Cpu {
    /// `threads = 0` means one per available core.
    pub fn new(threads: usize) -> Self {
        let threads = if threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("dpoimg-train-{i}"))
            .build()
            .expect("rayon thread pool");
        Cpu { pool, threads }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }
}

impl Default for Cpu {
    fn default() -> Self {
        Cpu::new(0)
    }
}

/// A raw pointer that rayon tasks may share. Each use documents why the tasks' writes are
/// disjoint.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub(crate) *mut f32);
// SAFETY: only used for writes to disjoint regions by concurrent tasks (see each use).
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// The pointer. A method (not field access) so that closures capture the whole `SyncPtr`,
    /// which is `Sync`, rather than the bare pointer field, which is not.
    #[inline]
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

impl Backend for Cpu {
    type Buf = Vec<f32>;

    fn name(&self) -> String {
        format!("cpu ({} threads)", self.threads)
    }

    fn scope<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.run(f)
    }

    fn upload(&self, data: &[f32]) -> Vec<f32> {
        data.to_vec()
    }

    fn download(&self, buf: &Vec<f32>) -> Vec<f32> {
        buf.clone()
    }

    fn zeros(&self, len: usize) -> Vec<f32> {
        vec![0.0; len]
    }

    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }

    fn gemm(&self, g: &Gemm, a: &Vec<f32>, b: &Vec<f32>, c: &mut Vec<f32>) {
        self.run(|| gemm::gemm(self.threads, g, a, b, c))
    }

    fn add(&self, a: &Vec<f32>, b: &Vec<f32>) -> Vec<f32> {
        assert_eq!(a.len(), b.len(), "add: length mismatch");
        let mut out = a.clone();
        self.add_assign(&mut out, b);
        out
    }

    fn add_assign(&self, acc: &mut Vec<f32>, x: &Vec<f32>) {
        assert_eq!(acc.len(), x.len(), "add_assign: length mismatch");
        self.run(|| {
            acc.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK))
                .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b))
        })
    }

    fn scale(&self, x: &mut Vec<f32>, s: f32) {
        self.run(|| {
            x.par_chunks_mut(CHUNK)
                .for_each(|c| c.iter_mut().for_each(|v| *v *= s))
        })
    }

    fn add_broadcast(
        &self,
        y: &mut Vec<f32>,
        v: &Vec<f32>,
        outer: usize,
        mid: usize,
        inner: usize,
    ) {
        assert_eq!(y.len(), outer * mid * inner, "add_broadcast: y length");
        assert_eq!(v.len(), mid, "add_broadcast: v length");
        if inner == 0 {
            return;
        }
        self.run(|| {
            if inner == 1 {
                y.par_chunks_mut(mid.max(1)).for_each(|row| {
                    row.iter_mut().zip(v).for_each(|(a, b)| *a += b);
                });
            } else {
                y.par_chunks_mut(inner).enumerate().for_each(|(r, row)| {
                    let b = v[r % mid];
                    row.iter_mut().for_each(|a| *a += b);
                });
            }
        })
    }

    fn sum_inner(&self, x: &Vec<f32>, rows: usize, inner: usize) -> Vec<f32> {
        assert_eq!(x.len(), rows * inner, "sum_inner: length");
        if inner == 0 {
            return vec![0.0; rows];
        }
        self.run(|| {
            x.par_chunks(inner)
                .map(|r| r.iter().map(|&v| v as f64).sum::<f64>() as f32)
                .collect()
        })
    }

    fn transpose(&self, x: &Vec<f32>, batch: usize, rows: usize, cols: usize) -> Vec<f32> {
        self.run(|| layout::transpose(x, batch, rows, cols))
    }

    fn concat_channels(
        &self,
        a: &Vec<f32>,
        b: &Vec<f32>,
        n: usize,
        ca: usize,
        cb: usize,
        inner: usize,
    ) -> Vec<f32> {
        self.run(|| layout::concat_channels(a, b, n, ca, cb, inner))
    }

    fn split_channels(
        &self,
        x: &Vec<f32>,
        n: usize,
        ca: usize,
        cb: usize,
        inner: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        self.run(|| layout::split_channels(x, n, ca, cb, inner))
    }

    fn silu(&self, x: &Vec<f32>) -> Vec<f32> {
        self.run(|| act::silu(x))
    }

    fn silu_backward(&self, x: &Vec<f32>, dy: &Vec<f32>) -> Vec<f32> {
        self.run(|| act::silu_backward(x, dy))
    }

    fn geglu(&self, h: &Vec<f32>, rows: usize, inner: usize) -> Vec<f32> {
        self.run(|| act::geglu(h, rows, inner))
    }

    fn geglu_backward(&self, h: &Vec<f32>, dy: &Vec<f32>, rows: usize, inner: usize) -> Vec<f32> {
        self.run(|| act::geglu_backward(h, dy, rows, inner))
    }

    fn group_norm(
        &self,
        x: &Vec<f32>,
        d: &GroupNormDims,
        gamma: &Vec<f32>,
        beta: &Vec<f32>,
        silu: bool,
    ) -> (Vec<f32>, Vec<f32>) {
        self.run(|| norm::group_norm(x, d, gamma, beta, silu))
    }

    fn group_norm_backward(
        &self,
        x: &Vec<f32>,
        stats: &Vec<f32>,
        gamma: &Vec<f32>,
        beta: &Vec<f32>,
        dy: &Vec<f32>,
        d: &GroupNormDims,
        silu: bool,
    ) -> Vec<f32> {
        self.run(|| norm::group_norm_backward(x, stats, gamma, beta, dy, d, silu))
    }

    fn layer_norm(
        &self,
        x: &Vec<f32>,
        rows: usize,
        dim: usize,
        eps: f32,
        gamma: &Vec<f32>,
        beta: &Vec<f32>,
    ) -> (Vec<f32>, Vec<f32>) {
        self.run(|| norm::layer_norm(x, rows, dim, eps, gamma, beta))
    }

    fn layer_norm_backward(
        &self,
        x: &Vec<f32>,
        stats: &Vec<f32>,
        gamma: &Vec<f32>,
        dy: &Vec<f32>,
        rows: usize,
        dim: usize,
    ) -> Vec<f32> {
        self.run(|| norm::layer_norm_backward(x, stats, gamma, dy, rows, dim))
    }

    fn conv2d(
        &self,
        x: &Vec<f32>,
        w: &Vec<f32>,
        bias: Option<&Vec<f32>>,
        g: &ConvGeom,
    ) -> Vec<f32> {
        self.run(|| conv::conv2d(self.threads, x, w, bias.map(|b| b.as_slice()), g))
    }

    fn conv2d_backward_input(&self, dy: &Vec<f32>, w: &Vec<f32>, g: &ConvGeom) -> Vec<f32> {
        self.run(|| conv::conv2d_backward_input(self.threads, dy, w, g))
    }

    fn resize_nearest(
        &self,
        x: &Vec<f32>,
        nc: usize,
        hw: (usize, usize),
        out_hw: (usize, usize),
    ) -> Vec<f32> {
        self.run(|| layout::resize_nearest(x, nc, hw, out_hw))
    }

    fn resize_nearest_backward(
        &self,
        dy: &Vec<f32>,
        nc: usize,
        hw: (usize, usize),
        out_hw: (usize, usize),
    ) -> Vec<f32> {
        self.run(|| layout::resize_nearest_backward(dy, nc, hw, out_hw))
    }

    fn attention(
        &self,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        d: &AttnDims,
    ) -> (Vec<f32>, Vec<f32>) {
        self.run(|| attention::forward(q, k, v, d))
    }

    fn attention_backward(
        &self,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        o: &Vec<f32>,
        lse: &Vec<f32>,
        d_o: &Vec<f32>,
        d: &AttnDims,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        self.run(|| attention::backward(q, k, v, o, lse, d_o, d))
    }
}
