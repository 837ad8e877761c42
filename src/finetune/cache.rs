//! Encode once: VAE latents of every image and text-encoder states of every prompt, computed with
//! the bundle's ONNX encoders and kept on disk as small safetensors files named by a content key,
//! so later steps, resumed runs and other jobs on the same bundle never encode them again.
//!
//! Keys are sha256 over what determines the value: the bundle hash (weights), the image's content
//! hash, the target size and the latent mode (and seed, when sampling); the prompt text for
//! embeddings. A file is written atomically, so a killed run leaves only whole entries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use super::FinetuneError;
use crate::data::{ImageSize, ImageSource};
use crate::engine::{Engine, LatentMode};

/// Images per VAE-encoder call while filling the cache.
const ENCODE_BATCH: usize = 8;
/// Prompts per text-encoder call.
const TEXT_BATCH: usize = 16;

/// The on-disk cache of one bundle's encodings.
#[derive(Debug, Clone)]
pub struct EncodeCache {
    root: PathBuf,
}

/// How a latent entry is made (part of its key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatentSpec {
    Mean,
    /// A posterior sample; the seed is mixed with the image's content hash.
    Sample {
        seed: u64,
    },
}

/// Default cache location: `$XDG_CACHE_HOME/dpoimg/encode`, else `~/.cache/dpoimg/encode`, else
/// `.dpoimg-cache` in the current directory.
pub fn default_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("dpoimg").join("encode");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h)
            .join(".cache")
            .join("dpoimg")
            .join("encode");
    }
    PathBuf::from(".dpoimg-cache")
}

