//! PNG output with provenance: every image carries the settings that made it, as UTF-8 `iTXt`
//! chunks (one key per field, plus the whole record as JSON under `dpoimg`).

use crate::engine::{Generated, Image};
use serde::Serialize;
use std::path::Path;

/// One adapter as applied.
#[derive(Debug, Clone, Serialize)]
pub struct AdapterRecord {
    pub name: String,
    pub strength: f32,
    pub sha256: String,
}

impl From<&crate::lora::AdapterRef> for AdapterRecord {
    /// The record of an adapter as a request applies it (its file name, strength and sha256).
    fn from(a: &crate::lora::AdapterRef) -> Self {
        AdapterRecord {
            name: a.adapter.name.clone(),
            strength: a.strength,
            sha256: a.adapter.hash.clone(),
        }
    }
}

/// What the caller asked for, shared by every image of a request.
#[derive(Debug, Clone, Serialize)]
pub struct Origin {
    pub prompt: String,
    pub negative_prompt: String,
    pub seed: u64,
    pub adapters: Vec<AdapterRecord>,
    pub bundle: String,
    pub bundle_sha256: String,
    /// Set when the initial latents came from a file rather than the seed.
    pub init_latents_file: Option<String>,
}

/// Everything needed to reproduce an image.
#[derive(Debug, Clone, Serialize)]
pub struct Provenance {
    pub software: String,
    #[serde(flatten)]
    pub origin: Origin,
    /// Index of this image within its batch (the batch shares one seeded noise stream).
    pub batch_index: usize,
    pub sampler: String,
    pub steps: u32,
    pub guidance: f32,
    pub width: u32,
    pub height: u32,
}

impl Provenance {
    /// Text chunks, key → value, in a stable order.
    pub fn chunks(&self) -> Vec<(&'static str, String)> {
        let adapters = self
            .origin
            .adapters
            .iter()
            .map(|a| format!("{}:{}:{}", a.name, a.strength, a.sha256))
            .collect::<Vec<_>>()
            .join(",");
        vec![
            ("Software", self.software.clone()),
            ("prompt", self.origin.prompt.clone()),
            ("negative_prompt", self.origin.negative_prompt.clone()),
            ("seed", self.origin.seed.to_string()),
            ("batch_index", self.batch_index.to_string()),
            ("sampler", self.sampler.clone()),
            ("steps", self.steps.to_string()),
            ("guidance", self.guidance.to_string()),
            ("size", format!("{}x{}", self.width, self.height)),
            ("adapters", adapters),
            ("bundle", self.origin.bundle.clone()),
            ("bundle_sha256", self.origin.bundle_sha256.clone()),
            (
                "dpoimg",
                serde_json::to_string(self).expect("provenance serialises"),
            ),
        ]
    }
}

/// Encodes an RGB image as PNG with provenance chunks.
pub fn encode_png(image: &Image, prov: Option<&Provenance>) -> Result<Vec<u8>, png::EncodingError> {
    let text: Vec<(String, String)> = prov
        .map(|p| {
            p.chunks()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect()
        })
        .unwrap_or_default();
    encode_rgb8_png(image.width, image.height, &image.rgb, &text)
}

/// Encodes 8-bit RGB pixels (rows top to bottom, no padding) as PNG with these text chunks
/// (keyword, text) as iTXt, in order: the one PNG writer behind generated images and the world's
/// data sets.
pub fn encode_rgb8_png(
    width: u32,
    height: u32,
    rgb: &[u8],
    text: &[(String, String)],
) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        for (k, v) in text {
            enc.add_itxt_chunk(k.clone(), v.clone())?;
        }
        let mut w = enc.write_header()?;
        w.write_image_data(rgb)?;
        w.finish()?;
    }
    Ok(out)
}

/// Writes a PNG atomically.
pub fn write_png(path: &Path, image: &Image, prov: Option<&Provenance>) -> std::io::Result<()> {
    let bytes = encode_png(image, prov).map_err(std::io::Error::other)?;
    crate::fsutil::atomic_write(path, &bytes)
}

/// Reads the text chunks of a PNG (used by tests and `dpoimg info IMAGE`).
pub fn read_png_text(bytes: &[u8]) -> Result<Vec<(String, String)>, png::DecodingError> {
    let dec = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = dec.read_info()?;
    let info = reader.info();
    let mut out = Vec::new();
    for t in &info.utf8_text {
        out.push((t.keyword.clone(), t.get_text().unwrap_or_default()));
    }
    for t in &info.uncompressed_latin1_text {
        out.push((t.keyword.clone(), t.text.clone()));
    }
    Ok(out)
}

impl Provenance {
    /// The record of image `index` of a result.
    pub fn new(g: &Generated, origin: &Origin, index: usize) -> Provenance {
        Provenance {
            software: format!("dpoimg {}", env!("CARGO_PKG_VERSION")),
            origin: origin.clone(),
            batch_index: index,
            sampler: g.sampler.to_string(),
            steps: g.steps,
            guidance: g.guidance,
            width: g.width,
            height: g.height,
        }
    }
}
