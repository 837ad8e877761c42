//! The attribute checker: reads a world picture back from any RGB image, and scores an image
//! against a prompt.
//!
//! Reading ([`read_image`]): every pixel gets the nearest palette colour (squared RGB distance);
//! the most common label is the background; every other object colour (white, black and gray are
//! background-only) covering at least 6/1024 of the image is a candidate object, represented by
//! its largest 8-connected component. Leaving the greys out matters: blurred edges between
//! complementary colours (blue/yellow, red/cyan) average to gray and would otherwise outnumber a
//! small object. Objects are ordered by pixel count.
//!
//! Per object, a soft mask: each pixel of the component's box grown by one pixel (component
//! pixels and their neighbours only) gets its coverage, the projection of its colour on the
//! segment from the background colour to the object colour (an anti-aliased edge pixel of
//! coverage a is exactly `a·object + (1 − a)·background`). From it, resolution-independent
//! measures: the widest row and tallest column (→ size: the larger, in units of the 32-unit
//! canvas, under 11.5 is small), fill = area / (widest row · tallest column) (square 1, circle
//! π/4 ≈ 0.785, triangle 1/2) and the skewness of the vertical mass distribution (an upward
//! triangle's density grows linearly downwards: −0.566; circles and squares 0). Shape rule:
//! triangle when skewness < −0.28, else square when fill > 0.89, else circle. Position: the
//! component's bounding-box centre, in thirds of the canvas along each axis. Binary measures
//! (pixel fill of the box) misread small circles as squares at 32x32 (0.3 % of renders); the soft
//! ones read every render right.
//!
//! Checking ([`check()`]): only the attributes the prompt names are judged. One object: the
//! largest object must have the prompt's colour; shape, size and position are measured on the
//! object of the prompt's colour if there is one (else on the largest), so a wrong-colour image
//! can still earn partial credit. Two objects: the two largest objects must have the two prompt
//! colours; each must have its shape; the relation holds when the second-minus-first centre
//! offset along the relation's axis has the right sign and exceeds the offset along the other
//! axis. The graded [`CheckResult::score`] averages per-attribute credits: 1 when correct; a
//! wrong position earns 0.5 · (4 − d) / 3 for grid (Manhattan) distance d; a two-object colour or
//! shape check earns 0.5 per object; a relation with the right sign but the wrong dominant axis
//! earns 0.5; everything else 0. Measured accuracy: [`crate::world`].

use super::scene::{Color, Position, Relation, Scene, Shape, Size};
use super::WorldError;
use crate::data::RgbImage;
use std::collections::VecDeque;

/// A judged attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Attribute {
    Background,
    Color,
    Shape,
    Size,
    Position,
    Relation,
}

impl Attribute {
    pub const ALL: [Attribute; 6] = [
        Attribute::Background,
        Attribute::Color,
        Attribute::Shape,
        Attribute::Size,
        Attribute::Position,
        Attribute::Relation,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Attribute::Background => "background",
            Attribute::Color => "color",
            Attribute::Shape => "shape",
            Attribute::Size => "size",
            Attribute::Position => "position",
            Attribute::Relation => "relation",
        }
    }
}

/// One object found in an image. Coordinates in canvas units (the image scaled to 32x32).
#[derive(Debug, Clone, PartialEq)]
pub struct FoundObject {
    pub color: Color,
    pub shape: Shape,
    pub size: Size,
    pub position: Position,
    /// Bounding-box centre.
    pub cx: f64,
    pub cy: f64,
    /// Widest row and tallest column of the soft mask.
    pub width: f64,
    pub height: f64,
    /// Pixels in the component.
    pub pixels: usize,
    /// Pixels / bounding-box area.
    pub fill: f64,
    /// Skewness of the soft mask's vertical distribution (−0.566 for an upward triangle).
    pub skew: f64,
}

/// What the checker sees in an image.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub background: Color,
    /// Candidate objects, most pixels first.
    pub objects: Vec<FoundObject>,
}

