//! Image metrics: CLIP score, FID and Inception Score.
//!
//! Feature extractors are ONNX models in metric bundles (`metric.json`, docs/formats.md), made by
//! tools/export_metrics.py from weights the user has: a CLIP image/text pair ([`ClipScorer`]) and
//! an Inception network giving pool features and class logits ([`InceptionExtractor`]). The
//! formulas ([`fid`], [`inception_score`], [`clip_score`]) are in f64 and checked against
//! numpy/scipy on fixed features (tests/metrics.rs).

mod math;

pub use math::{clip_score, fid, inception_score, FeatureStats};

use crate::score::files::{self, FileError};
use crate::score::onnx::{self, OnnxModel};
use crate::score::{
    preprocess_clip, FixedTokenizer, PreprocessSpec, RgbRef, ScoreError, ScoreOptions,
};
use ort::value::TensorElementType;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The manifest file of a metric bundle.
pub const METRIC_MANIFEST: &str = "metric.json";
const METRIC_FORMAT: &str = "dpoimg-metric";
/// The metric bundle version this build reads.
pub const METRIC_VERSION: u64 = 1;

/// Errors of the metrics layer.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Not a metric bundle of the expected kind, unknown version, bad field.
    #[error("{0}")]
    Manifest(String),
    #[error(transparent)]
    File(#[from] FileError),
    /// Runtime, tokenizer and image errors (shared with the scoring layer).
    #[error(transparent)]
    Score(#[from] ScoreError),
    #[error("model: {0}")]
    Model(String),
    #[error("{0}")]
    Input(String),
}

impl From<crate::runtime::RuntimeError> for MetricsError {
    fn from(e: crate::runtime::RuntimeError) -> Self {
        MetricsError::Score(ScoreError::Runtime(e))
    }
}

/// `metric.json` of kind `"clip"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipManifest {
    pub format: String,
    pub version: u64,
    pub kind: String,
    pub name: String,
    /// `pixel_values [B,3,S,S]` → `image_embeds [B,D]`.
    pub image_onnx: String,
    /// `input_ids [B,L]`, `attention_mask [B,L]` → `text_embeds [B,D]`.
    pub text_onnx: String,
    pub tokenizer: String,
    pub text: crate::score::TextSpec,
    pub preprocess: PreprocessSpec,
    pub embed_dim: usize,
    pub files: BTreeMap<String, String>,
    #[serde(default)]
    pub note: Option<String>,
}

/// `metric.json` of kind `"inception"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InceptionManifest {
    pub format: String,
    pub version: u64,
    pub kind: String,
    pub name: String,
    /// `images [B,3,H,W]` RGB in [0, 1] at any size (the graph resizes, as pytorch-fid's
    /// `resize_input=True` does) → `pool [B,P]`, `logits [B,K]`.
    pub onnx: String,
    pub pool_dim: usize,
    pub classes: usize,
    pub files: BTreeMap<String, String>,
    #[serde(default)]
    pub note: Option<String>,
}

fn read_manifest<T: serde::de::DeserializeOwned>(
    dir: &Path,
    kind: &str,
) -> Result<(PathBuf, PathBuf, T), MetricsError> {
    let (mpath, raw) =
        files::read_envelope(dir, METRIC_MANIFEST, METRIC_FORMAT, METRIC_VERSION, &[kind])
            .map_err(MetricsError::Manifest)?;
    let m: T = serde_json::from_value(raw)
        .map_err(|e| MetricsError::Manifest(format!("{}: {e}", mpath.display())))?;
    let cdir = dir.canonicalize().map_err(|e| FileError::Io {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok((mpath, cdir, m))
}

/// CLIP image and text encoders: CLIP score of images against a prompt.
pub struct ClipScorer {
    manifest: ClipManifest,
    tokenizer: FixedTokenizer,
    image: OnnxModel,
    text: OnnxModel,
    batch_size: usize,
}

impl std::fmt::Debug for ClipScorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipScorer")
            .field("name", &self.manifest.name)
            .finish()
    }
}

