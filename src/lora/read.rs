//! Reading one adapter file into per-module `(A, B, scale)` triples checked against the bundle.

use super::keys::KohyaNames;
use super::LoraError;
use crate::bundle::LoraSpec;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// One module's low-rank update `ΔW = scale · B · A`.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// Row-major `[rank, in_features]`.
    pub a: Vec<f32>,
    /// Row-major `[out_features, rank]`.
    pub b: Vec<f32>,
    pub rank: usize,
    /// `alpha / rank` (peft's scaling).
    pub scale: f32,
}

/// A validated adapter, ready to compose.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub path: PathBuf,
    /// File stem, shown in provenance.
    pub name: String,
    /// sha256 of the file.
    pub hash: String,
    pub modules: BTreeMap<String, LoraPair>,
    /// The file's safetensors metadata (format, rank, alpha, provenance...).
    pub metadata: BTreeMap<String, String>,
}

/// Which half of a pair a key holds.
#[derive(Clone, Copy)]
enum Part {
    A,
    B,
    Alpha,
}

impl LoraAdapter {
    /// Reads `path` (diffusers, peft or kohya keys) and validates every tensor against `spec`.
    /// `layers_per_block` (UNet config) resolves kohya's LDM-style names.
    pub fn load(path: &Path, spec: &LoraSpec, layers_per_block: usize) -> Result<Self, LoraError> {
        let bytes = std::fs::read(path).map_err(|e| LoraError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::from_bytes(path, &bytes, spec, layers_per_block)
    }

    pub fn from_bytes(
        path: &Path,
        bytes: &[u8],
        spec: &LoraSpec,
        layers_per_block: usize,
    ) -> Result<Self, LoraError> {
        let p = || path.to_path_buf();
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| LoraError::Format {
            path: p(),
            message: e.to_string(),
        })?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| LoraError::Format {
            path: p(),
            message: e.to_string(),
        })?;
        let metadata: BTreeMap<String, String> = meta
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let file_alpha =
            match metadata.get("alpha") {
                Some(a) => Some(a.parse::<f32>().ok().filter(|v| v.is_finite()).ok_or_else(
                    || LoraError::Key {
                        path: p(),
                        key: "__metadata__.alpha".into(),
                        message: format!("{a:?} is not a number"),
                    },
                )?),
                None => None,
            };
        let by_name: HashMap<&str, &crate::bundle::LoraModule> =
            spec.modules.iter().map(|m| (m.name.as_str(), m)).collect();
        let kohya = KohyaNames::new(&spec.modules, layers_per_block);
        let targets = || spec.targets.join(", ");