fn io(path: &Path, e: impl std::fmt::Display) -> FinetuneError {
    FinetuneError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl EncodeCache {
    pub fn open(root: &Path) -> Result<Self, FinetuneError> {
        for sub in ["latents", "text"] {
            let d = root.join(sub);
            std::fs::create_dir_all(&d)
                .map_err(|e| io(&d, format!("{e}. Fix: pass a writable --cache-dir")))?;
        }
        Ok(EncodeCache {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Key of an image's latent.
    pub fn latent_key(
        bundle_hash: &str,
        content: &str,
        size: ImageSize,
        spec: LatentSpec,
    ) -> String {
        let mode = match spec {
            LatentSpec::Mean => "mean".to_string(),
            LatentSpec::Sample { seed } => format!("sample:{seed}"),
        };
        crate::hash::sha256_hex(
            format!(
                "dpoimg-latent/1|{bundle_hash}|{}x{}|{mode}|{content}",
                size.width, size.height
            )
            .as_bytes(),
        )
    }

    /// Key of a prompt's text-encoder states.
    pub fn text_key(bundle_hash: &str, prompt: &str) -> String {
        crate::hash::sha256_hex(format!("dpoimg-text/1|{bundle_hash}|{prompt}").as_bytes())
    }

    fn path(&self, kind: &str, key: &str) -> PathBuf {
        self.root.join(kind).join(format!("{key}.safetensors"))
    }

    fn has(&self, kind: &str, key: &str) -> bool {
        self.path(kind, key).is_file()
    }

    fn write(
        &self,
        kind: &str,
        key: &str,
        shape: &[usize],
        data: &[f32],
    ) -> Result<(), FinetuneError> {
        let path = self.path(kind, key);
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = TensorView::new(Dtype::F32, shape.to_vec(), &bytes).map_err(|e| io(&path, e))?;
        let blob = safetensors::serialize([("value", view)], None).map_err(|e| io(&path, e))?;
        crate::fsutil::atomic_write(&path, &blob).map_err(|e| io(&path, e))
    }

    fn read(&self, kind: &str, key: &str) -> Result<(Vec<usize>, Vec<f32>), FinetuneError> {
        let path = self.path(kind, key);
        let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| {
            io(
                &path,
                format!("{e}: a damaged cache entry. Fix: delete it (it is re-encoded)"),
            )
        })?;
        let t = st
            .tensor("value")
            .map_err(|e| io(&path, format!("{e}: not a dpoimg cache entry")))?;
        if t.dtype() != Dtype::F32 {
            return Err(io(&path, "not float32: not a dpoimg cache entry"));
        }
        let data = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok((t.shape().to_vec(), data))
    }

    pub fn has_latent(&self, key: &str) -> bool {
        self.has("latents", key)
    }

    pub fn has_text(&self, key: &str) -> bool {
        self.has("text", key)
    }

    pub fn latent(&self, key: &str) -> Result<(Vec<usize>, Vec<f32>), FinetuneError> {
        self.read("latents", key)
    }

    pub fn text(&self, key: &str) -> Result<(Vec<usize>, Vec<f32>), FinetuneError> {
        self.read("text", key)
    }

    /// Encodes every listed image that is not cached yet. `items` are (key, source, seed for a
    /// sampled latent); `progress(done, total)` after each batch; returns how many were encoded.
    pub fn fill_latents(
        &self,
        engine: &Engine,
        size: ImageSize,
        items: &[(String, &ImageSource, LatentSpec)],
        cancel: &crate::CancelToken,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<usize, FinetuneError> {
        let mut todo: BTreeMap<&str, (&ImageSource, LatentSpec)> = BTreeMap::new();
        for (key, src, spec) in items {
            if !self.has("latents", key) {
                todo.insert(key.as_str(), (*src, *spec));
            }
        }
        let total = todo.len();
        let todo: Vec<_> = todo.into_iter().collect();
        let (w, h) = (size.width as usize, size.height as usize);
        let mut done = 0;
        for chunk in todo.chunks(ENCODE_BATCH) {
            if cancel.is_cancelled() {
                return Err(FinetuneError::Cancelled);
            }
            // Sampled latents draw their noise per image, so they are encoded one at a time;
            // means batch.
            let groups: Vec<Vec<_>> = if chunk.iter().any(|(_, (_, s))| *s != LatentSpec::Mean) {
                chunk.iter().map(|c| vec![c]).collect()
            } else {
                vec![chunk.iter().collect()]
            };
            for group in groups {
                let mut pixels = Vec::with_capacity(group.len() * 3 * w * h);
                for (_, (src, _)) in &group {
                    pixels.extend(src.load(size)?);
                }
                let mode = match group[0].1 .1 {
                    LatentSpec::Mean => LatentMode::Mean,
                    LatentSpec::Sample { seed } => LatentMode::Sample { seed },
                };
                let (shape, z) = engine.encode_images([group.len(), 3, h, w], &pixels, mode)?;
                let per = z.len() / group.len();
                for ((key, _), lat) in group.iter().zip(z.chunks_exact(per)) {
                    self.write("latents", key, &shape[1..], lat)?;
                }
            }
            done += chunk.len();
            progress(done, total);
        }
        Ok(total)
    }

    /// Encodes every listed prompt that is not cached yet; returns how many were encoded.
    pub fn fill_texts(
        &self,
        engine: &Engine,
        prompts: &[(String, &str)],
        cancel: &crate::CancelToken,
    ) -> Result<usize, FinetuneError> {
        let mut todo: BTreeMap<&str, &str> = BTreeMap::new();
        for (key, p) in prompts {
            if !self.has("text", key) {
                todo.insert(key.as_str(), p);
            }
        }
        let todo: Vec<_> = todo.into_iter().collect();
        for chunk in todo.chunks(TEXT_BATCH) {
            if cancel.is_cancelled() {
                return Err(FinetuneError::Cancelled);
            }
            let texts: Vec<&str> = chunk.iter().map(|(_, p)| *p).collect();
            let (shape, states) = engine.encode_prompts(&texts)?;
            let per = states.len() / chunk.len();
            for ((key, _), s) in chunk.iter().zip(states.chunks_exact(per)) {
                self.write("text", key, &shape[1..], s)?;
            }
        }
        Ok(todo.len())
    }
}
