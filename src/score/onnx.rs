//! One ONNX Runtime session for a scoring or metric model: opened with the caller's device and
//! threads, its inputs checked by name, and run to named f32 outputs.

use crate::runtime::{self, Device, Runtime, SessionOptions};
use ort::session::{Session, SessionInputValue};
use ort::value::{TensorElementType, ValueType};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One f32 output: (shape, data).
pub(crate) type Output = (Vec<usize>, Vec<f32>);

/// A session and its file (for messages). `ort` runs take `&mut Session`, hence the mutex.
pub(crate) struct OnnxModel {
    pub(crate) path: PathBuf,
    session: Mutex<Session>,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("path", &self.path)
            .finish()
    }
}

impl OnnxModel {
    pub(crate) fn open(
        rt: &Runtime,
        path: &Path,
        options: &SessionOptions,
        device: Device,
    ) -> Result<Self, runtime::RuntimeError> {
        let session = runtime::open_session(rt, path, options, device)?;
        Ok(OnnxModel {
            path: path.to_path_buf(),
            session: Mutex::new(session),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks that tensor input `name` exists with one of `types` and that each `Some` dim
    /// matches; returns its element type. Errors name the model file, the input and what it has.
    pub(crate) fn expect_input(
        &self,
        name: &str,
        types: &[TensorElementType],
        dims: &[Option<i64>],
    ) -> Result<TensorElementType, String> {
        let s = self.lock();
        let Some(input) = s.inputs().iter().find(|i| i.name() == name) else {
            let names: Vec<&str> = s.inputs().iter().map(|i| i.name()).collect();
            return Err(format!(
                "{}: has no input `{name}` (inputs: {})",
                self.path.display(),
                names.join(", ")
            ));
        };
        let ValueType::Tensor { ty, shape, .. } = input.dtype() else {
            return Err(format!(
                "{}: input `{name}` is not a tensor",
                self.path.display()
            ));
        };
        if !types.contains(ty) {
            return Err(format!(
                "{}: input `{name}` has element type {ty:?}, expected {types:?}",
                self.path.display()
            ));
        }
        let got: Vec<i64> = shape.iter().copied().collect();
        if got.len() != dims.len() {
            return Err(format!(
                "{}: input `{name}` has rank {} ({got:?}), expected {}",
                self.path.display(),
                got.len(),
                dims.len()
            ));
        }
        for (i, (g, w)) in got.iter().zip(dims).enumerate() {
            if let Some(w) = w {
                if *g >= 0 && g != w {
                    return Err(format!(
                        "{}: input `{name}` dimension {i} is {g}, the manifest implies {w}",
                        self.path.display()
                    ));
                }
            }
        }
        Ok(*ty)
    }

    /// Checks that output `name` exists and returns its static dims (-1 = dynamic).
    pub(crate) fn expect_output(&self, name: &str) -> Result<Vec<i64>, String> {
        let s = self.lock();
        match s.outputs().iter().find(|o| o.name() == name) {
            Some(o) => Ok(match o.dtype() {
                ValueType::Tensor { shape, .. } => shape.iter().copied().collect(),
                _ => Vec::new(),
            }),
            None => {
                let names: Vec<&str> = s.outputs().iter().map(|o| o.name()).collect();
                Err(format!(
                    "{}: has no output `{name}` (outputs: {})",
                    self.path.display(),
                    names.join(", ")
                ))
            }
        }
    }

    /// Runs and returns each requested f32 output as (shape, data).
    pub(crate) fn run(
        &self,
        inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)>,
        outputs: &[&str],
    ) -> Result<Vec<Output>, String> {
        let mut s = self.lock();
        let result = s
            .run(inputs)
            .map_err(|e| format!("{}: run failed: {e}", self.path.display()))?;
        outputs
            .iter()
            .map(|name| {
                let v = result.get(*name).ok_or_else(|| {
                    format!("{}: produced no output `{name}`", self.path.display())
                })?;
                let (shape, data) = v
                    .try_extract_tensor::<f32>()
                    .map_err(|e| format!("{}: output `{name}`: {e}", self.path.display()))?;
                Ok((shape.iter().map(|&d| d as usize).collect(), data.to_vec()))
            })
            .collect()
    }
}

/// An owned tensor input of any element type `ort` supports.
pub(crate) fn input<
    'a,
    T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static,
>(
    shape: Vec<usize>,
    data: Vec<T>,
) -> Result<SessionInputValue<'a>, String> {
    ort::value::Tensor::from_array((shape, data))
        .map(SessionInputValue::from)
        .map_err(|e| format!("building an input tensor: {e}"))
}
