//! What a caller asks for, and what progress looks like.

use crate::lora::AdapterRef;
use crate::scheduler::SamplerKind;

/// One text-to-image request. Fields left at `None` take the bundle's defaults.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: String,
    /// Empty string = unconditional, as diffusers does when no negative prompt is given.
    pub negative_prompt: String,
    /// Seeds the documented RNG ([`crate::rng::TorchRng`]): initial latents, then any sampler
    /// noise, in diffusers' order, so a seed gives the image diffusers gives with
    /// `torch.Generator().manual_seed(seed)` on the CPU.
    pub seed: u64,
    pub steps: Option<u32>,
    pub guidance: Option<f32>,
    pub sampler: Option<SamplerKind>,
    /// DDIM's eta (0 = deterministic).
    pub eta: f64,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Images per request (one batch).
    pub count: u32,
    pub adapters: Vec<AdapterRef>,
    /// Initial latents `[count, C, h, w]` instead of seeded noise (diffusers' `latents=`; they are
    /// multiplied by the sampler's initial sigma).
    pub init_latents: Option<Vec<f32>>,
}

impl GenerateRequest {
    pub fn new(prompt: impl Into<String>) -> Self {
        GenerateRequest {
            prompt: prompt.into(),
            negative_prompt: String::new(),
            seed: 0,
            steps: None,
            guidance: None,
            sampler: None,
            eta: 0.0,
            width: None,
            height: None,
            count: 1,
            adapters: Vec::new(),
            init_latents: None,
        }
    }
}

/// Which part of a generation is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    EncodingPrompt,
    Denoising,
    Decoding,
}

/// A progress report; the callback returns `true` to continue, `false` to cancel.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub stage: Stage,
    /// Steps completed (denoising), 0-based count.
    pub step: u32,
    pub total_steps: u32,
}
