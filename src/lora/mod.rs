//! LoRA adapters at inference: reading adapter files (diffusers/peft and kohya keys), validating
//! them against the bundle's LoRA inputs, composing several with strengths, and merging into the
//! UNet's weights.

mod compose;
mod keys;
mod merge;
mod read;

pub use compose::{compose, AdapterRef, ComposedLora};
pub use merge::merge_into_unet;
pub use read::{LoraAdapter, LoraPair};

use std::path::PathBuf;

/// Errors of the adapter layer. Each names the file and, where there is one, the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}: not a valid safetensors file: {message}. Fix: re-save the adapter (it may be truncated)")]
    Format { path: PathBuf, message: String },
    #[error("{path}: key `{key}`: {message}")]
    Key {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{path}: module `{module}` is not a LoRA input of this bundle (targets {targets}). The adapter was made for another model or other target modules")]
    UnknownModule {
        path: PathBuf,
        module: String,
        targets: String,
    },
    #[error("{path}: module `{module}`: {which} has shape {got:?}, the bundle expects {expected}. The adapter was made for another model")]
    Shape {
        path: PathBuf,
        module: String,
        which: &'static str,
        got: Vec<usize>,
        expected: String,
    },
    #[error("{path}: no UNet LoRA tensors found (expected keys like `unet.<module>.lora_A.weight` or `lora_unet_<module>.lora_down.weight`)")]
    Empty { path: PathBuf },
    #[error("adapter strength {strength} for {name} is not finite. Fix: give a number like 0.8")]
    Strength { name: String, strength: f32 },
    #[error("{path}: {message}")]
    Merge { path: PathBuf, message: String },
}
