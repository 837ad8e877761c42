//! Data movement: transposes (NCHW ↔ tokens), channel concatenation (skips), nearest resize.

use rayon::prelude::*;

/// Columns handled per task in [`transpose`]: one task writes `TILE` whole output rows.
const TILE: usize = 32;

pub(super) fn transpose(x: &[f32], batch: usize, rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(x.len(), batch * rows * cols, "transpose: length");
    let mut out = vec![0f32; x.len()];
    if rows == 0 || cols == 0 {
        return out;
    }
    for (xb, ob) in x.chunks(rows * cols).zip(out.chunks_mut(rows * cols)) {
        ob.par_chunks_mut(TILE * rows)
            .enumerate()
            .for_each(|(t, o)| {
                let j0 = t * TILE;
                let width = o.len() / rows;
                for i in 0..rows {
                    let src = &xb[i * cols + j0..i * cols + j0 + width];
                    for (jj, &v) in src.iter().enumerate() {
                        o[jj * rows + i] = v;
                    }
                }
            });
    }
    out
}

pub(super) fn concat_channels(
    a: &[f32],
    b: &[f32],
    n: usize,
    ca: usize,
    cb: usize,
    inner: usize,
) -> Vec<f32> {
    assert_eq!(a.len(), n * ca * inner, "concat: a length");
    assert_eq!(b.len(), n * cb * inner, "concat: b length");
    let (la, lb) = (ca * inner, cb * inner);
    let mut out = vec![0f32; a.len() + b.len()];
    if la + lb == 0 {
        return out;
    }
    out.par_chunks_mut(la + lb).enumerate().for_each(|(s, o)| {
        o[..la].copy_from_slice(&a[s * la..(s + 1) * la]);
        o[la..].copy_from_slice(&b[s * lb..(s + 1) * lb]);
    });
    out
}

pub(super) fn split_channels(
    x: &[f32],
    n: usize,
    ca: usize,
    cb: usize,
    inner: usize,
) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(x.len(), n * (ca + cb) * inner, "split: length");
    let (la, lb) = (ca * inner, cb * inner);
    let mut a = Vec::with_capacity(n * la);
    let mut b = Vec::with_capacity(n * lb);
    if la + lb > 0 {
        for s in x.chunks(la + lb) {
            a.extend_from_slice(&s[..la]);
            b.extend_from_slice(&s[la..]);
        }
    }
    (a, b)
}

/// PyTorch's `nearest_idx` for `F.interpolate(size=..., mode="nearest")`: identity and exact 2×
/// are special-cased, otherwise `min(floor(o · (in/out as f32)), in − 1)`.
fn nearest_src(o: usize, inp: usize, out: usize) -> usize {
    if out == inp {
        o
    } else if out == 2 * inp {
        o >> 1
    } else {
        let scale = inp as f32 / out as f32;
        ((o as f32 * scale).floor() as usize).min(inp - 1)
    }
}

fn index_maps(hw: (usize, usize), out_hw: (usize, usize)) -> (Vec<usize>, Vec<usize>) {
    (
        (0..out_hw.0)
            .map(|o| nearest_src(o, hw.0, out_hw.0))
            .collect(),
        (0..out_hw.1)
            .map(|o| nearest_src(o, hw.1, out_hw.1))
            .collect(),
    )
}

pub(super) fn resize_nearest(
    x: &[f32],
    nc: usize,
    hw: (usize, usize),
    out_hw: (usize, usize),
) -> Vec<f32> {
    assert_eq!(x.len(), nc * hw.0 * hw.1, "resize_nearest: length");
    let (sy, sx) = index_maps(hw, out_hw);
    let plane = out_hw.0 * out_hw.1;
    let mut out = vec![0f32; nc * plane];
    if plane == 0 {
        return out;
    }
    out.par_chunks_mut(plane).enumerate().for_each(|(p, o)| {
        let xp = &x[p * hw.0 * hw.1..(p + 1) * hw.0 * hw.1];
        for (oy, &y) in sy.iter().enumerate() {
            for (ox, &xx) in sx.iter().enumerate() {
                o[oy * out_hw.1 + ox] = xp[y * hw.1 + xx];
            }
        }
    });
    out
}

pub(super) fn resize_nearest_backward(
    dy: &[f32],
    nc: usize,
    hw: (usize, usize),
    out_hw: (usize, usize),
) -> Vec<f32> {
    assert_eq!(
        dy.len(),
        nc * out_hw.0 * out_hw.1,
        "resize_nearest_backward: length"
    );
    let (sy, sx) = index_maps(hw, out_hw);
    let plane = hw.0 * hw.1;
    let mut dx = vec![0f32; nc * plane];
    if plane == 0 {
        return dx;
    }
    dx.par_chunks_mut(plane).enumerate().for_each(|(p, d)| {
        let g = &dy[p * out_hw.0 * out_hw.1..(p + 1) * out_hw.0 * out_hw.1];
        for (oy, &y) in sy.iter().enumerate() {
            for (ox, &xx) in sx.iter().enumerate() {
                d[y * hw.1 + xx] += g[oy * out_hw.1 + ox];
            }
        }
    });
    dx
}