impl ClipScorer {
    /// Reads `DIR/metric.json` (kind `clip`), checks it and its files, opens both models.
    pub fn open(dir: impl AsRef<Path>, options: &ScoreOptions) -> Result<ClipScorer, MetricsError> {
        let (mpath, cdir, m): (_, _, ClipManifest) = read_manifest(dir.as_ref(), "clip")?;
        m.preprocess.validate(&mpath, "preprocess")?;
        if m.embed_dim == 0 || m.text.max_length == 0 || m.text.max_length > 512 {
            return Err(MetricsError::Manifest(format!(
                "{}: embed_dim must be > 0 and text.max_length in 1..=512",
                mpath.display()
            )));
        }
        files::check_files(
            &cdir,
            &mpath,
            &[
                ("image_onnx", m.image_onnx.as_str()),
                ("text_onnx", m.text_onnx.as_str()),
                ("tokenizer", m.tokenizer.as_str()),
            ],
            &m.files,
            options.verify,
        )?;
        let tokenizer =
            FixedTokenizer::open(&cdir.join(&m.tokenizer), m.text.max_length, m.text.pad_id)?;
        let (rt, device) = options.runtime()?;
        let image = OnnxModel::open(&rt, &cdir.join(&m.image_onnx), &options.session, device)?;
        let text = OnnxModel::open(&rt, &cdir.join(&m.text_onnx), &options.session, device)?;
        let s = m.preprocess.size as i64;
        let l = m.text.max_length as i64;
        let ints = [TensorElementType::Int64];
        image
            .expect_input(
                "pixel_values",
                &[TensorElementType::Float32],
                &[None, Some(3), Some(s), Some(s)],
            )
            .map_err(MetricsError::Model)?;
        image
            .expect_output("image_embeds")
            .map_err(MetricsError::Model)?;
        text.expect_input("input_ids", &ints, &[None, Some(l)])
            .map_err(MetricsError::Model)?;
        text.expect_input("attention_mask", &ints, &[None, Some(l)])
            .map_err(MetricsError::Model)?;
        text.expect_output("text_embeds")
            .map_err(MetricsError::Model)?;
        Ok(ClipScorer {
            manifest: m,
            tokenizer,
            image,
            text,
            batch_size: options.batch_size,
        })
    }

    pub fn manifest(&self) -> &ClipManifest {
        &self.manifest
    }

    /// The text embedding of `prompt` (`embed_dim` values, unnormalised).
    pub fn text_embedding(&self, prompt: &str) -> Result<Vec<f32>, MetricsError> {
        let (ids, mask) = self.tokenizer.encode(prompt)?;
        let l = ids.len();
        let inputs = vec![
            (
                Cow::Borrowed("input_ids"),
                onnx::input(vec![1, l], ids).map_err(MetricsError::Model)?,
            ),
            (
                Cow::Borrowed("attention_mask"),
                onnx::input(vec![1, l], mask).map_err(MetricsError::Model)?,
            ),
        ];
        let mut r = self
            .text
            .run(inputs, &["text_embeds"])
            .map_err(MetricsError::Model)?;
        let (_, e) = r.remove(0);
        self.check_dim(&e, 1)?;
        Ok(e)
    }

    /// Image embeddings (`images.len() x embed_dim`, unnormalised), batched.
    pub fn image_embeddings(&self, images: &[RgbRef<'_>]) -> Result<Vec<f32>, MetricsError> {
        let p = &self.manifest.preprocess;
        let s = p.size as usize;
        let mut out = Vec::with_capacity(images.len() * self.manifest.embed_dim);
        for (k, chunk) in images.chunks(self.batch_size).enumerate() {
            let mut px = Vec::with_capacity(chunk.len() * 3 * s * s);
            for (i, im) in chunk.iter().enumerate() {
                im.check(k * self.batch_size + i)?;
                px.extend(preprocess_clip(*im, p.size, p.mean_f32(), p.std_f32()));
            }
            let inputs = vec![(
                Cow::Borrowed("pixel_values"),
                onnx::input(vec![chunk.len(), 3, s, s], px).map_err(MetricsError::Model)?,
            )];
            let mut r = self
                .image
                .run(inputs, &["image_embeds"])
                .map_err(MetricsError::Model)?;
            let (_, e) = r.remove(0);
            self.check_dim(&e, chunk.len())?;
            out.extend(e);
        }
        Ok(out)
    }

    fn check_dim(&self, e: &[f32], rows: usize) -> Result<(), MetricsError> {
        if e.len() != rows * self.manifest.embed_dim {
            return Err(MetricsError::Model(format!(
                "embedding has {} values for {rows} row(s) of embed_dim {}",
                e.len(),
                self.manifest.embed_dim
            )));
        }
        Ok(())
    }

    /// CLIP score (`100 · max(cos, 0)`) of each image against `prompt`.
    pub fn score(&self, prompt: &str, images: &[RgbRef<'_>]) -> Result<Vec<f64>, MetricsError> {
        let t = self.text_embedding(prompt)?;
        let im = self.image_embeddings(images)?;
        Ok(im
            .chunks_exact(self.manifest.embed_dim)
            .map(|e| clip_score(e, &t))
            .collect())
    }
}

/// Inception features of a set of images.
#[derive(Debug, Clone)]
pub struct InceptionFeatures {
    /// `count x pool_dim`, row-major: FID's features.
    pub pool: Vec<f32>,
    pub pool_dim: usize,
    /// `count x classes`, row-major: the Inception Score's logits.
    pub logits: Vec<f32>,
    pub classes: usize,
}

/// An Inception network in ONNX giving pool features (FID) and logits (IS).
pub struct InceptionExtractor {
    manifest: InceptionManifest,
    model: OnnxModel,
    batch_size: usize,
}

impl std::fmt::Debug for InceptionExtractor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InceptionExtractor")
            .field("name", &self.manifest.name)
            .finish()
    }
}

