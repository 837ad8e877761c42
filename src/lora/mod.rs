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

/// Splits a command-line adapter argument `PATH[:STRENGTH]` (strength 1 when absent). A colon
/// followed by something that is not a number stays in the path, so `a:b` is a path.
/// The strength may be non-finite (`NaN`, `inf`); callers reject that with their own message.
pub fn split_adapter_arg(s: &str) -> (&str, f32) {
    match s.rsplit_once(':') {
        Some((p, st)) => match st.parse::<f32>() {
            Ok(v) => (p, v),
            Err(_) => (s, 1.0),
        },
        None => (s, 1.0),
    }
}
