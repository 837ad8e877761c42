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

/// Everything needed to reproduce an image.
#[derive(Debug, Clone, Serialize)]
pub struct Provenance {
    pub software: String,
    pub prompt: String,
    pub negative_prompt: String,
    pub seed: u64,
    /// Index of this image within its batch (the batch shares one seeded noise stream).
    pub batch_index: usize,
    pub sampler: String,
    pub steps: u32,
    pub guidance: f32,
    pub width: u32,
    pub height: u32,
    pub adapters: Vec<AdapterRecord>,
    pub bundle: String,
    pub bundle_sha256: String,
    /// True when the initial latents came from a file rather than the seed.
    pub init_latents_file: Option<String>,
}

impl Provenance {
    /// Text chunks, key → value, in a stable order.
    pub fn chunks(&self) -> Vec<(&'static str, String)> {
        let adapters = self
            .adapters
            .iter()
            .map(|a| format!("{}:{}:{}", a.name, a.strength, a.sha256))
            .collect::<Vec<_>>()
            .join(",");
        vec![
            ("Software", self.software.clone()),
            ("prompt", self.prompt.clone()),
            ("negative_prompt", self.negative_prompt.clone()),
            ("seed", self.seed.to_string()),
            ("batch_index", self.batch_index.to_string()),
            ("sampler", self.sampler.clone()),
            ("steps", self.steps.to_string()),
            ("guidance", self.guidance.to_string()),
            ("size", format!("{}x{}", self.width, self.height)),
            ("adapters", adapters),
            ("bundle", self.bundle.clone()),
            ("bundle_sha256", self.bundle_sha256.clone()),
            (
                "dpoimg",
                serde_json::to_string(self).expect("provenance serialises"),
            ),
        ]
    }
}

/// Encodes an RGB image as PNG with provenance chunks.
pub fn encode_png(image: &Image, prov: Option<&Provenance>) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, image.width, image.height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        if let Some(p) = prov {
            for (k, v) in p.chunks() {
                enc.add_itxt_chunk(k.to_string(), v)?;
            }
        }
        let mut w = enc.write_header()?;
        w.write_image_data(&image.rgb)?;
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

/// Provenance for image `index` of a result.
pub fn provenance_for(
    g: &Generated,
    prompt: &str,
    negative_prompt: &str,
    seed: u64,
    index: usize,
    adapters: Vec<AdapterRecord>,
    bundle_name: &str,
    bundle_hash: &str,
    init_latents_file: Option<String>,
) -> Provenance {
    Provenance {
        software: format!("dpoimg {}", env!("CARGO_PKG_VERSION")),
        prompt: prompt.to_string(),
        negative_prompt: negative_prompt.to_string(),
        seed,
        batch_index: index,
        sampler: g.sampler.to_string(),
        steps: g.steps,
        guidance: g.guidance,
        width: g.width,
        height: g.height,
        adapters,
        bundle: bundle_name.to_string(),
        bundle_sha256: bundle_hash.to_string(),
        init_latents_file,
    }
}
