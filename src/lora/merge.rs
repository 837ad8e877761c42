//! `dpoimg adapter merge`: the bundle's UNet weights with a composition of adapters added in,
//! written as a diffusers-named safetensors file.

use super::{ComposedLora, LoraError};
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

/// Reads `unet_weights` (safetensors, diffusers names), adds every module's `ΔW` to
/// `<module>.weight`, and writes the result atomically to `out`. Returns the number of merged
/// modules.
pub fn merge_into_unet(
    unet_weights: &Path,
    lora: &ComposedLora,
    out: &Path,
) -> Result<usize, LoraError> {
    let merr = |m: String| LoraError::Merge {
        path: unet_weights.to_path_buf(),
        message: m,
    };
    let bytes = std::fs::read(unet_weights).map_err(|e| LoraError::Io {
        path: unet_weights.to_path_buf(),
        message: e.to_string(),
    })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| LoraError::Format {
        path: unet_weights.to_path_buf(),
        message: e.to_string(),
    })?;
    let deltas = lora.deltas();
    let mut owned: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = Vec::new();
    let mut merged = 0;
    for (name, view) in st.tensors() {
        let module = name.strip_suffix(".weight");
        let data = match module.and_then(|m| deltas.get(m)) {
            Some((outf, inf, delta)) => {
                if view.dtype() != Dtype::F32 {
                    return Err(merr(format!(
                        "{name}: merging needs f32 weights, found {:?}",
                        view.dtype()
                    )));
                }
                let n: usize = view.shape().iter().product();
                if n != outf * inf || view.shape()[0] != *outf {
                    return Err(merr(format!(
                        "{name}: shape {:?} does not match the LoRA update [{outf}, {inf}]",
                        view.shape()
                    )));
                }
                merged += 1;
                view.data()
                    .chunks_exact(4)
                    .zip(delta)
                    .flat_map(|(c, d)| {
                        (f32::from_le_bytes([c[0], c[1], c[2], c[3]]) + d).to_le_bytes()
                    })
                    .collect()
            }
            None => view.data().to_vec(),
        };
        owned.push((name, view.shape().to_vec(), view.dtype(), data));
    }
    if merged != deltas.len() {
        return Err(merr(format!(
            "only {merged} of {} LoRA modules have a `<module>.weight` in the UNet weights",
            deltas.len()
        )));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, s, d, data)| {
            safetensors::tensor::TensorView::new(*d, s.clone(), data)
                .map(|v| (n.clone(), v))
                .map_err(|e| merr(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let blob = safetensors::serialize(views, None).map_err(|e| merr(e.to_string()))?;
    crate::fsutil::atomic_write(out, &blob).map_err(|e| LoraError::Io {
        path: out.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(merged)
}
