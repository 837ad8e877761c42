//! Images of preference pairs: where their bytes are ([`ImageSource`]), their identity (sha256 of
//! the encoded bytes, the key of the encode-once latent cache) and their preprocessing into the
//! VAE encoder's input.
//!
//! Preprocessing is the reference trainers' (`Resize(size, BILINEAR)`, `CenterCrop(size)`,
//! `ToTensor()`, `Normalize([0.5], [0.5])` on `Image.open(..).convert("RGB")`): scale so the image
//! covers the target (shorter side to the target, the other side `floor(target * long / short)`
//! as torchvision computes it), Pillow-exact resampling ([`Resample`], bilinear by default because
//! that is what Diffusion-DPO trained with), centre crop at torchvision's offsets
//! (`round((dim - target) / 2)`, half to even), then f32 CHW in [-1, 1]. Random flips and crops
//! are left out on purpose: the latents are encoded once and cached.
//!
//! Decoding uses the `png`, `zune-jpeg` and `image-webp` crates directly rather than `image`:
//! the same decoders `image` wraps, at a fraction of its build time (see the module docs of
//! [`crate::data`]). PNG and lossy WebP decode bit-identically to Pillow (libpng/libwebp) on the
//! fixtures; JPEG does not: zune-jpeg rounds 4:2:0 chroma upsampling differently from
//! libjpeg-turbo (measured max 4-6 levels, mean under 0.5 of 255; 4:4:4 files: max 3, mean 0.02),
//! far below JPEG's own coding error and invisible after the VAE. Resize, crop and normalisation
//! are bit-exact for every format (tested from Pillow's decode).

use super::error::DataError;
use super::resample::{self, Resample};
use super::zipstore::SharedZip;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

/// Largest accepted image, in pixels (a 16k x 16k image is already 768 MiB of RGB): guards the
/// decoders against decompression bombs in untrusted datasets.
pub const MAX_PIXELS: u64 = 1 << 28;

/// Largest accepted encoded image file, in bytes.
pub const MAX_ENCODED_BYTES: u64 = 512 << 20;

/// Target size of preprocessing: the bundle's image size (the VAE encoder's input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageSize {
    pub width: u32,
    pub height: u32,
}

impl ImageSize {
    pub fn new(width: u32, height: u32) -> Self {
        ImageSize { width, height }
    }
    pub fn square(side: u32) -> Self {
        ImageSize {
            width: side,
            height: side,
        }
    }
}

/// A decoded 8-bit RGB image, row-major, interleaved (HWC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// Where an image's encoded bytes live. Cheap to clone; nothing is read until asked.
#[derive(Clone)]
pub enum ImageSource {
    /// A file on disk (JSONL records, ImageRewardDB's loose layout).
    File(PathBuf),
    /// A member of a zip archive (ImageRewardDB's `images/{split}/{split}_{N}.zip`), read
    /// without extracting.
    ZipMember {
        archive: Arc<SharedZip>,
        member: String,
    },
    /// Bytes held in memory (Pick-a-Pic's `jpg_0`/`jpg_1` cells; a parquet cell cannot be re-read
    /// alone without decoding its whole column chunk again).
    Bytes { data: Arc<[u8]>, origin: String },
}

/// An image's encoded bytes and their sha256 (lowercase hex), the content identity the latent
/// cache keys on: the same picture reached through two paths or pairs is encoded once.
#[derive(Debug, Clone)]
pub struct EncodedImage {
    pub bytes: Arc<[u8]>,
    pub sha256: String,
    /// [`ImageSource::describe`] of where the bytes came from, for messages.
    pub origin: String,
}

/// Shows where the image is, not its bytes (a Pick-a-Pic cell is hundreds of KB).
impl std::fmt::Debug for ImageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageSource::File(p) => f.debug_tuple("File").field(p).finish(),
            ImageSource::ZipMember { archive, member } => f
                .debug_struct("ZipMember")
                .field("archive", &archive.path())
                .field("member", member)
                .finish(),
            ImageSource::Bytes { data, origin } => f
                .debug_struct("Bytes")
                .field("len", &data.len())
                .field("origin", origin)
                .finish(),
        }
    }
}

impl ImageSource {
    /// Where the image is, for messages: a path, `archive.zip:member`, or `file row N column`.
    pub fn describe(&self) -> String {
        match self {
            ImageSource::File(p) => p.display().to_string(),
            ImageSource::ZipMember { archive, member } => {
                format!("{}:{member}", archive.path().display())
            }
            ImageSource::Bytes { origin, .. } => origin.clone(),
        }
    }

    /// Reads the encoded bytes and hashes them.
    pub fn encoded(&self) -> Result<EncodedImage, DataError> {
        let bytes: Arc<[u8]> = match self {
            ImageSource::File(p) => {
                let len = std::fs::metadata(p)
                    .map_err(|e| DataError::io(p, "read the image", e))?
                    .len();
                if len > MAX_ENCODED_BYTES {
                    return Err(DataError::Image {
                        image: self.describe(),
                        problem: format!(
                            "file is {len} bytes, over the {MAX_ENCODED_BYTES}-byte limit"
                        ),
                    });
                }
                std::fs::read(p)
                    .map_err(|e| DataError::io(p, "read the image", e))?
                    .into()
            }
            ImageSource::ZipMember { archive, member } => archive.read(member)?.into(),
            ImageSource::Bytes { data, .. } => data.clone(),
        };
        Ok(EncodedImage {
            sha256: crate::hash::sha256_hex(&bytes),
            bytes,
            origin: self.describe(),
        })
    }

