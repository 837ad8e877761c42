//! The UNet's layers, each a forward that returns its output and a cache of exactly what its
//! backward needs, and a backward that returns the input gradient and adds the LoRA gradients.
//! No layer computes a gradient for a frozen weight.

mod attention;
mod conv;
mod feed_forward;
mod linear;
mod norm;
mod resnet;
mod sampling;
mod time;
mod transformer;

pub use attention::{Attention, AttnCache};
pub use conv::Conv2d;
pub use feed_forward::{FeedForward, FfCache};
pub use linear::{Linear, LinearCache};
pub use norm::{GroupNorm, LayerNorm};
pub use resnet::{Resnet, ResnetCache};
pub use sampling::{Downsample, Upsample};
pub use time::{sinusoidal_embedding, TimeEmbedding, TimeEmbeddingCache};
pub use transformer::{BlockCache, Transformer2D, Transformer2DCache, TransformerBlock};

use super::super::backend::Backend;
use super::super::lora::{LoraParams, LoraSet};

/// What every forward and backward call sees besides its own inputs: the backend and the LoRA
/// parameters in effect (None = the frozen base model, e.g. the DPO reference).
pub struct Ctx<'a, B: Backend> {
    pub be: &'a B,
    pub lora: Option<&'a LoraSet<B>>,
}

impl<B: Backend> Clone for Ctx<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend> Copy for Ctx<'_, B> {}

impl<'a, B: Backend> Ctx<'a, B> {
    pub fn new(be: &'a B, lora: Option<&'a LoraSet<B>>) -> Self {
        Ctx { be, lora }
    }

    /// The LoRA parameters of linear module `id`, if it is adapted in this pass.
    pub fn lora_for(&self, id: usize) -> Option<&'a LoraParams<B>> {
        self.lora.and_then(|l| l.get(id))
    }
}
