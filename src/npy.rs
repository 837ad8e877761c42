//! `.npy` files for latents (`--init-latents`, `--save-latents`), so results can be exchanged with
//! numpy/diffusers exactly.

use ndarray::{ArrayD, IxDyn};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("{path}: cannot read .npy: {message}. Fix: save a float32 array with numpy.save")]
    Read { path: String, message: String },
    #[error("{path}: cannot write .npy: {message}")]
    Write { path: String, message: String },
}

/// Reads a float32 (or float64, converted) array; returns (shape, data).
pub fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>), NpyError> {
    let err = |m: String| NpyError::Read {
        path: path.display().to_string(),
        message: m,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let arr: ArrayD<f32> = match ndarray_npy::ReadNpyExt::read_npy(&file) {
        Ok(a) => a,
        Err(e32) => {
            let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
            let a64: ArrayD<f64> =
                ndarray_npy::ReadNpyExt::read_npy(file).map_err(|_| err(e32.to_string()))?;
            a64.mapv(|v| v as f32)
        }
    };
    let shape = arr.shape().to_vec();
    Ok((shape, arr.as_standard_layout().iter().copied().collect()))
}

/// Writes a float32 array atomically.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<(), NpyError> {
    let err = |m: String| NpyError::Write {
        path: path.display().to_string(),
        message: m,
    };
    let arr =
        ArrayD::from_shape_vec(IxDyn(shape), data.to_vec()).map_err(|e| err(e.to_string()))?;
    let mut buf = Vec::new();
    ndarray_npy::WriteNpyExt::write_npy(&arr, &mut buf).map_err(|e| err(e.to_string()))?;
    crate::fsutil::atomic_write(path, &buf).map_err(|e| err(e.to_string()))
}
