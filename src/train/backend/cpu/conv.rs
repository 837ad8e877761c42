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

/// With stride 1, the output columns `[lo, hi)` of kernel column `kx` read input columns
/// `lo + kx − pad_left ..`: one contiguous run, so a row is a copy (or an add) plus zero edges
/// instead of a bounds test per element.
fn stride1_span(g: &ConvGeom, kx: usize, ow: usize) -> (usize, usize) {
    let lo = g.pad_left.saturating_sub(kx).min(ow);
    let hi = (g.w + g.pad_left).saturating_sub(kx).min(ow).max(lo);
    (lo, hi)
}

/// Fills the `kh·kw` rows of `col` that belong to input channel `x_c [h, w]`.
fn im2col_channel(x_c: &[f32], rows: &mut [f32], g: &ConvGeom) {
    let (oh, ow) = (g.out_h(), g.out_w());
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let row = &mut rows[(ky * g.kw + kx) * oh * ow..][..oh * ow];
            let (lo, hi) = stride1_span(g, kx, ow);
            for oy in 0..oh {
                let iy = src(oy, ky, g.stride, g.pad_top);
                let out = &mut row[oy * ow..(oy + 1) * ow];
                if iy < 0 || iy >= g.h as isize {
                    out.fill(0.0);
                    continue;
                }
                let line = &x_c[iy as usize * g.w..(iy as usize + 1) * g.w];
                if g.stride == 1 {
                    out[..lo].fill(0.0);
                    if hi > lo {
                        let src = &line[lo + kx - g.pad_left..hi + kx - g.pad_left];
                        out[lo..hi].copy_from_slice(src);
                    }
                    out[hi..].fill(0.0);
                    continue;
                }
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
            let (lo, hi) = stride1_span(g, kx, ow);
            for oy in 0..oh {
                let iy = src(oy, ky, g.stride, g.pad_top);
                if iy < 0 || iy >= g.h as isize {
                    continue;
                }
                let line = &mut dx_c[iy as usize * g.w..(iy as usize + 1) * g.w];
                if g.stride == 1 {
                    if hi == lo {
                        continue;
                    }
                    let dst = &mut line[lo + kx - g.pad_left..hi + kx - g.pad_left];
                    for (d, &v) in dst.iter_mut().zip(&row[oy * ow + lo..oy * ow + hi]) {
                        *d += v;
                    }
                    continue;
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn geom(h: usize, w: usize, k: usize, stride: usize, pads: [usize; 4]) -> ConvGeom {
        ConvGeom {
            n: 1,
            cin: 1,
            h,
            w,
            cout: 1,
            kh: k,
            kw: k,
            stride,
            pad_top: pads[0],
            pad_left: pads[1],
            pad_bottom: pads[2],
            pad_right: pads[3],
        }
    }

    /// The definition, one bounds test per element.
    fn naive_cols(x: &[f32], g: &ConvGeom) -> Vec<f32> {
        let (oh, ow) = (g.out_h(), g.out_w());
        let mut out = Vec::new();
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let (iy, ix) = (
                            src(oy, ky, g.stride, g.pad_top),
                            src(ox, kx, g.stride, g.pad_left),
                        );
                        let inside = iy >= 0 && ix >= 0 && iy < g.h as isize && ix < g.w as isize;
                        out.push(if inside {
                            x[iy as usize * g.w + ix as usize]
                        } else {
                            0.0
                        });
                    }
                }
            }
        }
        out
    }

    #[test]
    fn im2col_and_col2im_equal_the_definition_for_every_padding() {
        let cases = [
            geom(5, 7, 3, 1, [1, 1, 1, 1]),
            geom(5, 7, 3, 1, [0, 2, 1, 0]),
            geom(4, 4, 1, 1, [0, 0, 0, 0]),
            geom(6, 5, 3, 2, [1, 1, 1, 1]),
            geom(3, 3, 5, 1, [4, 4, 4, 4]),
            geom(2, 9, 3, 1, [1, 0, 0, 2]),
        ];
        for g in &cases {
            let x: Vec<f32> = (0..g.h * g.w).map(|i| i as f32 + 1.0).collect();
            let want = naive_cols(&x, g);
            let mut got = vec![f32::NAN; want.len()];
            im2col_channel(&x, &mut got, g);
            assert_eq!(got, want, "im2col {g:?}");
            // col2im is im2col's adjoint: <col2im(r), x> = <r, im2col(x)> for any r
            let r: Vec<f32> = (0..want.len())
                .map(|i| ((i * 7) % 5) as f32 - 2.0)
                .collect();
            let mut dx = vec![f32::NAN; x.len()];
            col2im_channel(&r, &mut dx, g);
            let lhs: f32 = dx.iter().zip(&x).map(|(a, b)| a * b).sum();
            let rhs: f32 = r.iter().zip(&want).map(|(a, b)| a * b).sum();
            assert_eq!(lhs, rhs, "col2im {g:?}");
        }
    }
}
