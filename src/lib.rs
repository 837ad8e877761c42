//! dpoimg: a text-to-image diffusion engine on ONNX Runtime, with LoRA adapters and (next)
//! preference fine-tuning (Diffusion-DPO).
//!
//! Layers, each with its own error type: [`runtime`] (ONNX Runtime library and sessions),
//! [`bundle`] (model bundle v1), [`tokenize`], [`scheduler`] (samplers), [`lora`] (adapters),
//! [`engine`] (the generation pipeline), [`provenance`] (PNG output).

pub mod bundle;
pub mod cancel;
pub mod data;
pub mod engine;
pub mod eval;
pub mod experiment;
pub mod ffi;
pub mod finetune;
pub mod fsutil;
pub mod hash;
pub mod limits;
pub mod lora;
pub mod loss;
pub mod metrics;
pub mod npy;
pub mod optim;
pub mod provenance;
pub mod remote;
pub mod rng;
pub mod runtime;
pub mod scheduler;
pub mod score;
pub mod stats;
pub mod tokenize;
pub mod train;
pub mod world;

pub use cancel::CancelToken;
pub use engine::{Engine, EngineError, EngineOptions, GenerateRequest, Generated, Progress, Stage};
