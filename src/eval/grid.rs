//! Per-prompt image grids: one row per arm, one column per seed, 2-pixel white gaps, so that a
//! row-by-row comparison shows the same seed straight above/below.

use crate::engine::Image;

const GAP: u32 = 2;

/// Lays out `rows` (all images of one size) and encodes the grid as PNG (no provenance: it is
/// a view, each cell's record is in its own file).
pub fn grid_image(rows: &[&[Image]]) -> Image {
    let (w, h) = rows
        .iter()
        .flat_map(|r| r.iter())
        .map(|i| (i.width, i.height))
        .next()
        .unwrap_or((1, 1));
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0) as u32;
    let gw = cols * w + (cols + 1) * GAP;
    let gh = rows.len() as u32 * h + (rows.len() as u32 + 1) * GAP;
    let mut rgb = vec![255u8; (gw * gh * 3) as usize];
    for (r, row) in rows.iter().enumerate() {
        for (c, img) in row.iter().enumerate() {
            let x0 = GAP + c as u32 * (w + GAP);
            let y0 = GAP + r as u32 * (h + GAP);
            for y in 0..img.height.min(h) {
                let src = (y * img.width * 3) as usize;
                let dst = (((y0 + y) * gw + x0) * 3) as usize;
                let len = (img.width.min(w) * 3) as usize;
                rgb[dst..dst + len].copy_from_slice(&img.rgb[src..src + len]);
            }
        }
    }
    Image {
        width: gw,
        height: gh,
        rgb,
    }
}

pub fn grid_png(rows: &[&[Image]]) -> Result<Vec<u8>, png::EncodingError> {
    crate::provenance::encode_png(&grid_image(rows), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_land_where_expected() {
        let a = Image {
            width: 2,
            height: 1,
            rgb: vec![1, 2, 3, 4, 5, 6],
        };
        let b = Image {
            width: 2,
            height: 1,
            rgb: vec![7, 8, 9, 10, 11, 12],
        };
        let row1 = [a.clone(), b.clone()];
        let row2 = [b, a];
        let g = grid_image(&[&row1, &row2]);
        assert_eq!((g.width, g.height), (2 * 2 + 3 * GAP, 2 + 3 * GAP));
        let px = |x: u32, y: u32| &g.rgb[((y * g.width + x) * 3) as usize..][..3];
        assert_eq!(px(GAP, GAP), &[1, 2, 3]);
        assert_eq!(px(GAP + 2 + GAP + 1, GAP), &[10, 11, 12]);
        assert_eq!(px(GAP, GAP + 1 + GAP), &[7, 8, 9]);
        assert_eq!(px(0, 0), &[255, 255, 255]);
    }
}