    /// sha256 (hex) of the encoded bytes.
    pub fn content_hash(&self) -> Result<String, DataError> {
        Ok(self.encoded()?.sha256)
    }

    /// Decodes and preprocesses the image for the VAE encoder with the reference trainers'
    /// bilinear filter: f32, CHW (3 x height x width), values in [-1, 1].
    pub fn load(&self, size: ImageSize) -> Result<Vec<f32>, DataError> {
        self.encoded()?.preprocess(size, Resample::Bilinear)
    }
}

impl EncodedImage {
    /// Decodes to 8-bit RGB the way `PIL.Image.open(..).convert("RGB")` does: alpha is dropped
    /// (not composited), grey is replicated, palettes are expanded, 16-bit samples keep their high
    /// byte. EXIF orientation is ignored, as PIL and the trainers ignore it.
    pub fn decode_rgb8(&self) -> Result<RgbImage, DataError> {
        decode_rgb8(&self.bytes).map_err(|problem| DataError::Image {
            image: self.origin.clone(),
            problem,
        })
    }

    /// Decode + resize/crop to `size` + f32 CHW in [-1, 1].
    pub fn preprocess(&self, size: ImageSize, filter: Resample) -> Result<Vec<f32>, DataError> {
        check_size(size)?;
        let img = self.decode_rgb8()?;
        Ok(to_unit_chw(&resize_crop(&img, size, filter)))
    }
}

fn check_size(size: ImageSize) -> Result<(), DataError> {
    if size.width == 0 || size.height == 0 || size.width > 8192 || size.height > 8192 {
        return Err(DataError::Options {
            message: format!(
                "image size {}x{} is out of range 1..=8192. Fix: pass the bundle's image size",
                size.width, size.height
            ),
        });
    }
    Ok(())
}

/// The resized size before cropping: the side that binds becomes exactly the target, the other
/// `floor(target * other / binding)` (torchvision's `int(size * long / short)` for a square
/// target, in exact integer arithmetic).
pub fn cover_size(w: u32, h: u32, size: ImageSize) -> (u32, u32) {
    let (w, h) = (w as u64, h as u64);
    let (tw, th) = (size.width as u64, size.height as u64);
    if tw * h >= th * w {
        (tw as u32, (tw * h / w) as u32)
    } else {
        ((th * w / h) as u32, th as u32)
    }
}

/// torchvision's centre-crop offset: `int(round(diff / 2.0))`, Python's round (half to even).
fn crop_offset(diff: u32) -> u32 {
    let half = diff / 2;
    if diff % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// Resizes so the image covers `size` (Pillow-exact `filter`), then centre-crops to `size`.
pub fn resize_crop(img: &RgbImage, size: ImageSize, filter: Resample) -> RgbImage {
    let (nw, nh) = cover_size(img.width, img.height, size);
    let resized = resample::resize(
        &img.data,
        img.width as usize,
        img.height as usize,
        3,
        nw as usize,
        nh as usize,
        filter,
    );
    let left = crop_offset(nw - size.width) as usize;
    let top = crop_offset(nh - size.height) as usize;
    let (tw, th, nw) = (size.width as usize, size.height as usize, nw as usize);
    let mut data = Vec::with_capacity(tw * th * 3);
    for y in top..top + th {
        let start = (y * nw + left) * 3;
        data.extend_from_slice(&resized[start..start + tw * 3]);
    }
    RgbImage {
        width: size.width,
        height: size.height,
        data,
    }
}

/// HWC u8 → CHW f32 in [-1, 1], computed as torchvision does (`x / 255`, then `(x - 0.5) / 0.5`
/// in f32) so the values are bit-identical.
pub fn to_unit_chw(img: &RgbImage) -> Vec<f32> {
    let n = img.width as usize * img.height as usize;
    let mut out = vec![0f32; 3 * n];
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * n + i] = (px[c] as f32 / 255.0 - 0.5) / 0.5;
        }
    }
    out
}

fn check_pixels(w: u64, h: u64) -> Result<(), String> {
    if w == 0 || h == 0 {
        return Err(format!("image has an empty size {w}x{h}"));
    }
    if w * h > MAX_PIXELS {
        return Err(format!(
            "image is {w}x{h}, over the {MAX_PIXELS}-pixel limit"
        ));
    }
    Ok(())
}

