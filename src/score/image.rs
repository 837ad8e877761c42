//! Images for scoring: a borrowed RGB view of whatever the caller holds (a generated image, a
//! decoded file), the file loader (the decoders of [`crate::data::image`]), and the CLIP-style
//! preprocessing ImageReward and CLIP share.

use super::ScoreError;
use crate::data::{resize_crop, ImageSize, ImageSource, Resample, RgbImage};
use std::path::Path;

/// A borrowed 8-bit RGB image, rows top to bottom, interleaved (HWC, stride `3 * width`).
#[derive(Debug, Clone, Copy)]
pub struct RgbRef<'a> {
    pub width: u32,
    pub height: u32,
    pub data: &'a [u8],
}

impl<'a> From<&'a RgbImage> for RgbRef<'a> {
    fn from(i: &'a RgbImage) -> Self {
        RgbRef {
            width: i.width,
            height: i.height,
            data: &i.data,
        }
    }
}

impl<'a> From<&'a crate::engine::Image> for RgbRef<'a> {
    fn from(i: &'a crate::engine::Image) -> Self {
        RgbRef {
            width: i.width,
            height: i.height,
            data: &i.rgb,
        }
    }
}

impl RgbRef<'_> {
    /// Checks that the buffer holds exactly `width * height * 3` bytes; `index` names the image.
    pub(crate) fn check(&self, index: usize) -> Result<(), ScoreError> {
        let want = self.width as u64 * self.height as u64 * 3;
        if self.width == 0 || self.height == 0 || self.data.len() as u64 != want {
            return Err(ScoreError::BadImage {
                index,
                message: format!(
                    "{}x{} RGB needs {want} bytes, the buffer has {}",
                    self.width,
                    self.height,
                    self.data.len()
                ),
            });
        }
        Ok(())
    }
}

/// Reads and decodes a PNG, JPEG or WebP file (recognised by content) to RGB, as
/// `PIL.Image.open(..).convert("RGB")` does (alpha dropped, grey replicated).
pub fn load_image(path: &Path) -> Result<RgbImage, ScoreError> {
    if path.is_dir() {
        return Err(ScoreError::ImageFile {
            path: path.to_path_buf(),
            message: "is a directory, not an image. Fix: for a folder of images pass `--prompts FILE DIR` (or DIR alone for dpoimg PNGs)".into(),
        });
    }
    if !path.is_file() {
        return Err(ScoreError::ImageFile {
            path: path.to_path_buf(),
            message: "no such file".into(),
        });
    }
    ImageSource::File(path.to_path_buf())
        .encoded()
        .and_then(|e| e.decode_rgb8())
        .map_err(|e| ScoreError::ImageFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// The preprocessing of ImageReward and CLIP (`Resize(size, BICUBIC)`, `CenterCrop(size)`,
/// `ToTensor()`, `Normalize(mean, std)` on a PIL RGB image): shorter side to `size` with
/// Pillow-exact bicubic resampling, centre crop at torchvision's offsets, then f32 CHW computed
/// in torchvision's order (`x / 255`, then `(x - mean) / std`, all in f32) so the tensor equals
/// the reference's bit for bit on the golden images.
pub fn preprocess_clip(img: RgbRef<'_>, size: u32, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let owned = RgbImage {
        width: img.width,
        height: img.height,
        data: img.data.to_vec(),
    };
    let crop = resize_crop(&owned, ImageSize::square(size), Resample::Bicubic);
    normalize_chw(&crop, mean, std)
}

/// HWC u8 → CHW f32, `(x / 255 - mean) / std` per channel in f32.
pub fn normalize_chw(img: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let n = img.width as usize * img.height as usize;
    let mut out = vec![0f32; 3 * n];
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * n + i] = (px[c] as f32 / 255.0 - mean[c]) / std[c];
        }
    }
    out
}