impl InceptionExtractor {
    /// Reads `DIR/metric.json` (kind `inception`), checks it and its file, opens the model.
    pub fn open(
        dir: impl AsRef<Path>,
        options: &ScoreOptions,
    ) -> Result<InceptionExtractor, MetricsError> {
        let (mpath, cdir, m): (_, _, InceptionManifest) = read_manifest(dir.as_ref(), "inception")?;
        if m.pool_dim == 0 || m.classes < 2 {
            return Err(MetricsError::Manifest(format!(
                "{}: pool_dim must be > 0 and classes ≥ 2",
                mpath.display()
            )));
        }
        files::check_files(
            &cdir,
            &mpath,
            &[("onnx", m.onnx.as_str())],
            &m.files,
            options.verify,
        )?;
        let (rt, device) = options.runtime()?;
        let model = OnnxModel::open(&rt, &cdir.join(&m.onnx), &options.session, device)?;
        model
            .expect_input(
                "images",
                &[TensorElementType::Float32],
                &[None, Some(3), None, None],
            )
            .map_err(MetricsError::Model)?;
        model.expect_output("pool").map_err(MetricsError::Model)?;
        model.expect_output("logits").map_err(MetricsError::Model)?;
        Ok(InceptionExtractor {
            manifest: m,
            model,
            batch_size: options.batch_size,
        })
    }

    pub fn manifest(&self) -> &InceptionManifest {
        &self.manifest
    }

    /// Pool features and logits of `images` (RGB u8 → [0, 1] CHW at their own size; images of
    /// one size share a batch).
    pub fn features(&self, images: &[RgbRef<'_>]) -> Result<InceptionFeatures, MetricsError> {
        let (p, k) = (self.manifest.pool_dim, self.manifest.classes);
        let mut pool = vec![0f32; images.len() * p];
        let mut logits = vec![0f32; images.len() * k];
        let mut by_size: BTreeMap<(u32, u32), Vec<usize>> = BTreeMap::new();
        for (i, im) in images.iter().enumerate() {
            im.check(i)?;
            by_size.entry((im.width, im.height)).or_default().push(i);
        }
        for ((w, h), idx) in by_size {
            for chunk in idx.chunks(self.batch_size) {
                let n = (w * h) as usize;
                let mut x = Vec::with_capacity(chunk.len() * 3 * n);
                for &i in chunk {
                    let d = images[i].data;
                    for c in 0..3 {
                        x.extend((0..n).map(|j| d[j * 3 + c] as f32 / 255.0));
                    }
                }
                let inputs = vec![(
                    Cow::Borrowed("images"),
                    onnx::input(vec![chunk.len(), 3, h as usize, w as usize], x)
                        .map_err(MetricsError::Model)?,
                )];
                let r = self
                    .model
                    .run(inputs, &["pool", "logits"])
                    .map_err(MetricsError::Model)?;
                let (pl, lg) = (&r[0].1, &r[1].1);
                if pl.len() != chunk.len() * p || lg.len() != chunk.len() * k {
                    return Err(MetricsError::Model(format!(
                        "{}: outputs have {} pool and {} logit values for {} images (pool_dim {p}, classes {k})",
                        self.model.path.display(),
                        pl.len(),
                        lg.len(),
                        chunk.len()
                    )));
                }
                for (r, &i) in chunk.iter().enumerate() {
                    pool[i * p..(i + 1) * p].copy_from_slice(&pl[r * p..(r + 1) * p]);
                    logits[i * k..(i + 1) * k].copy_from_slice(&lg[r * k..(r + 1) * k]);
                }
            }
        }
        Ok(InceptionFeatures {
            pool,
            pool_dim: p,
            logits,
            classes: k,
        })
    }
}
