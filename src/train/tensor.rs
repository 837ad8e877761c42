//! A shaped, shareable handle on a backend buffer.
//!
//! Buffers are reference-counted so that a forward pass can keep an activation in several caches
//! (a resnet's input is also a skip connection and the previous layer's output) at the cost of one
//! copy; writes go through [`Tensor::buf_mut`], which copies only if the buffer is shared.

use super::backend::Backend;
use std::sync::Arc;

pub struct Tensor<B: Backend> {
    buf: Arc<B::Buf>,
    shape: Vec<usize>,
}

impl<B: Backend> Clone for Tensor<B> {
    fn clone(&self) -> Self {
        Tensor {
            buf: self.buf.clone(),
            shape: self.shape.clone(),
        }
    }
}

impl<B: Backend> std::fmt::Debug for Tensor<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tensor")
            .field("shape", &self.shape)
            .finish()
    }
}

impl<B: Backend> Tensor<B> {
    /// Wraps a buffer; panics if its length is not the product of `shape` (a programming error).
    pub fn new(be: &B, buf: B::Buf, shape: &[usize]) -> Self {
        assert_eq!(
            be.len(&buf),
            shape.iter().product::<usize>(),
            "tensor buffer does not match shape {shape:?}"
        );
        Tensor {
            buf: Arc::new(buf),
            shape: shape.to_vec(),
        }
    }

    /// Copies host data to the backend.
    pub fn from_host(be: &B, data: &[f32], shape: &[usize]) -> Self {
        Tensor::new(be, be.upload(data), shape)
    }

    pub fn to_host(&self, be: &B) -> Vec<f32> {
        be.download(&self.buf)
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn buf(&self) -> &B::Buf {
        &self.buf
    }

    /// Mutable access; copies the buffer first if another handle shares it.
    pub fn buf_mut(&mut self) -> &mut B::Buf {
        Arc::make_mut(&mut self.buf)
    }

    /// The same data under another shape of equal size (shared, no copy).
    pub fn reshape(&self, shape: &[usize]) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            self.numel(),
            "reshape {:?} -> {shape:?}",
            self.shape
        );
        Tensor {
            buf: self.buf.clone(),
            shape: shape.to_vec(),
        }
    }
}
