//! Group and layer normalisation with frozen affine parameters.

use super::super::super::backend::{Backend, GroupNormDims};
use super::super::super::TrainError;
use super::super::weights::Loader;

pub struct GroupNorm<B: Backend> {
    gamma: B::Buf,
    beta: B::Buf,
    pub channels: usize,
    pub groups: usize,
    pub eps: f32,
}

impl<B: Backend> GroupNorm<B> {
    pub fn load(
        ld: &Loader<'_, B>,
        name: &str,
        channels: usize,
        groups: usize,
        eps: f32,
    ) -> Result<Self, TrainError> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(TrainError::Weight {
                path: Default::default(),
                name: ld.module_path(name),
                message: format!("{channels} channels cannot be split into {groups} groups"),
            });
        }
        Ok(GroupNorm {
            gamma: ld.param(&format!("{name}.weight"), &[channels])?,
            beta: ld.param(&format!("{name}.bias"), &[channels])?,
            channels,
            groups,
            eps,
        })
    }

    fn dims(&self, n: usize, hw: usize) -> GroupNormDims {
        GroupNormDims {
            n,
            c: self.channels,
            hw,
            groups: self.groups,
            eps: self.eps,
        }
    }

    /// `x [n, c, hw]` → (normalised, optionally SiLU'd output; statistics for backward).
    pub fn forward(&self, be: &B, x: &B::Buf, n: usize, hw: usize, silu: bool) -> (B::Buf, B::Buf) {
        be.group_norm(x, &self.dims(n, hw), &self.gamma, &self.beta, silu)
    }

    /// Input gradient; `x` and `stats` from the forward.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        be: &B,
        x: &B::Buf,
        stats: &B::Buf,
        dy: &B::Buf,
        n: usize,
        hw: usize,
        silu: bool,
    ) -> B::Buf {
        be.group_norm_backward(
            x,
            stats,
            &self.gamma,
            &self.beta,
            dy,
            &self.dims(n, hw),
            silu,
        )
    }
}

pub struct LayerNorm<B: Backend> {
    gamma: B::Buf,
    beta: B::Buf,
    pub dim: usize,
    pub eps: f32,
}

impl<B: Backend> LayerNorm<B> {
    pub fn load(ld: &Loader<'_, B>, name: &str, dim: usize, eps: f32) -> Result<Self, TrainError> {
        Ok(LayerNorm {
            gamma: ld.param(&format!("{name}.weight"), &[dim])?,
            beta: ld.param(&format!("{name}.bias"), &[dim])?,
            dim,
            eps,
        })
    }

    /// `x [rows, dim]` → (output, statistics).
    pub fn forward(&self, be: &B, x: &B::Buf, rows: usize) -> (B::Buf, B::Buf) {
        be.layer_norm(x, rows, self.dim, self.eps, &self.gamma, &self.beta)
    }

    pub fn backward(&self, be: &B, x: &B::Buf, stats: &B::Buf, dy: &B::Buf, rows: usize) -> B::Buf {
        be.layer_norm_backward(x, stats, &self.gamma, dy, rows, self.dim)
    }
}