/// Decodes PNG, JPEG or WebP bytes (recognised by their signature, not by a file name) to RGB8.
/// Decoder panics, should a hostile file trigger one, become errors too.
pub fn decode_rgb8(bytes: &[u8]) -> Result<RgbImage, String> {
    let kind = if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        "png"
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        "jpeg"
    } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        "webp"
    } else {
        let head: String = bytes
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ");
        return Err(format!(
            "not a PNG, JPEG or WebP file (first bytes: {})",
            if head.is_empty() {
                "none, the file is empty".to_string()
            } else {
                head
            }
        ));
    };
    let result = std::panic::catch_unwind(|| match kind {
        "png" => decode_png(bytes),
        "jpeg" => decode_jpeg(bytes),
        _ => decode_webp(bytes),
    });
    match result {
        Ok(r) => r.map_err(|e| format!("{kind}: {e}")),
        Err(_) => Err(format!("{kind}: the decoder failed on malformed data")),
    }
}

fn decode_png(bytes: &[u8]) -> Result<RgbImage, String> {
    let mut dec = png::Decoder::new_with_limits(
        Cursor::new(bytes),
        png::Limits {
            bytes: (MAX_PIXELS * 8) as usize,
        },
    );
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec.read_info().map_err(|e| e.to_string())?;
    {
        let info = reader.info();
        check_pixels(info.width as u64, info.height as u64)?;
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| "image too large".to_string())?;
    let mut buf = vec![0u8; size];
    let out = reader.next_frame(&mut buf).map_err(|e| e.to_string())?;
    if out.bit_depth != png::BitDepth::Eight {
        return Err(format!(
            "unexpected bit depth {:?} after expansion",
            out.bit_depth
        ));
    }
    let channels = match out.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err("palette was not expanded".into()),
    };
    let (w, h) = (out.width, out.height);
    let stride = out.line_size;
    let mut data = Vec::with_capacity(w as usize * h as usize * 3);
    for y in 0..h as usize {
        let row = &buf[y * stride..y * stride + w as usize * channels];
        for px in row.chunks_exact(channels) {
            match channels {
                1 | 2 => data.extend_from_slice(&[px[0], px[0], px[0]]),
                _ => data.extend_from_slice(&px[..3]),
            }
        }
    }
    Ok(RgbImage {
        width: w,
        height: h,
        data,
    })
}

fn decode_jpeg(bytes: &[u8]) -> Result<RgbImage, String> {
    use zune_jpeg::zune_core::colorspace::ColorSpace;
    use zune_jpeg::zune_core::options::DecoderOptions;
    // Strict mode: a truncated or corrupt file is an error (as in PIL), not a silently grey image.
    let opts = DecoderOptions::default()
        .set_strict_mode(true)
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(1 << 16)
        .set_max_height(1 << 16);
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(Cursor::new(bytes), opts);
    dec.decode_headers().map_err(|e| format!("{e:?}"))?;
    let (w, h) = dec
        .dimensions()
        .ok_or_else(|| "no image dimensions in the headers".to_string())?;
    check_pixels(w as u64, h as u64)?;
    let data = dec.decode().map_err(|e| format!("{e:?}"))?;
    if data.len() != w * h * 3 {
        return Err(format!(
            "decoder returned {} bytes for {w}x{h} RGB",
            data.len()
        ));
    }
    Ok(RgbImage {
        width: w as u32,
        height: h as u32,
        data,
    })
}

fn decode_webp(bytes: &[u8]) -> Result<RgbImage, String> {
    let mut dec = image_webp::WebPDecoder::new(Cursor::new(bytes)).map_err(|e| e.to_string())?;
    let (w, h) = dec.dimensions();
    check_pixels(w as u64, h as u64)?;
    let size = dec
        .output_buffer_size()
        .ok_or_else(|| "image too large".to_string())?;
    let mut buf = vec![0u8; size];
    dec.read_image(&mut buf).map_err(|e| e.to_string())?;
    let channels = if dec.has_alpha() { 4 } else { 3 };
    let n = w as usize * h as usize;
    if buf.len() != n * channels {
        return Err(format!("decoder returned {} bytes for {w}x{h}", buf.len()));
    }
    let data = if channels == 3 {
        buf
    } else {
        buf.chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect()
    };
    Ok(RgbImage {
        width: w,
        height: h,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_offsets_round_half_to_even() {
        // Python: [int(round(d / 2.0)) for d in range(8)]
        let want = [0, 0, 1, 2, 2, 2, 3, 4];
        for (d, w) in want.iter().enumerate() {
            assert_eq!(crop_offset(d as u32), *w, "diff {d}");
        }
    }

    #[test]
    fn cover_size_matches_torchvision_for_squares() {
        // int(16 * 24 / 20) = 19; int(16 * 30 / 20) = 24; upscale int(16 * 12 / 10) = 19.
        assert_eq!(cover_size(24, 20, ImageSize::square(16)), (19, 16));
        assert_eq!(cover_size(20, 30, ImageSize::square(16)), (16, 24));
        assert_eq!(cover_size(12, 10, ImageSize::square(16)), (19, 16));
        assert_eq!(cover_size(16, 16, ImageSize::square(16)), (16, 16));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            b"hello",
            b"\x89PNG\r\n\x1a\n",
            &[0xFF, 0xD8, 0xFF, 0xE0, 0, 0],
            b"RIFF\0\0\0\0WEBPVP8 ",
        ] {
            assert!(decode_rgb8(bytes).is_err());
        }
    }
}
