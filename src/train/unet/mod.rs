//! SD-1.x/2.x `UNet2DConditionModel`: config, weights, layers and the assembled model.

pub mod config;
pub mod layers;
mod model;
pub mod weights;

pub use config::{BlockSpec, UNetConfig};
pub use model::{UNet, UNetCache, UNetInput};
pub use weights::Weights;
