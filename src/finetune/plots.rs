//! PNG plots of a run: loss and implicit accuracy per step, raw and smoothed, with axis labels.
//!
//! Drawn directly into an RGB buffer with a built-in 3x5 pixel font: plotting crates need a font
//! stack (fontconfig/freetype) for any text, which CI machines and user boxes may lack, and two
//! line charts need very little of what they offer.

use std::path::{Path, PathBuf};

use super::metrics::StepMetrics;
use super::FinetuneError;

const W: usize = 640;
const H: usize = 360;
const LEFT: usize = 70;
const RIGHT: usize = 20;
const TOP: usize = 36;
const BOTTOM: usize = 40;

/// 3x5 glyphs, one row per byte (bit 2 = left column).
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_lowercase() {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        '+' => [0, 2, 7, 2, 0],
        '(' => [1, 2, 2, 2, 1],
        ')' => [4, 2, 2, 2, 4],
        ':' => [0, 2, 0, 2, 0],
        '/' => [1, 1, 2, 4, 4],
        'a' => [2, 5, 7, 5, 5],
        'b' => [6, 5, 6, 5, 6],
        'c' => [7, 4, 4, 4, 7],
        'd' => [6, 5, 5, 5, 6],
        'e' => [7, 4, 6, 4, 7],
        'f' => [7, 4, 6, 4, 4],
        'g' => [7, 4, 5, 5, 7],
        'h' => [5, 5, 7, 5, 5],
        'i' => [7, 2, 2, 2, 7],
        'j' => [1, 1, 1, 5, 7],
        'k' => [5, 5, 6, 5, 5],
        'l' => [4, 4, 4, 4, 7],
        'm' => [5, 7, 7, 5, 5],
        'n' => [6, 5, 5, 5, 5],
        'o' => [7, 5, 5, 5, 7],
        'p' => [7, 5, 7, 4, 4],
        'q' => [7, 5, 5, 7, 1],
        'r' => [6, 5, 6, 5, 5],
        's' => [7, 4, 7, 1, 7],
        't' => [7, 2, 2, 2, 2],
        'u' => [5, 5, 5, 5, 7],
        'v' => [5, 5, 5, 5, 2],
        'w' => [5, 5, 7, 7, 5],
        'x' => [5, 5, 2, 5, 5],
        'y' => [5, 5, 2, 2, 2],
        'z' => [7, 1, 2, 4, 7],
        _ => [0, 0, 0, 0, 0],
    }
}

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Canvas {
            px: vec![255; W * H * 3],
        }
    }

    fn set(&mut self, x: i64, y: i64, rgb: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
            let i = (y as usize * W + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&rgb);
        }
    }

    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), rgb: [u8; 3], thick: bool) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        for i in 0..=n {
            let t = i as f64 / n as f64;
            let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
            let (xi, yi) = (x.round() as i64, y.round() as i64);
            self.set(xi, yi, rgb);
            if thick {
                self.set(xi, yi + 1, rgb);
                self.set(xi + 1, yi, rgb);
            }
        }
    }

    /// Text at scale 2 (6x10 glyph cells, 8 px advance).
    fn text(&mut self, x: usize, y: usize, s: &str, rgb: [u8; 3]) {
        for (k, c) in s.chars().enumerate() {
            let g = glyph(c);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..3 {
                    if bits & (4 >> col) != 0 {
                        for dy in 0..2 {
                            for dx in 0..2 {
                                self.set(
                                    (x + k * 8 + col * 2 + dx) as i64,
                                    (y + row * 2 + dy) as i64,
                                    rgb,
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

fn label(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e5) {
        format!("{v:.2e}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Draws `ys` over steps `xs` (and its moving average over `window` points) to a PNG.
pub fn line_chart(
    path: &Path,
    title: &str,
    xs: &[f64],
    ys: &[f64],
    fixed_range: Option<(f64, f64)>,
) -> Result<(), FinetuneError> {
    let mut c = Canvas::new();
    let (pw, ph) = ((W - LEFT - RIGHT) as f64, (H - TOP - BOTTOM) as f64);
    let finite: Vec<f64> = ys.iter().copied().filter(|v| v.is_finite()).collect();
    let (mut lo, mut hi) = fixed_range.unwrap_or_else(|| {
        (
            finite.iter().copied().fold(f64::INFINITY, f64::min),
            finite.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        )
    });
    if !lo.is_finite() || !hi.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        let pad = lo.abs().max(1.0) * 1e-3;
        (lo, hi) = (lo - pad, hi + pad);
    }
    let (x0, x1) = (
        xs.first().copied().unwrap_or(0.0),
        xs.last()
            .copied()
            .unwrap_or(1.0)
            .max(xs.first().copied().unwrap_or(0.0) + 1.0),
    );
    let map = |x: f64, y: f64| {
        (
            LEFT as f64 + (x - x0) / (x1 - x0) * pw,
            TOP as f64 + (1.0 - (y - lo) / (hi - lo)) * ph,
        )
    };
    let grid = [225, 225, 225];
    let axis = [60, 60, 60];
    for i in 0..=4 {
        let y = lo + (hi - lo) * i as f64 / 4.0;
        let (_, py) = map(x0, y);
        c.line((LEFT as f64, py), ((W - RIGHT) as f64, py), grid, false);
        let l = label(y);
        c.text(
            LEFT.saturating_sub(6 + 8 * l.len()),
            py as usize - 5,
            &l,
            axis,
        );
    }
    for i in 0..=4 {
        let x = x0 + (x1 - x0) * i as f64 / 4.0;
        let (px, _) = map(x, lo);
        c.line((px, TOP as f64), (px, (H - BOTTOM) as f64), grid, false);
        let l = label(x.round());
        c.text(
            (px as usize).saturating_sub(4 * l.len()),
            H - BOTTOM + 8,
            &l,
            axis,
        );
    }
    c.line(
        (LEFT as f64, TOP as f64),
        (LEFT as f64, (H - BOTTOM) as f64),
        axis,
        false,
    );
    c.line(
        (LEFT as f64, (H - BOTTOM) as f64),
        ((W - RIGHT) as f64, (H - BOTTOM) as f64),
        axis,
        false,
    );
    c.text(LEFT, 10, title, [0, 0, 0]);
    c.text(W / 2 - 16, H - 16, "step", axis);

    let pts: Vec<(f64, f64)> = xs
        .iter()
        .zip(ys)
        .filter(|(_, y)| y.is_finite())
        .map(|(&x, &y)| map(x, y.clamp(lo, hi)))
        .collect();
    for w in pts.windows(2) {
        c.line(w[0], w[1], [150, 180, 230], false);
    }
    let window = (ys.len() / 20).clamp(1, 50);
    let smooth: Vec<(f64, f64)> = (0..ys.len())
        .map(|i| {
            let s = i.saturating_sub(window - 1);
            let part: Vec<f64> = ys[s..=i]
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .collect();
            let m = part.iter().sum::<f64>() / part.len().max(1) as f64;
            map(xs[i], m.clamp(lo, hi))
        })
        .collect();
    for w in smooth.windows(2) {
        c.line(w[0], w[1], [200, 40, 40], true);
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, W as u32, H as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let err = |e: png::EncodingError| FinetuneError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let mut w = enc.write_header().map_err(err)?;
        w.write_image_data(&c.px).map_err(err)?;
    }
    crate::fsutil::atomic_write(path, &out).map_err(|e| FinetuneError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// `loss.png` and `implicit_accuracy.png` in `<run>/plots/`.
pub fn write_all(run: &Path, history: &[StepMetrics]) -> Result<Vec<PathBuf>, FinetuneError> {
    let dir = run.join("plots");
    std::fs::create_dir_all(&dir).map_err(|e| FinetuneError::Io {
        path: dir.clone(),
        message: e.to_string(),
    })?;
    let xs: Vec<f64> = history.iter().map(|m| m.step as f64).collect();
    let loss: Vec<f64> = history.iter().map(|m| m.loss).collect();
    let acc: Vec<f64> = history.iter().map(|m| m.implicit_acc).collect();
    let a = dir.join("loss.png");
    line_chart(&a, "loss (red: moving average)", &xs, &loss, None)?;
    let b = dir.join("implicit_accuracy.png");
    line_chart(
        &b,
        "implicit accuracy (red: moving average)",
        &xs,
        &acc,
        Some((0.0, 1.0)),
    )?;
    Ok(vec![a, b])
}
