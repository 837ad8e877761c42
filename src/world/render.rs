//! The renderer: a [`Layout`] (every attribute concrete, plus jitter) drawn with supersampling.
//!
//! Geometry lives on a 32-unit canvas whatever the pixel size, so a 64x64 render is the 32x32 one
//! at twice the resolution. Each pixel averages `supersample²` point samples on a regular grid
//! (box-filter anti-aliasing); later objects cover earlier ones. Everything is deterministic:
//! the same layout and options give the same bytes on every platform (plain f64 arithmetic, no
//! threads).
//!
//! Layout rules (32 units): small objects 7–9 units across, large 14–16; one-object centres on a
//! 3x3 grid (small at 6/16/26, large at 8.5/16/23.5) with ±1 unit jitter; two objects are 10–12
//! across, 16 units apart (±1 each) along the relation's axis and at independent offsets of 10–22
//! along the other, so the relation's axis always dominates (≥ 14 vs ≤ 12 units) and the objects
//! never overlap.

use super::rng::WorldRng;
use super::scene::{Color, Object, Position, Relation, Scene, Shape, Size};
use super::WorldError;
use crate::data::RgbImage;

/// The canvas size all geometry is expressed in.
pub const UNITS: f64 = 32.0;

/// One drawn object: centre and side length in canvas units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placed {
    pub object: Object,
    pub cx: f64,
    pub cy: f64,
    pub side: f64,
}

impl Placed {
    /// Whether the point (x, y) (canvas units) is inside the shape. Triangles point up: apex at
    /// the top centre, base along the bottom edge of the bounding square.
    pub fn contains(&self, x: f64, y: f64) -> bool {
        let h = self.side / 2.0;
        let (dx, dy) = (x - self.cx, y - self.cy);
        match self.object.shape {
            Shape::Square => dx.abs() <= h && dy.abs() <= h,
            Shape::Circle => dx * dx + dy * dy <= h * h,
            Shape::Triangle => dy <= h && dx.abs() <= (dy + h) / 2.0,
        }
    }
}

/// A fully specified picture.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub background: Color,
    pub objects: Vec<Placed>,
    /// The size and position a one-object scene was drawn with (chosen when the prompt left
    /// them free).
    pub size: Option<Size>,
    pub position: Option<Position>,
}

impl Layout {
    /// Picks every attribute the scene leaves free, and the jitter, from `rng`.
    pub fn sample(scene: &Scene, rng: &mut WorldRng) -> Result<Layout, WorldError> {
        scene.validate().map_err(|problem| WorldError::Scene {
            scene: scene.to_string(),
            problem,
        })?;
        let used = scene.object_colors();
        let background = match scene.background() {
            Some(b) => b,
            None => {
                let free: Vec<Color> = Color::ALL
                    .iter()
                    .copied()
                    .filter(|c| !used.contains(c))
                    .collect();
                rng.choose(&free)
            }
        };
        match *scene {
            Scene::One {
                object,
                size,
                position,
                ..
            } => {
                let size = size.unwrap_or_else(|| rng.choose(&Size::ALL));
                let pos = position.unwrap_or_else(|| rng.choose(&Position::ALL));
                let (side, centres) = match size {
                    Size::Small => (rng.range(7.0, 9.0), [6.0, 16.0, 26.0]),
                    Size::Large => (rng.range(14.0, 16.0), [8.5, 16.0, 23.5]),
                };
                let cx = centres[pos.gx as usize] + rng.range(-1.0, 1.0);
                let cy = centres[pos.gy as usize] + rng.range(-1.0, 1.0);
                Ok(Layout {
                    background,
                    objects: vec![Placed {
                        object,
                        cx,
                        cy,
                        side,
                    }],
                    size: Some(size),
                    position: Some(pos),
                })
            }
            Scene::Two {
                first,
                relation,
                second,
                ..
            } => {
                let s1 = rng.range(10.0, 12.0);
                let s2 = rng.range(10.0, 12.0);
                let near = 8.0 + rng.range(-1.0, 1.0);
                let far = 24.0 + rng.range(-1.0, 1.0);
                let o1 = rng.range(10.0, 22.0);
                let o2 = rng.range(10.0, 22.0);
                // Coordinate of the first object along the relation's axis: "left of"/"above"
                // put it at the low end.
                let (a1, a2) = match relation {
                    Relation::LeftOf | Relation::Above => (near, far),
                    Relation::RightOf | Relation::Below => (far, near),
                };
                let ((x1, y1), (x2, y2)) = if relation.horizontal() {
                    ((a1, o1), (a2, o2))
                } else {
                    ((o1, a1), (o2, a2))
                };
                Ok(Layout {
                    background,
                    objects: vec![
                        Placed {
                            object: first,
                            cx: x1,
                            cy: y1,
                            side: s1,
                        },
                        Placed {
                            object: second,
                            cx: x2,
                            cy: y2,
                            side: s2,
                        },
                    ],
                    size: None,
                    position: None,
                })
            }
        }
    }
}

