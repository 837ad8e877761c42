//! diffusers `Downsample2D` (3×3 convolution, stride 2) and `Upsample2D` (nearest resize, then a
//! 3×3 convolution), both with `use_conv=True` as in every SD UNet.

use super::super::super::backend::Backend;
use super::super::super::tensor::Tensor;
use super::super::super::TrainError;
use super::super::weights::Loader;
use super::Conv2d;

pub struct Downsample<B: Backend> {
    conv: Conv2d<B>,
}

impl<B: Backend> Downsample<B> {
    /// `padding` as in the UNet config's `downsample_padding`; 0 means diffusers' asymmetric
    /// `F.pad(x, (0, 1, 0, 1))` (one zero row at the bottom, one column at the right).
    pub fn load(ld: &Loader<'_, B>, channels: usize, padding: usize) -> Result<Self, TrainError> {
        let pad = if padding == 0 {
            [0, 0, 1, 1]
        } else {
            [padding; 4]
        };
        Ok(Downsample {
            conv: Conv2d::load(ld, "conv", channels, channels, 3, 2, pad)?,
        })
    }

    pub fn forward(&self, be: &B, x: &Tensor<B>) -> Tensor<B> {
        let s = x.shape();
        let (y, oh, ow) = self.conv.forward(be, x.buf(), s[0], s[2], s[3]);
        Tensor::new(be, y, &[s[0], self.conv.cout, oh, ow])
    }

    /// `in_shape`: the forward input's `[n, c, h, w]`.
    pub fn backward(&self, be: &B, dy: &B::Buf, in_shape: &[usize]) -> B::Buf {
        self.conv
            .backward(be, dy, in_shape[0], in_shape[2], in_shape[3])
    }
}

pub struct Upsample<B: Backend> {
    conv: Conv2d<B>,
    pub channels: usize,
}

impl<B: Backend> Upsample<B> {
    pub fn load(ld: &Loader<'_, B>, channels: usize) -> Result<Self, TrainError> {
        Ok(Upsample {
            conv: Conv2d::load(ld, "conv", channels, channels, 3, 1, [1; 4])?,
            channels,
        })
    }

    /// `x [n, c, h, w]` resized to `out_hw` (2× normally; the skip's size when the latent is not
    /// a multiple of the total down-sampling factor, as diffusers' `upsample_size`), then conv.
    pub fn forward(&self, be: &B, x: &Tensor<B>, out_hw: (usize, usize)) -> Tensor<B> {
        let s = x.shape();
        let (n, c) = (s[0], s[1]);
        let r = be.resize_nearest(x.buf(), n * c, (s[2], s[3]), out_hw);
        let (y, oh, ow) = self.conv.forward(be, &r, n, out_hw.0, out_hw.1);
        Tensor::new(be, y, &[n, self.conv.cout, oh, ow])
    }

    /// Convolution backward at the resized size, then the resize's scatter-add.
    pub fn backward(
        &self,
        be: &B,
        dy: &B::Buf,
        in_shape: &[usize],
        out_hw: (usize, usize),
    ) -> B::Buf {
        let (n, c) = (in_shape[0], in_shape[1]);
        let dr = self.conv.backward(be, dy, n, out_hw.0, out_hw.1);
        be.resize_nearest_backward(&dr, n * c, (in_shape[2], in_shape[3]), out_hw)
    }
}
