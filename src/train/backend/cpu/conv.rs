//! Convolution as im2col + GEMM, and its input gradient as GEMM + col2im.
//!
//! Per sample, `col [cin·kh·kw, oh·ow]` holds the receptive field of every output pixel, so the
//! convolution is `y = W·col` with `W [cout, cin·kh·kw]`. Its input gradient is the adjoint:
//! `dcol = Wᵀ·dy`, then col2im adds every column entry back onto the input pixel it was copied
//! from. The column buffer lives only for one sample (SD-1.5's largest, 640 channels at 64×64, is
//! 94 MB).

use super::super::ConvGeom;
use super::gemm::{sgemm, View, ViewMut};
use rayon::prelude::*;

/// For one input channel and kernel offset, the input coordinate read by output coordinate `o`.
#[inline]
fn src(o: usize, k: usize, stride: usize, pad: usize) -> isize {
    (o * stride + k) as isize - pad as isize
}

/// Fills the `kh·kw` rows of `col` that belong to input channel `x_c [h, w]`.
fn im2col_channel(x_c: &[f32], rows: &mut [f32], g: &ConvGeom) {
    let (oh, ow) = (g.out_h(), g.out_w());
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let row = &mut rows[(ky * g.kw + kx) * oh * ow..][..oh * ow];
            for oy in 0..oh {
                let iy = src(oy, ky, g.stride, g.pad_top);
                let out = &mut row[oy * ow..(oy + 1) * ow];
                if iy < 0 || iy >= g.h as isize {
                    out.fill(0.0);
                    continue;
                }
                let line = &x_c[iy as usize * g.w..(iy as usize + 1) * g.w];
                for (ox, o) in out.iter_mut().enumerate() {
                    let ix = src(ox, kx, g.stride, g.pad_left);
                    *o = if ix < 0 || ix >= g.w as isize {
                        0.0
                    } else {
                        line[ix as usize]
                    };
                }
            }
        }
    }
}

/// Adds the `kh·kw` rows of `dcol` that belong to one input channel onto `dx_c [h, w]`.
fn col2im_channel(rows: &[f32], dx_c: &mut [f32], g: &ConvGeom) {
    let (oh, ow) = (g.out_h(), g.out_w());
    dx_c.fill(0.0);
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let row = &rows[(ky * g.kw + kx) * oh * ow..][..oh * ow];
            for oy in 0..oh {
                let iy = src(oy, ky, g.stride, g.pad_top);
                if iy < 0 || iy >= g.h as isize {
                    continue;
                }
                let line = &mut dx_c[iy as usize * g.w..(iy as usize + 1) * g.w];
                for (ox, &v) in row[oy * ow..(oy + 1) * ow].iter().enumerate() {
                    let ix = src(ox, kx, g.stride, g.pad_left);
                    if ix >= 0 && ix < g.w as isize {
                        line[ix as usize] += v;
                    }
                }
            }
        }
    }
}

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

/// Runs `f(sample, threads_inside)` for every sample: samples in parallel when there are at least
/// as many as threads, else one after another with the threads given to each sample's GEMM.
fn per_sample<T: Send>(
    threads: usize,
    out: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T], usize) + Sync,
) {
    if chunk == 0 {
        return;
    }
    if threads > 1 && out.len() / chunk >= threads {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(s, o)| f(s, o, 1));
    } else {
        out.chunks_mut(chunk)
            .enumerate()
            .for_each(|(s, o)| f(s, o, threads));
    }
}

