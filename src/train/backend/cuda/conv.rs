//! Convolution as im2col + cuBLAS GEMM, and its input gradient as GEMM + col2im (a gather, see
//! `k_col2im`). As on the CPU, a 1×1 stride-1 unpadded convolution skips the column buffer.
//!
//! The column buffer holds a chunk of samples at once so that one strided-batched GEMM covers
//! them (the weight has batch stride 0); chunks keep it under the backend's scratch limit (SD-1.5's
//! largest layer, 640 channels × 3×3 at 64×64, is 94 MB per sample).

use super::{elems, launch, Cuda, CudaBuf};
use crate::train::backend::{Backend, ConvGeom, Gemm};
use cudarc::driver::PushKernelArg;

fn check(g: &ConvGeom, x_len: usize, w_len: usize, y_len: usize) {
    assert!(
        g.stride > 0 && g.kh > 0 && g.kw > 0,
        "conv2d: bad geometry {g:?}"
    );
    assert!(
        g.h + g.pad_top + g.pad_bottom >= g.kh && g.w + g.pad_left + g.pad_right >= g.kw,
        "conv2d: input smaller than kernel {g:?}"
    );
    assert_eq!(x_len, g.n * g.cin * g.h * g.w, "conv2d: x length");
    assert_eq!(w_len, g.cout * g.cin * g.kh * g.kw, "conv2d: w length");
    assert_eq!(
        y_len,
        g.n * g.cout * g.out_h() * g.out_w(),
        "conv2d: y length"
    );
}

/// The integer geometry the two kernels take, in their argument order after `s0`.
struct KGeom {
    cin: i32,
    h: i32,
    w: i32,
    oh: i32,
    ow: i32,
    kh: i32,
    kw: i32,
    stride: i32,
    pad_top: i32,
    pad_left: i32,
}

fn kgeom(g: &ConvGeom) -> KGeom {
    let i = |v: usize, what: &str| {
        i32::try_from(v).unwrap_or_else(|_| panic!("conv2d: {what} = {v} exceeds i32 ({g:?})"))
    };
    KGeom {
        cin: i(g.cin, "cin"),
        h: i(g.h, "h"),
        w: i(g.w, "w"),
        oh: i(g.out_h(), "out_h"),
        ow: i(g.out_w(), "out_w"),
        kh: i(g.kh, "kh"),
        kw: i(g.kw, "kw"),
        stride: i(g.stride, "stride"),
        pad_top: i(g.pad_top, "pad_top"),
        pad_left: i(g.pad_left, "pad_left"),
    }
}

/// Samples per column-buffer chunk.
fn chunk(g: &ConvGeom, per_sample: usize, budget: usize) -> usize {
    (budget / per_sample.max(1)).clamp(1, g.n.max(1))
}

impl Cuda {
    pub(super) fn conv2d_impl(
        &self,
        x: &CudaBuf,
        w: &CudaBuf,
        bias: Option<&CudaBuf>,
        g: &ConvGeom,
    ) -> CudaBuf {
        let (ohw, kk, hw) = (g.out_h() * g.out_w(), g.cin * g.kh * g.kw, g.h * g.w);
        let mut y = self.alloc(g.n * g.cout * ohw);
        check(g, x.len, w.len, y.len);
        if let Some(b) = bias {
            assert_eq!(b.len, g.cout, "conv2d: bias length");
        }
        if y.len == 0 {
            return y;
        }
        if g.is_pointwise() {
            // y_s [cout, hw] = W [cout, cin] · x_s [cin, hw] for every sample at once.
            let gm = Gemm::new(g.cout, hw, g.cin).batched(g.n, 0, g.cin * hw, g.cout * hw);
            self.gemm_raw(
                &gm,
                (&w.data, w.len),
                (&x.data, x.len),
                (&mut y.data, y.len),
            );
        } else {
            let per = kk * ohw;
            let ch = chunk(g, per, self.scratch_limit());
            let mut col = self.alloc(ch * per);
            let k = kgeom(g);
            for s0 in (0..g.n).step_by(ch) {
                let cnt = ch.min(g.n - s0);
                let (s0_64, n_out) = (s0 as u64, (cnt * per) as u64);
                launch!(
                    self,
                    "k_im2col",
                    elems(cnt * per),
                    [
                        &x.data,
                        &mut col.data,
                        &s0_64,
                        &k.cin,
                        &k.h,
                        &k.w,
                        &k.oh,
                        &k.ow,
                        &k.kh,
                        &k.kw,
                        &k.stride,
                        &k.pad_top,
                        &k.pad_left,
                        &n_out
                    ]
                );
                // y_s [cout, ohw] = W [cout, kk] · col_s [kk, ohw]
                let mut gm = Gemm::new(g.cout, ohw, kk).batched(cnt, 0, per, g.cout * ohw);
                gm.offset_c = s0 * g.cout * ohw;
                self.gemm_raw(
                    &gm,
                    (&w.data, w.len),
                    (&col.data, col.len),
                    (&mut y.data, y.len),
                );
            }
        }
        if let Some(b) = bias {
            self.add_broadcast(&mut y, b, g.n, g.cout, ohw);
        }
        y
    }

    pub(super) fn conv2d_backward_input_impl(
        &self,
        dy: &CudaBuf,
        w: &CudaBuf,
        g: &ConvGeom,
    ) -> CudaBuf {
        let (ohw, kk, hw) = (g.out_h() * g.out_w(), g.cin * g.kh * g.kw, g.h * g.w);
        let mut dx = self.alloc(g.n * g.cin * hw);
        check(g, dx.len, w.len, dy.len);
        if dx.len == 0 {
            return dx;
        }
        if g.is_pointwise() {
            // dx_s [cin, hw] = Wᵀ · dy_s, W stored [cout, cin].
            let gm =
                Gemm::new(g.cin, hw, g.cout)
                    .trans_a()
                    .batched(g.n, 0, g.cout * hw, g.cin * hw);
            self.gemm_raw(
                &gm,
                (&w.data, w.len),
                (&dy.data, dy.len),
                (&mut dx.data, dx.len),
            );
            return dx;
        }
        let per = kk * ohw;
        let ch = chunk(g, per, self.scratch_limit());
        let mut dcol = self.alloc(ch * per);
        let k = kgeom(g);
        for s0 in (0..g.n).step_by(ch) {
            let cnt = ch.min(g.n - s0);
            // dcol_s [kk, ohw] = Wᵀ · dy_s, W stored [cout, kk].
            let mut gm = Gemm::new(kk, ohw, g.cout)
                .trans_a()
                .batched(cnt, 0, g.cout * ohw, per);
            gm.offset_b = s0 * g.cout * ohw;
            self.gemm_raw(
                &gm,
                (&w.data, w.len),
                (&dy.data, dy.len),
                (&mut dcol.data, dcol.len),
            );
            let (s0_64, n_out) = (s0 as u64, (cnt * g.cin * hw) as u64);
            launch!(
                self,
                "k_col2im",
                elems(cnt * g.cin * hw),
                [
                    &dcol.data,
                    &mut dx.data,
                    &s0_64,
                    &k.cin,
                    &k.h,
                    &k.w,
                    &k.oh,
                    &k.ow,
                    &k.kh,
                    &k.kw,
                    &k.stride,
                    &k.pad_top,
                    &k.pad_left,
                    &n_out
                ]
            );
        }
        dx
    }
}
