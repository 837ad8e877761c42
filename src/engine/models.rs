//! The three ONNX models of generation, each behind a mutex (`ort` runs take `&mut Session`), with
//! their inputs checked against `bundle.json` when opened.

use super::EngineError;
use crate::bundle::Manifest;
use crate::cancel::CancelToken;
use crate::lora::ComposedLora;
use ort::session::{RunOptions, Session, SessionInputValue};
use ort::value::{Tensor, TensorElementType, ValueType};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One ONNX session with its file name for messages.
pub(crate) struct Model {
    pub(crate) path: PathBuf,
    session: Mutex<Session>,
}

fn model_err(path: &Path, message: impl Into<String>) -> EngineError {
    EngineError::Model {
        file: path.to_path_buf(),
        message: message.into(),
    }
}

/// Element type and dims (-1 = dynamic) of every tensor input, including inputs that have a
/// default initializer (ONNX Runtime lists those as "overridable initializers", not inputs: the
/// LoRA inputs are of that kind).
pub(crate) type InputTable = std::collections::HashMap<String, (TensorElementType, Vec<i64>)>;

fn tensor_of(dtype: &ValueType) -> Option<(TensorElementType, Vec<i64>)> {
    match dtype {
        ValueType::Tensor { ty, shape, .. } => Some((*ty, shape.iter().copied().collect())),
        _ => None,
    }
}

impl Model {
    pub(crate) fn new(path: PathBuf, session: Session) -> Self {
        Model {
            path,
            session: Mutex::new(session),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// All tensor inputs, required and overridable.
    pub(crate) fn inputs(&self) -> InputTable {
        let s = self.lock();
        let mut t: InputTable = s
            .inputs()
            .iter()
            .filter_map(|i| tensor_of(i.dtype()).map(|v| (i.name().to_string(), v)))
            .collect();
        for o in s.overridable_initializers() {
            if let Some(v) = tensor_of(o.dtype()) {
                t.insert(o.name().to_string(), v);
            }
        }
        t
    }

    /// Checks that input `name` exists in `table` with element type `ty` and that each `Some`
    /// dim matches.
    pub(crate) fn expect_input_in(
        &self,
        table: &InputTable,
        name: &str,
        ty: &[TensorElementType],
        dims: &[Option<i64>],
    ) -> Result<TensorElementType, EngineError> {
        let Some((got_ty, got_dims)) = table.get(name).cloned() else {
            let mut names: Vec<&str> = table
                .keys()
                .map(String::as_str)
                .filter(|n| !n.contains(".lora_"))
                .collect();
            names.sort();
            return Err(model_err(
                &self.path,
                format!(
                    "has no tensor input `{name}` (inputs: {}{})",
                    names.join(", "),
                    if table.keys().any(|n| n.contains(".lora_")) {
                        " and LoRA inputs"
                    } else {
                        ""
                    }
                ),
            ));
        };
        if !ty.contains(&got_ty) {
            return Err(model_err(
                &self.path,
                format!("input `{name}` has element type {got_ty:?}, expected {ty:?}"),
            ));
        }
        if got_dims.len() != dims.len() {
            return Err(model_err(
                &self.path,
                format!(
                    "input `{name}` has rank {} ({got_dims:?}), expected {}",
                    got_dims.len(),
                    dims.len()
                ),
            ));
        }
        for (i, (g, want)) in got_dims.iter().zip(dims).enumerate() {
            if let Some(w) = want {
                if *g >= 0 && g != w {
                    return Err(model_err(
                        &self.path,
                        format!("input `{name}` dimension {i} is {g}, bundle.json implies {w}"),
                    ));
                }
            }
        }
        Ok(got_ty)
    }

    /// [`Self::expect_input_in`] on a fresh input table.
    pub(crate) fn expect_input(
        &self,
        name: &str,
        ty: &[TensorElementType],
        dims: &[Option<i64>],
    ) -> Result<TensorElementType, EngineError> {
        self.expect_input_in(&self.inputs(), name, ty, dims)
    }

    pub(crate) fn expect_output(&self, name: &str) -> Result<(), EngineError> {
        let s = self.lock();
        if s.outputs().iter().any(|o| o.name() == name) {
            Ok(())
        } else {
            let names: Vec<&str> = s.outputs().iter().map(|i| i.name()).collect();
            Err(model_err(
                &self.path,
                format!("has no output `{name}` (outputs: {})", names.join(", ")),
            ))
        }
    }

    /// Runs with named inputs and returns one f32 output as (shape, data). Time spent inside
    /// ONNX Runtime is added to `ort_time`.
    pub(crate) fn run(
        &self,
        inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)>,
        output: &str,
        cancel: &CancelToken,
        ort_time: &mut Duration,
    ) -> Result<(Vec<usize>, Vec<f32>), EngineError> {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let ro = Arc::new(RunOptions::new().map_err(|e| model_err(&self.path, e.to_string()))?);
        cancel.attach(&ro);
        let mut s = self.lock();
        let t0 = Instant::now();
        let result = s.run_with_options(inputs, &*ro);
        *ort_time += t0.elapsed();
        cancel.detach(&ro);
        let outputs = match result {
            Ok(o) => o,
            Err(_) if cancel.is_cancelled() => return Err(EngineError::Cancelled),
            Err(e) => return Err(model_err(&self.path, format!("run failed: {e}"))),
        };
        let value = outputs
            .get(output)
            .ok_or_else(|| model_err(&self.path, format!("produced no output `{output}`")))?;
        let (shape, data) = value
            .try_extract_tensor::<f32>()
            .map_err(|e| model_err(&self.path, format!("output `{output}`: {e}")))?;
        Ok((shape.iter().map(|&d| d as usize).collect(), data.to_vec()))
    }
}

/// Builds an owned f32 tensor input.
pub(crate) fn f32_input<'a>(
    shape: &[usize],
    data: Vec<f32>,
    path: &Path,
) -> Result<SessionInputValue<'a>, EngineError> {
    Tensor::from_array((shape.to_vec(), data))
        .map(SessionInputValue::from)
        .map_err(|e| model_err(path, format!("building an input tensor: {e}")))
}