/// Scores of one image against one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    /// The attributes the prompt names, each with whether the image shows it.
    pub attributes: Vec<(Attribute, bool)>,
    /// Every named attribute correct.
    pub all_correct: bool,
    /// Graded score in [0, 1] (module docs), for ranking images of one prompt.
    pub score: f64,
    pub reading: Reading,
}

impl CheckResult {
    /// The verdict on one attribute (`None` when the prompt does not name it).
    pub fn get(&self, a: Attribute) -> Option<bool> {
        self.attributes.iter().find(|(x, _)| *x == a).map(|p| p.1)
    }
}

/// Smallest object, as a fraction of the image (6 pixels of a 32x32 image).
const MIN_OBJECT_FRACTION: f64 = 6.0 / 1024.0;

fn nearest(p: &[u8]) -> usize {
    let mut best = (u32::MAX, 0usize);
    for (i, c) in Color::ALL.iter().enumerate() {
        let rgb = c.rgb();
        let d: u32 = (0..3)
            .map(|k| {
                let v = p[k] as i32 - rgb[k] as i32;
                (v * v) as u32
            })
            .sum();
        if d < best.0 {
            best = (d, i);
        }
    }
    best.1
}

/// Largest 8-connected component of `labels == want`, as pixel indices.
fn largest_component(labels: &[u8], w: usize, h: usize, want: u8) -> Vec<usize> {
    let mut seen = vec![false; labels.len()];
    let mut best: Vec<usize> = Vec::new();
    let mut queue = VecDeque::new();
    for start in 0..labels.len() {
        if labels[start] != want || seen[start] {
            continue;
        }
        seen[start] = true;
        queue.push_back(start);
        let mut comp = Vec::new();
        while let Some(i) = queue.pop_front() {
            comp.push(i);
            let (x, y) = ((i % w) as isize, (i / w) as isize);
            for dy in -1..=1isize {
                for dx in -1..=1isize {
                    let (nx, ny) = (x + dx, y + dy);
                    if nx < 0 || ny < 0 || nx >= w as isize || ny >= h as isize {
                        continue;
                    }
                    let j = ny as usize * w + nx as usize;
                    if labels[j] == want && !seen[j] {
                        seen[j] = true;
                        queue.push_back(j);
                    }
                }
            }
        }
        if comp.len() > best.len() {
            best = comp;
        }
    }
    best
}

fn third(v: f64) -> u8 {
    if v < 32.0 / 3.0 {
        0
    } else if v > 64.0 / 3.0 {
        2
    } else {
        1
    }
}

/// Per-pixel coverage of colour `fg` over background `bg`: the pixel's projection on the segment
/// from `bg` to `fg`, clamped to [0, 1] (an anti-aliased edge pixel of coverage a is exactly
/// `a·fg + (1 − a)·bg`).
fn coverage(p: &[u8], fg: [u8; 3], bg: [u8; 3]) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for k in 0..3 {
        let d = fg[k] as f64 - bg[k] as f64;
        num += (p[k] as f64 - bg[k] as f64) * d;
        den += d * d;
    }
    if den == 0.0 {
        return 0.0;
    }
    (num / den).clamp(0.0, 1.0)
}