/// Output size and anti-aliasing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderOptions {
    /// Width and height in pixels.
    pub size: u32,
    /// Point samples per pixel along each axis (1 = aliased).
    pub supersample: u32,
}

impl Default for RenderOptions {
    /// 32x32 (the world model's resolution) with 4x4 samples per pixel.
    fn default() -> Self {
        RenderOptions {
            size: 32,
            supersample: 4,
        }
    }
}

impl RenderOptions {
    pub fn validate(&self) -> Result<(), WorldError> {
        if !(8..=1024).contains(&self.size) {
            return Err(WorldError::Option {
                name: "size".into(),
                value: self.size.to_string(),
                problem: "images are 8 to 1024 pixels wide".into(),
            });
        }
        if !(1..=16).contains(&self.supersample) {
            return Err(WorldError::Option {
                name: "supersample".into(),
                value: self.supersample.to_string(),
                problem: "use 1 to 16 samples per pixel and axis".into(),
            });
        }
        Ok(())
    }
}

/// Draws `layout`.
pub fn render(layout: &Layout, opts: &RenderOptions) -> Result<RgbImage, WorldError> {
    opts.validate()?;
    let n = opts.size as usize;
    let ss = opts.supersample as usize;
    let unit = UNITS / n as f64;
    let bg = layout.background.rgb().map(f64::from);
    let cols: Vec<[f64; 3]> = layout
        .objects
        .iter()
        .map(|o| o.object.color.rgb().map(f64::from))
        .collect();
    let mut data = vec![0u8; n * n * 3];
    for py in 0..n {
        for px in 0..n {
            // Pixel extent in canvas units; objects whose bounding box misses it are skipped.
            let (x0, y0) = (px as f64 * unit, py as f64 * unit);
            let hit: Vec<usize> = (0..layout.objects.len())
                .filter(|&i| {
                    let o = &layout.objects[i];
                    let h = o.side / 2.0;
                    x0 + unit >= o.cx - h
                        && x0 <= o.cx + h
                        && y0 + unit >= o.cy - h
                        && y0 <= o.cy + h
                })
                .collect();
            let mut acc = [0.0f64; 3];
            for sy in 0..ss {
                for sx in 0..ss {
                    let x = x0 + (sx as f64 + 0.5) / ss as f64 * unit;
                    let y = y0 + (sy as f64 + 0.5) / ss as f64 * unit;
                    let mut c = &bg;
                    for &i in &hit {
                        if layout.objects[i].contains(x, y) {
                            c = &cols[i];
                        }
                    }
                    for k in 0..3 {
                        acc[k] += c[k];
                    }
                }
            }
            let o = (py * n + px) * 3;
            for k in 0..3 {
                data[o + k] = (acc[k] / (ss * ss) as f64).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    Ok(RgbImage {
        width: n as u32,
        height: n as u32,
        data,
    })
}

const RENDER_STREAM: u64 = 2;

/// Lays out and draws `scene` with the jitter and free attributes of `seed`.
pub fn render_prompt(
    scene: &Scene,
    seed: u64,
    opts: &RenderOptions,
) -> Result<(Layout, RgbImage), WorldError> {
    let mut rng = WorldRng::for_item(seed, RENDER_STREAM, 0);
    let layout = Layout::sample(scene, &mut rng)?;
    let img = render(&layout, opts)?;
    Ok((layout, img))
}

/// PNG bytes of an RGB image (8-bit, no metadata: rendered world images are data, not
/// provenance-tracked generations).
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>, WorldError> {
    encode_png_with_text(img, &[])
}

/// PNG bytes of an RGB image with these text chunks (keyword, text), written as iTXt in order.
/// `world annotate` uses it to carry a sampled image's provenance into a preference set.
pub fn encode_png_with_text(
    img: &RgbImage,
    text: &[(String, String)],
) -> Result<Vec<u8>, WorldError> {
    crate::provenance::encode_rgb8_png(img.width, img.height, &img.data, text).map_err(|e| {
        WorldError::Image {
            what: format!("{}x{}", img.width, img.height),
            problem: format!("PNG encoding failed: {e}"),
        }
    })
}
