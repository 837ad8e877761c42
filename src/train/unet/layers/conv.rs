//! 2-D convolution with frozen weights: conv_in/conv_out, the resnets' 3×3 and 1×1 shortcut
//! convolutions, the down-samplers (stride 2) and the up-samplers' convolution.

use super::super::super::backend::{Backend, ConvGeom};
use super::super::super::TrainError;
use super::super::weights::Loader;

pub struct Conv2d<B: Backend> {
    w: B::Buf,
    bias: Option<B::Buf>,
    pub cin: usize,
    pub cout: usize,
    pub kernel: usize,
    pub stride: usize,
    /// top, left, bottom, right
    pub pad: [usize; 4],
}

impl<B: Backend> Conv2d<B> {
    /// Loads `name.weight` `[cout, cin, k, k]` and `name.bias` when present.
    pub fn load(
        ld: &Loader<'_, B>,
        name: &str,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        pad: [usize; 4],
    ) -> Result<Self, TrainError> {
        let w = ld.param(&format!("{name}.weight"), &[cout, cin, kernel, kernel])?;
        let bias_name = format!("{name}.bias");
        let bias = if ld.has(&bias_name) {
            Some(ld.param(&bias_name, &[cout])?)
        } else {
            None
        };
        Ok(Conv2d {
            w,
            bias,
            cin,
            cout,
            kernel,
            stride,
            pad,
        })
    }

    /// The geometry for an input `[n, cin, h, w]`.
    pub fn geom(&self, n: usize, h: usize, w: usize) -> ConvGeom {
        ConvGeom {
            n,
            cin: self.cin,
            h,
            w,
            cout: self.cout,
            kh: self.kernel,
            kw: self.kernel,
            stride: self.stride,
            pad_top: self.pad[0],
            pad_left: self.pad[1],
            pad_bottom: self.pad[2],
            pad_right: self.pad[3],
        }
    }

    /// `x [n, cin, h, w] → y [n, cout, oh, ow]`; returns `(y, oh, ow)`. Nothing is cached: the
    /// input gradient needs only the weights.
    pub fn forward(
        &self,
        be: &B,
        x: &B::Buf,
        n: usize,
        h: usize,
        w: usize,
    ) -> (B::Buf, usize, usize) {
        let g = self.geom(n, h, w);
        (
            be.conv2d(x, &self.w, self.bias.as_ref(), &g),
            g.out_h(),
            g.out_w(),
        )
    }

    /// Input gradient for an input of `[n, cin, h, w]`.
    pub fn backward(&self, be: &B, dy: &B::Buf, n: usize, h: usize, w: usize) -> B::Buf {
        be.conv2d_backward_input(dy, &self.w, &self.geom(n, h, w))
    }
}