pub(super) fn conv2d(
    threads: usize,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeom,
) -> Vec<f32> {
    let (oh, ow) = (g.out_h(), g.out_w());
    let (ohw, kk, hw) = (oh * ow, g.cin * g.kh * g.kw, g.h * g.w);
    let mut y = vec![0f32; g.n * g.cout * ohw];
    check(g, x.len(), w.len(), y.len());
    if let Some(b) = bias {
        assert_eq!(b.len(), g.cout, "conv2d: bias length");
    }
    per_sample(threads, &mut y, g.cout * ohw, |s, ys, t| {
        let xs = &x[s * g.cin * hw..(s + 1) * g.cin * hw];
        let col_owned;
        let col: &[f32] = if g.is_pointwise() {
            xs
        } else {
            let mut c = vec![0f32; kk * ohw];
            let rows = g.kh * g.kw * ohw;
            if t > 1 {
                c.par_chunks_mut(rows)
                    .zip(xs.par_chunks(hw))
                    .for_each(|(r, xc)| im2col_channel(xc, r, g));
            } else {
                c.chunks_mut(rows)
                    .zip(xs.chunks(hw))
                    .for_each(|(r, xc)| im2col_channel(xc, r, g));
            }
            col_owned = c;
            &col_owned
        };
        // SAFETY: W is [cout, kk], col [kk, ohw], ys [cout, ohw], all dense and in bounds; ys is
        // this sample's own output chunk.
        unsafe {
            sgemm(
                g.cout,
                ohw,
                kk,
                View {
                    ptr: w.as_ptr(),
                    rs: kk as isize,
                    cs: 1,
                },
                View {
                    ptr: col.as_ptr(),
                    rs: ohw as isize,
                    cs: 1,
                },
                ViewMut {
                    ptr: ys.as_mut_ptr(),
                    rs: ohw as isize,
                    cs: 1,
                },
                1.0,
                0.0,
                t,
            );
        }
        if let Some(b) = bias {
            for (row, &bv) in ys.chunks_mut(ohw).zip(b) {
                row.iter_mut().for_each(|v| *v += bv);
            }
        }
    });
    y
}

pub(super) fn conv2d_backward_input(
    threads: usize,
    dy: &[f32],
    w: &[f32],
    g: &ConvGeom,
) -> Vec<f32> {
    let (oh, ow) = (g.out_h(), g.out_w());
    let (ohw, kk, hw) = (oh * ow, g.cin * g.kh * g.kw, g.h * g.w);
    let mut dx = vec![0f32; g.n * g.cin * hw];
    check(g, dx.len(), w.len(), dy.len());
    per_sample(threads, &mut dx, g.cin * hw, |s, dxs, t| {
        let dys = &dy[s * g.cout * ohw..(s + 1) * g.cout * ohw];
        let wt = View {
            ptr: w.as_ptr(),
            rs: 1,
            cs: kk as isize,
        };
        let dyv = View {
            ptr: dys.as_ptr(),
            rs: ohw as isize,
            cs: 1,
        };
        if g.is_pointwise() {
            // SAFETY: Wᵀ [cin, cout] read through strides, dy [cout, hw], dxs [cin, hw], in bounds.
            unsafe {
                sgemm(
                    g.cin,
                    ohw,
                    g.cout,
                    wt,
                    dyv,
                    ViewMut {
                        ptr: dxs.as_mut_ptr(),
                        rs: ohw as isize,
                        cs: 1,
                    },
                    1.0,
                    0.0,
                    t,
                );
            }
            return;
        }
        let mut dcol = vec![0f32; kk * ohw];
        // SAFETY: Wᵀ [kk, cout], dy [cout, ohw], dcol [kk, ohw] (owned here), all in bounds.
        unsafe {
            sgemm(
                kk,
                ohw,
                g.cout,
                wt,
                dyv,
                ViewMut {
                    ptr: dcol.as_mut_ptr(),
                    rs: ohw as isize,
                    cs: 1,
                },
                1.0,
                0.0,
                t,
            );
        }
        let rows = g.kh * g.kw * ohw;
        if t > 1 {
            dxs.par_chunks_mut(hw)
                .zip(dcol.par_chunks(rows))
                .for_each(|(dxc, r)| col2im_channel(r, dxc, g));
        } else {
            dxs.chunks_mut(hw)
                .zip(dcol.chunks(rows))
                .for_each(|(dxc, r)| col2im_channel(r, dxc, g));
        }
    });
    dx
}