/// The UNet's LoRA inputs as ONNX Runtime values, built once per request and fed by reference at
/// every step.
pub(crate) struct LoraValues {
    values: Vec<(String, ort::value::DynValue)>,
}

impl LoraValues {
    pub(crate) fn new(lora: &ComposedLora, path: &Path) -> Result<Self, EngineError> {
        let values = lora
            .tensors
            .iter()
            .map(|t| {
                Tensor::from_array((t.shape.to_vec(), t.data.clone()))
                    .map(|v| (t.name.clone(), v.into_dyn()))
                    .map_err(|e| model_err(path, format!("LoRA input {}: {e}", t.name)))
            })
            .collect::<Result<_, _>>()?;
        Ok(LoraValues { values })
    }

    pub(crate) fn feeds(&self) -> impl Iterator<Item = (Cow<'_, str>, SessionInputValue<'_>)> {
        self.values
            .iter()
            .map(|(n, v)| (Cow::Borrowed(n.as_str()), SessionInputValue::from(v)))
    }
}

/// Checks the UNet's inputs against the manifest: core inputs and every LoRA input.
pub(crate) fn check_unet(
    unet_model: &Model,
    m: &Manifest,
) -> Result<TensorElementType, EngineError> {
    let c = m.unet.in_channels as i64;
    let table = unet_model.inputs();
    let unet = |name: &str, ty: &[TensorElementType], dims: &[Option<i64>]| {
        unet_model.expect_input_in(&table, name, ty, dims)
    };
    unet(
        "sample",
        &[TensorElementType::Float32],
        &[None, Some(c), None, None],
    )?;
    let ts = unet(
        "timestep",
        &[TensorElementType::Float32, TensorElementType::Int64],
        &[None],
    )?;
    unet(
        "encoder_hidden_states",
        &[TensorElementType::Float32],
        &[
            None,
            Some(m.text_encoder.max_length as i64),
            Some(m.unet.cross_attention_dim as i64),
        ],
    )?;
    for module in &m.unet.lora.modules {
        unet(
            &module.input_a(),
            &[TensorElementType::Float32],
            &[None, Some(module.in_features as i64)],
        )?;
        unet(
            &module.input_b(),
            &[TensorElementType::Float32],
            &[Some(module.out_features as i64), None],
        )?;
    }
    unet_model.expect_output("out_sample")?;
    Ok(ts)
}
