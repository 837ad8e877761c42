//! Writes the trained adapter in the project's adapter format (`docs/formats.md`): diffusers key
//! names, so `dpoimg generate --adapter` and diffusers' `load_lora_weights` both load it, and
//! safetensors metadata with the provenance of the run.
//!
//! diffusers ignores a file's alpha and uses scale 1, so when `alpha ≠ rank` the scale is folded
//! into B and the metadata says `alpha = rank`: every reader then computes the same update.

use std::collections::BTreeMap;
use std::path::Path;

use super::FinetuneError;

/// Adapter-file format tag.
pub const FORMAT: &str = "dpoimg-lora/1";

/// One module's trained tensors and scale (`alpha / rank`).
pub struct ModuleWeights<'a> {
    pub a: &'a [f32],
    pub b: &'a [f32],
    pub rank: usize,
    pub scale: f32,
}

/// Writes `modules` (by diffusers module path) atomically to `path` with `metadata` (format,
/// rank and targets are added here).
pub fn write(
    path: &Path,
    modules: &BTreeMap<String, ModuleWeights<'_>>,
    targets: &[String],
    mut metadata: BTreeMap<String, String>,
) -> Result<(), FinetuneError> {
    let err = |e: String| FinetuneError::Io {
        path: path.to_path_buf(),
        message: e,
    };
    let rank = modules.values().map(|m| m.rank).max().unwrap_or(0);
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(modules.len() * 2);
    for (name, m) in modules {
        let (inp, out) = (m.a.len() / m.rank, m.b.len() / m.rank);
        let a: Vec<u8> = m.a.iter().flat_map(|v| v.to_le_bytes()).collect();
        let b: Vec<u8> =
            m.b.iter()
                .flat_map(|v| (v * m.scale).to_le_bytes())
                .collect();
        owned.push((format!("unet.{name}.lora_A.weight"), vec![m.rank, inp], a));
        owned.push((format!("unet.{name}.lora_B.weight"), vec![out, m.rank], b));
    }
    metadata.insert("format".into(), FORMAT.into());
    metadata.insert("rank".into(), rank.to_string());
    // The scale is folded into B, so no `alpha` is written: absent means alpha = rank per
    // module, for this reader and for diffusers alike.
    metadata.remove("alpha");
    metadata.insert(
        "targets".into(),
        serde_json::to_string(targets).expect("strings serialise"),
    );
    let blob = serialize_sorted(&owned, &metadata).map_err(err)?;
    crate::fsutil::atomic_write(path, &blob).map_err(|e| err(e.to_string()))
}

/// safetensors bytes with the header's keys sorted. The `safetensors` crate writes metadata from
/// a `HashMap`, whose order changes from run to run; sorted keys make two identical runs write
/// identical files (the resume tests compare sha256s).
fn serialize_sorted(
    tensors: &[(String, Vec<usize>, Vec<u8>)],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, String> {
    let mut order: Vec<&(String, Vec<usize>, Vec<u8>)> = tensors.iter().collect();
    order.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!(metadata));
    let mut offset = 0usize;
    for (name, shape, bytes) in &order {
        if shape.iter().product::<usize>() * 4 != bytes.len() {
            return Err(format!(
                "tensor `{name}`: shape {shape:?} does not match its data"
            ));
        }
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes.len()]}),
        );
        offset += bytes.len();
    }
    let mut h =
        serde_json::to_vec(&serde_json::Value::Object(header)).map_err(|e| e.to_string())?;
    // the format pads the header with spaces to a multiple of 8 bytes
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + offset);
    out.extend((h.len() as u64).to_le_bytes());
    out.extend(h);
    for (_, _, bytes) in order {
        out.extend(bytes);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_serialisation_reads_back_and_is_stable() {
        let t = vec![
            (
                "b".to_string(),
                vec![1, 2],
                [1f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            ("a".to_string(), vec![1], 3f32.to_le_bytes().to_vec()),
        ];
        let mut m = BTreeMap::new();
        for k in ["z", "y", "x", "w"] {
            m.insert(k.to_string(), k.repeat(3));
        }
        let one = serialize_sorted(&t, &m).unwrap();
        assert_eq!(one, serialize_sorted(&t, &m).unwrap());
        let st = safetensors::SafeTensors::deserialize(&one).unwrap();
        assert_eq!(st.tensor("b").unwrap().shape(), &[1, 2]);
        assert_eq!(st.tensor("a").unwrap().data(), 3f32.to_le_bytes());
        let (_, meta) = safetensors::SafeTensors::read_metadata(&one).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()["y"], "yyy");
    }
}
