//! `bundle.json`: the serde model and its semantic checks.

use super::BundleError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The only bundle format version this build reads.
pub const BUNDLE_VERSION: u32 = 1;
const BUNDLE_FORMAT: &str = "dpoimg-bundle";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub name: String,
    pub architecture: String,
    pub text_encoder: TextEncoderSpec,
    pub unet: UnetSpec,
    pub vae: VaeSpec,
    /// The diffusers `scheduler_config.json`, verbatim.
    pub scheduler: serde_json::Value,
    pub defaults: Defaults,
    /// sha256 (hex) of every file in the bundle, by relative path.
    pub files: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TextEncoderSpec {
    pub onnx: String,
    pub tokenizer: String,
    pub max_length: usize,
    pub pad_id: u32,
    pub hidden_size: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnetSpec {
    pub onnx: String,
    pub config: String,
    pub weights: String,
    pub in_channels: usize,
    pub cross_attention_dim: usize,
    /// Latent height and width must be multiples of this (2^(down blocks - 1)).
    pub sample_multiple: usize,
    pub lora: LoraSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoraSpec {
    pub targets: Vec<String>,
    pub modules: Vec<LoraModule>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LoraModule {
    pub name: String,
    pub in_features: usize,
    pub out_features: usize,
}

impl LoraModule {
    /// ONNX input name of the down projection (`[rank, in]`).
    pub fn input_a(&self) -> String {
        format!("{}.lora_A.weight", self.name)
    }
    /// ONNX input name of the up projection (`[out, rank]`).
    pub fn input_b(&self) -> String {
        format!("{}.lora_B.weight", self.name)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VaeSpec {
    pub decoder: String,
    pub encoder: String,
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    pub downsample_factor: usize,
    pub latent_channels: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Defaults {
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub guidance: f32,
    pub sampler: String,
}

impl Manifest {
    pub(super) fn parse(path: &Path, bytes: &[u8]) -> Result<Manifest, BundleError> {
        // Check the envelope first so an unknown version is reported as such, not as a missing field.
        let raw: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| json_err(path, e))?;
        let field = |f: &str, m: String| BundleError::Field {
            path: path.to_path_buf(),
            field: f.into(),
            message: m,
        };
        match raw.get("format").and_then(|v| v.as_str()) {
            Some(BUNDLE_FORMAT) => {}
            other => {
                return Err(field(
                    "format",
                    format!("expected \"{BUNDLE_FORMAT}\", found {other:?}"),
                ))
            }
        }
        match raw.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(BUNDLE_VERSION) => {}
            Some(v) => {
                return Err(field(
                    "version",
                    format!("unknown bundle version {v}; this build reads version {BUNDLE_VERSION}. Fix: re-export with this release's tools/export_bundle.py or upgrade dpoimg"),
                ))
            }
            None => return Err(field("version", "missing or not an integer".into())),
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| json_err(path, e))?;
        m.validate(path)?;
        Ok(m)
    }

    fn validate(&self, path: &Path) -> Result<(), BundleError> {
        let bad = |f: &str, m: String| {
            Err(BundleError::Field {
                path: path.to_path_buf(),
                field: f.into(),
                message: m,
            })
        };
        if !matches!(self.architecture.as_str(), "sd1" | "sd2") {
            return bad(
                "architecture",
                format!("expected \"sd1\" or \"sd2\", found {:?}", self.architecture),
            );
        }
        let te = &self.text_encoder;
        if te.max_length == 0 || te.max_length > 512 {
            return bad(
                "text_encoder.max_length",
                format!("{} is out of range 1..=512", te.max_length),
            );
        }
        if te.hidden_size == 0 {
            return bad("text_encoder.hidden_size", "must be > 0".into());
        }
        let u = &self.unet;
        if u.in_channels == 0 || u.cross_attention_dim == 0 {
            return bad(
                "unet",
                "in_channels and cross_attention_dim must be > 0".into(),
            );
        }
        if u.cross_attention_dim != te.hidden_size {
            return bad(
                "unet.cross_attention_dim",
                format!(
                    "{} differs from text_encoder.hidden_size {}",
                    u.cross_attention_dim, te.hidden_size
                ),
            );
        }
        if !u.sample_multiple.is_power_of_two() {
            return bad(
                "unet.sample_multiple",
                format!("{} is not a power of two", u.sample_multiple),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, m) in u.lora.modules.iter().enumerate() {
            if m.in_features == 0 || m.out_features == 0 {
                return bad(
                    &format!("unet.lora.modules[{i}]"),
                    format!("{}: zero feature size", m.name),
                );
            }
            if !seen.insert(m.name.as_str()) {
                return bad(
                    &format!("unet.lora.modules[{i}]"),
                    format!("{} listed twice", m.name),
                );
            }
        }
        let v = &self.vae;
        if !v.downsample_factor.is_power_of_two() {
            return bad(
                "vae.downsample_factor",
                format!("{} is not a power of two", v.downsample_factor),
            );
        }
        if !(v.scaling_factor.is_finite() && v.scaling_factor > 0.0) {
            return bad(
                "vae.scaling_factor",
                format!("{} must be finite and > 0", v.scaling_factor),
            );
        }
        if v.latent_channels != u.in_channels {
            return bad(
                "vae.latent_channels",
                format!(
                    "{} differs from unet.in_channels {}",
                    v.latent_channels, u.in_channels
                ),
            );
        }
        if !self.scheduler.is_object() {
            return bad(
                "scheduler",
                "must be the diffusers scheduler_config.json object".into(),
            );
        }
        let step = self.pixel_multiple() as u32;
        let d = &self.defaults;
        if d.width == 0
            || d.height == 0
            || !d.width.is_multiple_of(step)
            || !d.height.is_multiple_of(step)
        {
            return bad(
                "defaults",
                format!(
                    "size {}x{} is not a positive multiple of {step}",
                    d.width, d.height
                ),
            );
        }
        Ok(())
    }

    /// Image width/height must be multiples of this many pixels.
    pub fn pixel_multiple(&self) -> usize {
        self.vae.downsample_factor * self.unet.sample_multiple
    }

    /// Every file the manifest names, with the field that names it.
    pub fn referenced_files(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("text_encoder.onnx", self.text_encoder.onnx.as_str()),
            (
                "text_encoder.tokenizer",
                self.text_encoder.tokenizer.as_str(),
            ),
            ("unet.onnx", self.unet.onnx.as_str()),
            ("unet.config", self.unet.config.as_str()),
            ("unet.weights", self.unet.weights.as_str()),
            ("vae.decoder", self.vae.decoder.as_str()),
            ("vae.encoder", self.vae.encoder.as_str()),
        ]
    }
}

fn json_err(path: &Path, e: serde_json::Error) -> BundleError {
    BundleError::Json {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    }
}