fn measure(
    img: &RgbImage,
    color: Color,
    background: Color,
    pixels: &[usize],
    w: usize,
    h: usize,
) -> FoundObject {
    let (sx, sy) = (32.0 / w as f64, 32.0 / h as f64);
    let (mut x0, mut x1, mut y0, mut y1) = (usize::MAX, 0, usize::MAX, 0);
    for &i in pixels {
        let (x, y) = (i % w, i / w);
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    // Soft mask over the component's box grown by one pixel (where its anti-aliased edge lies):
    // area, row and column profiles, and vertical moments, all in pixels.
    let (gx0, gy0) = (x0.saturating_sub(1), y0.saturating_sub(1));
    let (gx1, gy1) = ((x1 + 1).min(w - 1), (y1 + 1).min(h - 1));
    // The component dilated by one pixel (8-neighbourhood).
    let mut near = vec![false; w * h];
    for &i in pixels {
        let (x, y) = (i % w, i / w);
        for ny in y.saturating_sub(1)..=(y + 1).min(h - 1) {
            for nx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                near[ny * w + nx] = true;
            }
        }
    }
    let (fg, bg) = (color.rgb(), background.rgb());
    let mut rows = vec![0.0f64; gy1 - gy0 + 1];
    let mut cols = vec![0.0f64; gx1 - gx0 + 1];
    let (mut area, mut my) = (0.0, 0.0);
    let mut alphas = Vec::new();
    for y in gy0..=gy1 {
        for x in gx0..=gx1 {
            let i = y * w + x;
            // Inside the box only the component and its direct neighbours count, so another
            // object of the same colour nearby does not leak in.
            if !near[i] {
                continue;
            }
            let a = coverage(&img.data[i * 3..i * 3 + 3], fg, bg);
            rows[y - gy0] += a;
            cols[x - gx0] += a;
            area += a;
            my += a * (y as f64 + 0.5);
            alphas.push((y as f64 + 0.5, a));
        }
    }
    let area = area.max(1e-9);
    my /= area;
    let (mut m2, mut m3) = (0.0, 0.0);
    for (y, a) in &alphas {
        let d = y - my;
        m2 += a * d * d;
        m3 += a * d * d * d;
    }
    m2 /= area;
    m3 /= area;
    let skew = if m2 > 0.0 { m3 / m2.powf(1.5) } else { 0.0 };
    let max_w = rows.iter().fold(0.0f64, |m, v| m.max(*v));
    let max_h = cols.iter().fold(0.0f64, |m, v| m.max(*v));
    let fill = area / (max_w * max_h).max(1e-9);
    // Upward triangle: density grows linearly downwards, skewness −0.566; circles and
    // squares are symmetric (0).
    let shape = if skew < -0.28 {
        Shape::Triangle
    } else if fill > 0.89 {
        Shape::Square
    } else {
        Shape::Circle
    };
    let cx = (x0 + x1 + 1) as f64 / 2.0 * sx;
    let cy = (y0 + y1 + 1) as f64 / 2.0 * sy;
    let (width, height) = (max_w * sx, max_h * sy);
    FoundObject {
        color,
        shape,
        size: if width.max(height) < 11.5 {
            Size::Small
        } else {
            Size::Large
        },
        position: Position {
            gx: third(cx),
            gy: third(cy),
        },
        cx,
        cy,
        width,
        height,
        pixels: pixels.len(),
        fill,
        skew,
    }
}

/// Reads background and objects from an RGB image of any size (module docs).
pub fn read_image(img: &RgbImage) -> Result<Reading, WorldError> {
    let (w, h) = (img.width as usize, img.height as usize);
    if w < 8 || h < 8 {
        return Err(WorldError::Image {
            what: format!("{w}x{h}"),
            problem: "too small to read (at least 8x8 pixels)".into(),
        });
    }
    if img.data.len() != w * h * 3 {
        return Err(WorldError::Image {
            what: format!("{w}x{h}"),
            problem: format!(
                "has {} bytes, expected {} (8-bit RGB)",
                img.data.len(),
                w * h * 3
            ),
        });
    }
    let labels: Vec<u8> = img.data.chunks_exact(3).map(|p| nearest(p) as u8).collect();
    let mut counts = [0usize; 9];
    for &l in &labels {
        counts[l as usize] += 1;
    }
    let bg = (0..9)
        .max_by_key(|&i| (counts[i], usize::MAX - i))
        .unwrap_or(0);
    let min = (MIN_OBJECT_FRACTION * (w * h) as f64).ceil() as usize;
    let mut objects: Vec<FoundObject> = (0..9)
        .filter(|&l| l != bg && Color::ALL[l].is_object_color() && counts[l] >= min)
        .map(|l| {
            let comp = largest_component(&labels, w, h, l as u8);
            measure(img, Color::ALL[l], Color::ALL[bg], &comp, w, h)
        })
        .filter(|o| o.pixels >= min)
        .collect();
    objects.sort_by(|a, b| b.pixels.cmp(&a.pixels).then(a.color.cmp(&b.color)));
    Ok(Reading {
        background: Color::ALL[bg],
        objects,
    })
}