        // module -> (A, B, alpha) as (shape, data)
        type Slot = (
            Option<(Vec<usize>, Vec<f32>)>,
            Option<(Vec<usize>, Vec<f32>)>,
            Option<f32>,
        );
        let mut slots: BTreeMap<String, Slot> = BTreeMap::new();
        let mut skipped_text = 0usize;
        for (key, view) in st.tensors() {
            let Some((module, part)) = classify(&key, &kohya, &by_name) else {
                if key.starts_with("text_encoder") || key.starts_with("lora_te") {
                    skipped_text += 1;
                    continue;
                }
                // A UNet-looking key we cannot place is an adapter for another model.
                let module = key
                    .trim_start_matches("unet.")
                    .split(".lora")
                    .next()
                    .unwrap_or(&key)
                    .to_string();
                return Err(LoraError::UnknownModule {
                    path: p(),
                    module,
                    targets: targets(),
                });
            };
            let data = to_f32(view.dtype(), view.data()).map_err(|m| LoraError::Key {
                path: p(),
                key: key.clone(),
                message: m,
            })?;
            if data.iter().any(|v| !v.is_finite()) {
                return Err(LoraError::Key {
                    path: p(),
                    key,
                    message: "contains NaN or infinity".into(),
                });
            }
            // 1x1 conv LoRA weights [r, in, 1, 1] are plain matrices.
            let mut shape: Vec<usize> = view.shape().to_vec();
            while shape.len() > 2 && shape.last() == Some(&1) {
                shape.pop();
            }
            let slot = slots.entry(module).or_default();
            match part {
                Part::A => slot.0 = Some((shape, data)),
                Part::B => slot.1 = Some((shape, data)),
                Part::Alpha => {
                    slot.2 = Some(*data.first().ok_or_else(|| LoraError::Key {
                        path: p(),
                        key,
                        message: "empty alpha".into(),
                    })?)
                }
            }
        }
        if skipped_text > 0 {
            tracing::warn!(path = %path.display(), tensors = skipped_text, "text-encoder LoRA tensors ignored (only UNet LoRA is applied)");
        }
        let mut modules = BTreeMap::new();
        for (module, (a, b, alpha)) in slots {
            let m = by_name[module.as_str()];
            let missing = |which: &str| LoraError::Key {
                path: p(),
                key: module.clone(),
                message: format!("has no {which} tensor; A and B must both be present"),
            };
            let (sa, a) = a.ok_or_else(|| missing("lora_A/lora_down"))?;
            let (sb, b) = b.ok_or_else(|| missing("lora_B/lora_up"))?;
            let shape_err = |which, got: &[usize], expected: String| LoraError::Shape {
                path: p(),
                module: module.clone(),
                which,
                got: got.to_vec(),
                expected,
            };
            if sa.len() != 2 || sa[1] != m.in_features || sa[0] == 0 {
                return Err(shape_err(
                    "lora_A",
                    &sa,
                    format!("[rank, {}]", m.in_features),
                ));
            }
            let rank = sa[0];
            if sb.len() != 2 || sb[0] != m.out_features || sb[1] != rank {
                return Err(shape_err(
                    "lora_B",
                    &sb,
                    format!("[{}, {rank}] (rank from lora_A)", m.out_features),
                ));
            }
            let alpha = alpha.or(file_alpha).unwrap_or(rank as f32);
            modules.insert(
                module,
                LoraPair {
                    a,
                    b,
                    rank,
                    scale: alpha / rank as f32,
                },
            );
        }
        if modules.is_empty() {
            return Err(LoraError::Empty { path: p() });
        }
        Ok(LoraAdapter {
            path: path.to_path_buf(),
            name: path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            hash: crate::hash::sha256_hex(bytes),
            modules,
            metadata,
        })
    }

    /// Largest rank over modules.
    pub fn rank(&self) -> usize {
        self.modules.values().map(|m| m.rank).max().unwrap_or(0)
    }
}

/// Module name and part for one key, in any supported convention; None if it is not a UNet
/// LoRA key of this bundle.
fn classify(
    key: &str,
    kohya: &KohyaNames,
    modules: &HashMap<&str, &crate::bundle::LoraModule>,
) -> Option<(String, Part)> {
    if let Some(rest) = key.strip_prefix("lora_unet_") {
        let (flat, part) = if let Some(f) = rest.strip_suffix(".lora_down.weight") {
            (f, Part::A)
        } else if let Some(f) = rest.strip_suffix(".lora_up.weight") {
            (f, Part::B)
        } else if let Some(f) = rest.strip_suffix(".alpha") {
            (f, Part::Alpha)
        } else {
            return None;
        };
        return kohya.resolve(flat).map(|m| (m.to_string(), part));
    }
    let k = key.strip_prefix("unet.").unwrap_or(key);
    for (suffix, part) in [
        (".lora_A.weight", Part::A),
        (".lora_B.weight", Part::B),
        (".lora_A.default.weight", Part::A),
        (".lora_B.default.weight", Part::B),
        (".alpha", Part::Alpha),
    ] {
        if let Some(m) = k.strip_suffix(suffix) {
            return modules.contains_key(m).then(|| (m.to_string(), part));
        }
    }
    None
}

fn to_f32(dtype: Dtype, data: &[u8]) -> Result<Vec<f32>, String> {
    let chunks = |n: usize| {
        if !data.len().is_multiple_of(n) {
            Err(format!(
                "{} bytes is not a whole number of {dtype:?} values",
                data.len()
            ))
        } else {
            Ok(data.chunks_exact(n))
        }
    };
    Ok(match dtype {
        Dtype::F32 => chunks(4)?
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => chunks(2)?
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => chunks(2)?
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => chunks(8)?
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        other => return Err(format!("dtype {other:?} is not a float type")),
    })
}
