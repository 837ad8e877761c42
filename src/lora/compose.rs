//! Composition of several adapters into one set of UNet LoRA inputs.
//!
//! Each module's updates add: `Σ_k s_k·(α_k/r_k)·B_k·A_k = [s_1·(α_1/r_1)·B_1 | …] · [A_1; …]`, so
//! the A matrices are stacked along the rank axis and the scales are folded into B. The UNet graph
//! is exported with scale 1, and its rank axis is dynamic, so any composition runs on the same
//! ONNX Runtime session.

use super::{LoraAdapter, LoraError};
use crate::bundle::LoraSpec;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One adapter with its strength in a request.
#[derive(Debug, Clone)]
pub struct AdapterRef {
    pub adapter: Arc<LoraAdapter>,
    pub strength: f32,
}

/// One UNet input tensor: name, shape, row-major data.
#[derive(Debug, Clone)]
pub struct LoraTensor {
    pub name: String,
    pub shape: [usize; 2],
    pub data: Vec<f32>,
}

/// The UNet inputs for a set of adapters; modules no adapter touches are left to their zero-rank
/// defaults.
#[derive(Debug, Clone, Default)]
pub struct ComposedLora {
    pub tensors: Vec<LoraTensor>,
}

/// Stacks the adapters' ranks per module with `strength · alpha/rank` folded into B.
/// Adapters with strength 0 contribute nothing (the result is exactly the base model).
pub fn compose(spec: &LoraSpec, adapters: &[AdapterRef]) -> Result<ComposedLora, LoraError> {
    for r in adapters {
        if !r.strength.is_finite() {
            return Err(LoraError::Strength {
                name: r.adapter.name.clone(),
                strength: r.strength,
            });
        }
    }
    let active: Vec<&AdapterRef> = adapters.iter().filter(|r| r.strength != 0.0).collect();
    let mut tensors = Vec::new();
    for m in &spec.modules {
        let parts: Vec<(f32, &super::LoraPair)> = active
            .iter()
            .filter_map(|r| {
                r.adapter
                    .modules
                    .get(&m.name)
                    .map(|p| (r.strength * p.scale, p))
            })
            .collect();
        if parts.is_empty() {
            continue;
        }
        let rank: usize = parts.iter().map(|(_, p)| p.rank).sum();
        let mut a = Vec::with_capacity(rank * m.in_features);
        for (_, p) in &parts {
            a.extend_from_slice(&p.a);
        }
        let mut b = vec![0f32; m.out_features * rank];
        let mut col = 0;
        for (s, p) in &parts {
            for o in 0..m.out_features {
                let src = &p.b[o * p.rank..(o + 1) * p.rank];
                let dst = &mut b[o * rank + col..o * rank + col + p.rank];
                for (d, v) in dst.iter_mut().zip(src) {
                    *d = s * v;
                }
            }
            col += p.rank;
        }
        tensors.push(LoraTensor {
            name: m.input_a(),
            shape: [rank, m.in_features],
            data: a,
        });
        tensors.push(LoraTensor {
            name: m.input_b(),
            shape: [m.out_features, rank],
            data: b,
        });
    }
    Ok(ComposedLora { tensors })
}

impl ComposedLora {
    /// Per-module `ΔW = B·A` (`[out, in]`, row-major), for merging into base weights.
    pub fn deltas(&self) -> BTreeMap<String, (usize, usize, Vec<f32>)> {
        let mut out = BTreeMap::new();
        for pair in self.tensors.chunks_exact(2) {
            let (a, b) = (&pair[0], &pair[1]);
            let module = a.name.trim_end_matches(".lora_A.weight").to_string();
            let (rank, inf) = (a.shape[0], a.shape[1]);
            let outf = b.shape[0];
            let mut d = vec![0f32; outf * inf];
            for o in 0..outf {
                let row = &mut d[o * inf..(o + 1) * inf];
                for k in 0..rank {
                    let s = b.data[o * rank + k];
                    let arow = &a.data[k * inf..(k + 1) * inf];
                    for (x, av) in row.iter_mut().zip(arow) {
                        *x += s * av;
                    }
                }
            }
            out.insert(module, (outf, inf, d));
        }
        out
    }
}
