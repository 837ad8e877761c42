//! Reading frozen weights by their diffusers names, with shape checks and a record of what was
//! used: after building a model every tensor of the file must have been consumed, which catches a
//! misread layout (a block built with the wrong layer count leaves weights behind).

use super::super::backend::Backend;
use super::super::lora::LinearInfo;
use super::super::TrainError;
use safetensors::{Dtype, SafeTensors};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Host copies of every tensor of a safetensors file, widened to f32.
#[derive(Debug, Clone)]
pub struct Weights {
    path: PathBuf,
    tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// Synthetic weights: every requested tensor exists, uniform in ±this (see
    /// [`Weights::synthetic`]).
    synthetic: Option<f32>,
}

impl Weights {
    /// Reads an F32/F16/BF16/F64 safetensors file.
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let bytes = std::fs::read(path).map_err(|e| TrainError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| TrainError::Io {
            path: path.to_path_buf(),
            message: format!("not a valid safetensors file: {e}"),
        })?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let data = to_f32(view.dtype(), view.data()).map_err(|message| TrainError::Weight {
                path: path.to_path_buf(),
                name: name.clone(),
                message,
            })?;
            tensors.insert(name, (view.shape().to_vec(), data));
        }
        Ok(Weights {
            path: path.to_path_buf(),
            tensors,
            synthetic: None,
        })
    }

    /// Deterministic pseudo-random weights of whatever shape the model asks for (uniform in
    /// `±amplitude`, seeded by the tensor's name), every optional bias present. For timing and
    /// memory measurements of full-size configs (SD-1.5) without a checkpoint on disk.
    pub fn synthetic(amplitude: f32) -> Self {
        Weights {
            path: PathBuf::from("<synthetic>"),
            tensors: BTreeMap::new(),
            synthetic: Some(amplitude),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Shape and data of one tensor.
    pub fn get(&self, name: &str) -> Option<(&[usize], &[f32])> {
        self.tensors
            .get(name)
            .map(|(s, d)| (s.as_slice(), d.as_slice()))
    }
}

fn to_f32(dtype: Dtype, data: &[u8]) -> Result<Vec<f32>, String> {
    let exact = |n: usize| {
        if data.len().is_multiple_of(n) {
            Ok(data.chunks_exact(n))
        } else {
            Err(format!(
                "{} bytes is not a whole number of {dtype:?}",
                data.len()
            ))
        }
    };
    Ok(match dtype {
        Dtype::F32 => exact(4)?
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => exact(2)?
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => exact(2)?
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => exact(8)?
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        other => return Err(format!("dtype {other:?} is not a float type")),
    })
}

/// `n` values uniform in `±amp` from a xorshift stream seeded by the name (FNV-1a).
fn synthetic_values(name: &str, shape: &[usize], amp: f32) -> Vec<f32> {
    let mut x = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    }) | 1;
    (0..shape.iter().product::<usize>())
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
        })
        .collect()
}

/// What a model build has consumed so far.
#[derive(Debug, Default)]
pub struct LoadState {
    used: BTreeSet<String>,
    linears: Vec<LinearInfo>,
}

/// A view of the weights under a name prefix, handed down the module tree while building.
pub struct Loader<'a, B: Backend> {
    be: &'a B,
    weights: &'a Weights,
    state: &'a RefCell<LoadState>,
    /// Prefix of the whole model inside the file (empty for a UNet file).
    root: &'a str,
    /// Module path below the root, ending with `.` unless empty.
    prefix: String,
}

impl<'a, B: Backend> Loader<'a, B> {
    pub fn be(&self) -> &'a B {
        self.be
    }

    /// The loader of child module `name`.
    pub fn sub(&self, name: &str) -> Loader<'a, B> {
        Loader {
            be: self.be,
            weights: self.weights,
            state: self.state,
            root: self.root,
            prefix: format!("{}{name}.", self.prefix),
        }
    }

    /// Module path of `name` below the root (LoRA and error messages use it).
    pub fn module_path(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn full(&self, name: &str) -> String {
        format!("{}{}{name}", self.root, self.prefix)
    }

    fn err(&self, name: &str, message: String) -> TrainError {
        TrainError::Weight {
            path: self.weights.path.clone(),
            name: self.full(name),
            message,
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.weights.synthetic.is_some() || self.weights.tensors.contains_key(&self.full(name))
    }

    /// Tensor `name` uploaded to the backend. Its stored shape must be `shape`, optionally followed
    /// by 1s (a 1×1 convolution's `[out, in, 1, 1]` read as a linear `[out, in]`).
    pub fn param(&self, name: &str, shape: &[usize]) -> Result<B::Buf, TrainError> {
        let full = self.full(name);
        if let Some(amp) = self.weights.synthetic {
            return Ok(self.be.upload(&synthetic_values(&full, shape, amp)));
        }
        let (got, data) = self
            .weights
            .tensors
            .get(&full)
            .ok_or_else(|| self.err(name, "missing from the weights file".into()))?;
        let ok = got.len() >= shape.len()
            && got[..shape.len()] == *shape
            && got[shape.len()..].iter().all(|&d| d == 1);
        if !ok {
            return Err(self.err(
                name,
                format!("shape {got:?}, the UNet config implies {shape:?}"),
            ));
        }
        self.state.borrow_mut().used.insert(full);
        Ok(self.be.upload(data))
    }

    /// Registers a linear module (a possible LoRA target); returns its index.
    pub fn register_linear(&self, name: &str, in_features: usize, out_features: usize) -> usize {
        let mut st = self.state.borrow_mut();
        st.linears.push(LinearInfo {
            name: self.module_path(name),
            in_features,
            out_features,
        });
        st.linears.len() - 1
    }
}

/// Builds something from the weights under `root` and checks that every tensor under `root` was
/// used. Returns it with the linear modules it registered.
pub fn build<B: Backend, T>(
    be: &B,
    weights: &Weights,
    root: &str,
    f: impl FnOnce(&Loader<'_, B>) -> Result<T, TrainError>,
) -> Result<(T, Vec<LinearInfo>), TrainError> {
    let state = RefCell::new(LoadState::default());
    let loader = Loader {
        be,
        weights,
        state: &state,
        root,
        prefix: String::new(),
    };
    let built = f(&loader)?;
    let state = state.into_inner();
    let unused: Vec<&str> = weights
        .names()
        .filter(|n| n.starts_with(root) && !state.used.contains(*n))
        .take(5)
        .collect();
    if !unused.is_empty() {
        return Err(TrainError::Weight {
            path: weights.path.clone(),
            name: unused.join(", "),
            message: "not used by the model the config describes (wrong config for these weights?)"
                .into(),
        });
    }
    Ok((built, state.linears))
}