fn position_credit(want: Position, got: Position) -> f64 {
    let d = (want.gx as i32 - got.gx as i32).abs() + (want.gy as i32 - got.gy as i32).abs();
    if d == 0 {
        1.0
    } else {
        0.5 * (4 - d).max(0) as f64 / 3.0
    }
}

/// Scores `img` against `scene` (module docs).
pub fn check(scene: &Scene, img: &RgbImage) -> Result<CheckResult, WorldError> {
    let reading = read_image(img)?;
    let mut items: Vec<(Attribute, bool, f64)> = Vec::new();
    let mut push = |a: Attribute, ok: bool, credit: f64| items.push((a, ok, credit));
    if let Some(bg) = scene.background() {
        let ok = reading.background == bg;
        push(Attribute::Background, ok, ok as u8 as f64);
    }
    let find = |c: Color| reading.objects.iter().find(|o| o.color == c);
    match *scene {
        Scene::One {
            object,
            size,
            position,
            ..
        } => {
            let largest = reading.objects.first();
            let color_ok = largest.is_some_and(|o| o.color == object.color);
            push(Attribute::Color, color_ok, color_ok as u8 as f64);
            let target = find(object.color).or(largest);
            let shape_ok = target.is_some_and(|o| o.shape == object.shape);
            push(Attribute::Shape, shape_ok, shape_ok as u8 as f64);
            if let Some(s) = size {
                let ok = target.is_some_and(|o| o.size == s);
                push(Attribute::Size, ok, ok as u8 as f64);
            }
            if let Some(p) = position {
                let credit = target.map_or(0.0, |o| position_credit(p, o.position));
                push(Attribute::Position, credit == 1.0, credit);
            }
        }
        Scene::Two {
            first,
            relation,
            second,
            ..
        } => {
            let top: Vec<Color> = reading.objects.iter().take(2).map(|o| o.color).collect();
            let present = [first.color, second.color]
                .iter()
                .filter(|c| top.contains(c))
                .count();
            push(Attribute::Color, present == 2, present as f64 * 0.5);
            let (f, s) = (find(first.color), find(second.color));
            let shapes = [(f, first.shape), (s, second.shape)]
                .iter()
                .filter(|(o, want)| o.is_some_and(|o| o.shape == *want))
                .count();
            push(Attribute::Shape, shapes == 2, shapes as f64 * 0.5);
            let (ok, credit) = match (f, s) {
                (Some(a), Some(b)) => {
                    let (dx, dy) = (b.cx - a.cx, b.cy - a.cy);
                    // Offset of the second object from the first, along and across the axis,
                    // signed so that positive means the relation holds.
                    let (along, across) = match relation {
                        Relation::LeftOf => (dx, dy),
                        Relation::RightOf => (-dx, dy),
                        Relation::Above => (dy, dx),
                        Relation::Below => (-dy, dx),
                    };
                    if along > 0.0 && along > across.abs() {
                        (true, 1.0)
                    } else if along > 0.0 {
                        (false, 0.5)
                    } else {
                        (false, 0.0)
                    }
                }
                _ => (false, 0.0),
            };
            push(Attribute::Relation, ok, credit);
        }
    }
    let all_correct = items.iter().all(|i| i.1);
    let score = items.iter().map(|i| i.2).sum::<f64>() / items.len() as f64;
    Ok(CheckResult {
        attributes: items.iter().map(|i| (i.0, i.1)).collect(),
        all_correct,
        score,
        reading,
    })
}
