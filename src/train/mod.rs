//! The trainer's own UNet: SD-1.x/2.x `UNet2DConditionModel` forward and backward written layer by
//! layer (the llm.c approach), with LoRA, on a pluggable compute [`backend`].
//!
//! Why not autograd or candle: see `DESIGN.md` ("The trainer's UNet"). Each layer's forward keeps
//! exactly what its backward needs, and the backward returns the input gradient and the LoRA
//! gradients only — the base weights are frozen, so no weight gradient is ever computed or stored.
//!
//! How a loss module uses it:
//!
//! ```no_run
//! use dpoimg::train::{Cpu, LoraConfig, LoraGrads, LoraSet, Tensor, UNet, UNetInput};
//! use std::sync::Arc;
//! # fn main() -> Result<(), dpoimg::train::TrainError> {
//! let be = Arc::new(Cpu::new(2));
//! let unet = UNet::load(be.clone(), "unet_config.json".as_ref(), "unet.safetensors".as_ref())?;
//! let mut lora = LoraSet::new(&*be, unet.linear_modules(), &LoraConfig::default())?;
//! # let (sample, ehs) = (vec![0f32; 2 * 4 * 8 * 8], vec![0f32; 2 * 77 * 768]);
//! let x = Tensor::from_host(&*be, &sample, &[2, 4, 8, 8]);
//! let c = Tensor::from_host(&*be, &ehs, &[2, 77, 768]);
//! let input = UNetInput { sample: &x, timesteps: &[999.0, 10.0], ehs: &c };
//! // policy: keep the activations; reference: LoRA off, nothing kept
//! let (eps, cache) = unet.forward_train(&input, Some(&lora), false)?;
//! let eps_ref = unet.forward(&input, None)?;
//! # let d_eps = eps.clone();
//! // d_eps = dLoss/d eps from the loss module, same shape as eps
//! let mut grads = LoraGrads::zeros(&*be, &lora);
//! let d_sample = unet.backward(cache, &d_eps, Some(&lora), &mut grads)?;
//! // optimiser step on lora.params_mut() with grads.get(i) ...
//! # let _ = (eps_ref, d_sample);
//! # Ok(()) }
//! ```

pub mod backend;
pub mod lora;
pub mod tensor;
pub mod unet;

#[cfg(feature = "cuda")]
pub use backend::Cuda;
pub use backend::{Backend, Cpu};
pub use lora::{LinearInfo, LoraConfig, LoraGrads, LoraInit, LoraParams, LoraSet};
pub use tensor::Tensor;
pub use unet::{UNet, UNetCache, UNetConfig, UNetInput};

use std::path::PathBuf;

/// Errors of the trainer's model layer; each names the file or tensor at fault.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}: UNet config: `{field}` {message}")]
    Config {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{path}: weight `{name}`: {message}")]
    Weight {
        path: PathBuf,
        name: String,
        message: String,
    },
    #[error("LoRA: {0}")]
    Lora(String),
    #[error("input `{field}`: {message}")]
    Input {
        field: &'static str,
        message: String,
    },
    /// A compute device that cannot be used (missing driver or library, no such GPU, kernels
    /// that do not compile or load); the message names what is missing and the fix.
    #[error("{device}: {message}")]
    Device { device: String, message: String },
}
