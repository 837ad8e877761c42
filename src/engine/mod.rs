//! The generation engine: one immutable [`Engine`] per bundle, shared across threads, serving
//! per-request options.

mod flags;
mod generate;
mod models;
mod request;

pub use flags::RuntimeFlags;
pub use generate::{uses_cfg, BatchKey, Generated, Image, Timings};
pub use request::{GenerateRequest, Progress, Stage};

use crate::bundle::{Bundle, BundleError, Verify};
use crate::cancel::CancelToken;
use crate::lora::{AdapterRef, ComposedLora, LoraAdapter, LoraError};
use crate::runtime::{self, Device, Runtime, RuntimeError, SessionOptions};
use crate::scheduler::{SchedulerConfig, SchedulerError};
use crate::tokenize::{PromptTokenizer, TokenizeError};
use models::{check_unet, f32_input, LoraValues, Model};
use ort::session::SessionInputValue;
use ort::value::{Tensor, TensorElementType};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Errors of the engine layer; lower layers' errors are wrapped with their context.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    #[error(transparent)]
    Lora(#[from] LoraError),
    #[error("scheduler: {0}")]
    Scheduler(#[from] SchedulerError),
    #[error("{file}: {message}")]
    Model { file: PathBuf, message: String },
    #[error("invalid request: `{field}` {message}")]
    InvalidRequest {
        field: &'static str,
        message: String,
    },
    #[error("cancelled")]
    Cancelled,
}

impl EngineError {
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        EngineError::InvalidRequest {
            field,
            message: message.into(),
        }
    }
}

/// How to open an engine.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    pub session: SessionOptions,
    pub verify: Verify,
    /// Explicit ONNX Runtime library; None = [`runtime::locate_library`].
    pub ort_library: Option<PathBuf>,
}

/// A loaded bundle: tokenizer, text encoder, UNet (with LoRA inputs) and VAE decoder.
/// `Send + Sync`; every method takes `&self`.
pub struct Engine {
    bundle: Bundle,
    runtime: Runtime,
    device: Device,
    tokenizer: PromptTokenizer,
    text_encoder: Model,
    text_ids_i32: bool,
    unet: Model,
    unet_timestep_i64: bool,
    vae_decoder: Model,
    /// Opened on first use: only training (encode once) needs it.
    vae_encoder: std::sync::Mutex<Option<Arc<Model>>>,
    session_options: SessionOptions,
    scheduler: SchedulerConfig,
    layers_per_block: usize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("bundle", &self.bundle.dir())
            .field("device", &self.device)
            .finish()
    }
}

impl Engine {
    /// Validates the bundle, loads ONNX Runtime (once per process) and opens the sessions.
    pub fn open(dir: impl AsRef<Path>, options: &EngineOptions) -> Result<Engine, EngineError> {
        let bundle = Bundle::open(dir, options.verify)?;
        let runtime = Runtime::get(options.ort_library.as_deref())?;
        let device = runtime::resolve_device(&runtime, options.session.device)?;
        let m = bundle.manifest().clone();
        let open = |rel: &str| -> Result<Model, EngineError> {
            let p = bundle.path(rel);
            let s = runtime::open_session(&runtime, &p, &options.session, device)?;
            Ok(Model::new(p, s))
        };
        let tokenizer = PromptTokenizer::from_file(
            &bundle.path(&m.text_encoder.tokenizer),
            m.text_encoder.max_length,
            m.text_encoder.pad_id,
        )?;
        let text_encoder = open(&m.text_encoder.onnx)?;
        let ids_ty = text_encoder.expect_input(
            "input_ids",
            &[TensorElementType::Int64, TensorElementType::Int32],
            &[None, Some(m.text_encoder.max_length as i64)],
        )?;
        text_encoder.expect_output("last_hidden_state")?;
        let unet = open(&m.unet.onnx)?;
        let ts_ty = check_unet(&unet, &m)?;
        let vae_decoder = open(&m.vae.decoder)?;
        vae_decoder.expect_input(
            "latent_sample",
            &[TensorElementType::Float32],
            &[None, Some(m.vae.latent_channels as i64), None, None],
        )?;
        vae_decoder.expect_output("sample")?;
        let scheduler: SchedulerConfig =
            serde_json::from_value(m.scheduler.clone()).map_err(|e| BundleError::Field {
                path: bundle.dir().join(crate::bundle::MANIFEST_FILE),
                field: "scheduler".into(),
                message: e.to_string(),
            })?;
        scheduler.validate()?;
        let layers_per_block = layers_per_block(&bundle)?;
        tracing::info!(bundle = %bundle.dir().display(), %device, "engine ready");
        Ok(Engine {
            bundle,
            runtime,
            device,
            tokenizer,
            text_encoder,
            text_ids_i32: ids_ty == TensorElementType::Int32,
            unet,
            unet_timestep_i64: ts_ty == TensorElementType::Int64,
            vae_decoder,
            vae_encoder: std::sync::Mutex::new(None),
            session_options: options.session.clone(),
            scheduler,
            layers_per_block,
        })
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The device the sessions run on (after resolving `auto`).
    pub fn device(&self) -> Device {
        self.device
    }

    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler
    }

    /// Reads and validates an adapter file against this bundle's LoRA inputs.
    pub fn load_adapter(&self, path: &Path) -> Result<Arc<LoraAdapter>, EngineError> {
        Ok(Arc::new(LoraAdapter::load(
            path,
            &self.bundle.manifest().unet.lora,
            self.layers_per_block,
        )?))
    }

    /// Composes adapters with strengths into UNet inputs.
    pub fn compose(&self, adapters: &[AdapterRef]) -> Result<ComposedLora, EngineError> {
        Ok(crate::lora::compose(
            &self.bundle.manifest().unet.lora,
            adapters,
        )?)
    }

    /// Token ids for a prompt (`max_length` of them).
    pub fn tokenize(&self, prompt: &str) -> Result<Vec<i64>, EngineError> {
        Ok(self.tokenizer.encode(prompt)?.ids)
    }

    /// Text-encoder `last_hidden_state` for a batch of prompts: `[B, max_length, hidden]`.
    pub fn encode_prompts(&self, prompts: &[&str]) -> Result<(Vec<usize>, Vec<f32>), EngineError> {
        let mut ort_time = Duration::ZERO;
        self.encode_prompts_timed(prompts, &CancelToken::new(), &mut ort_time)
    }

    fn encode_prompts_timed(
        &self,
        prompts: &[&str],
        cancel: &CancelToken,
        ort_time: &mut Duration,
    ) -> Result<(Vec<usize>, Vec<f32>), EngineError> {
        let len = self.tokenizer.max_length();
        let mut ids = Vec::with_capacity(prompts.len() * len);
        for p in prompts {
            ids.extend(self.tokenizer.encode(p)?.ids);
        }
        let shape = vec![prompts.len(), len];
        let err = |e: ort::Error| EngineError::Model {
            file: self.text_encoder.path.clone(),
            message: e.to_string(),
        };
        let input: SessionInputValue = if self.text_ids_i32 {
            let v: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
            Tensor::from_array((shape, v)).map_err(err)?.into()
        } else {
            Tensor::from_array((shape, ids)).map_err(err)?.into()
        };
        self.text_encoder.run(
            vec![(Cow::Borrowed("input_ids"), input)],
            "last_hidden_state",
            cancel,
            ort_time,
        )
    }

    /// One UNet evaluation: `sample [B,C,h,w]`, one timestep per sample, text embeddings
    /// `[B, L, D]`, LoRA inputs. Used by generation and by parity tests against the trainer.
    pub fn unet_forward(
        &self,
        sample_shape: &[usize],
        sample: &[f32],
        timesteps: &[f32],
        ehs_shape: &[usize],
        ehs: &[f32],
        lora: &ComposedLora,
    ) -> Result<Vec<f32>, EngineError> {
        let lora = LoraValues::new(lora, &self.unet.path)?;
        let ehs = Tensor::from_array((ehs_shape.to_vec(), ehs.to_vec())).map_err(|e| {
            EngineError::Model {
                file: self.unet.path.clone(),
                message: e.to_string(),
            }
        })?;
        let mut t = Duration::ZERO;
        self.unet_run(
            sample_shape,
            sample.to_vec(),
            timesteps,
            &ehs,
            &lora,
            &CancelToken::new(),
            &mut t,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn unet_run(
        &self,
        sample_shape: &[usize],
        sample: Vec<f32>,
        timesteps: &[f32],
        ehs: &Tensor<f32>,
        lora: &LoraValues,
        cancel: &CancelToken,
        ort_time: &mut Duration,
    ) -> Result<Vec<f32>, EngineError> {
        let path = &self.unet.path;
        let b = sample_shape[0];
        let ts: SessionInputValue = if self.unet_timestep_i64 {
            let v: Vec<i64> = timesteps.iter().map(|t| t.round() as i64).collect();
            Tensor::from_array((vec![b], v))
                .map_err(|e| EngineError::Model {
                    file: path.clone(),
                    message: e.to_string(),
                })?
                .into()
        } else {
            f32_input(&[b], timesteps.to_vec(), path)?
        };
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = vec![
            (
                Cow::Borrowed("sample"),
                f32_input(sample_shape, sample, path)?,
            ),
            (Cow::Borrowed("timestep"), ts),
            (
                Cow::Borrowed("encoder_hidden_states"),
                SessionInputValue::from(ehs),
            ),
        ];
        inputs.extend(lora.feeds());
        Ok(self.unet.run(inputs, "out_sample", cancel, ort_time)?.1)
    }

    /// VAE decoder on scaled latents; returns `[B,3,H,W]` in the model's [-1, 1] range.
    fn decode(
        &self,
        shape: &[usize],
        latents: Vec<f32>,
        cancel: &CancelToken,
        ort_time: &mut Duration,
    ) -> Result<(Vec<usize>, Vec<f32>), EngineError> {
        let input = f32_input(shape, latents, &self.vae_decoder.path)?;
        self.vae_decoder.run(
            vec![(Cow::Borrowed("latent_sample"), input)],
            "sample",
            cancel,
            ort_time,
        )
    }
}

/// How an image becomes latents: the encoder distribution's mean, or a sample from it drawn with
/// [`crate::rng::TorchRng`] (diffusers' `latent_dist.sample(generator)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatentMode {
    Mean,
    Sample { seed: u64 },
}

impl Engine {
    fn vae_encoder(&self) -> Result<Arc<Model>, EngineError> {
        let mut slot = self.vae_encoder.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = slot.as_ref() {
            return Ok(Arc::clone(m));
        }
        let m = self.bundle.manifest();
        let p = self.bundle.path(&m.vae.encoder);
        let s = runtime::open_session(&self.runtime, &p, &self.session_options, self.device)?;
        let model = Model::new(p, s);
        model.expect_input(
            "sample",
            &[TensorElementType::Float32],
            &[None, Some(3), None, None],
        )?;
        model.expect_output("latent_mean")?;
        model.expect_output("latent_logvar")?;
        let model = Arc::new(model);
        *slot = Some(Arc::clone(&model));
        Ok(model)
    }

    /// VAE-encodes images `[B, 3, H, W]` in [-1, 1] into scaled latents
    /// (`(z − shift) · scaling_factor`, what the UNet is trained on), `[B, C, H/f, W/f]`.
    pub fn encode_images(
        &self,
        shape: [usize; 4],
        pixels: &[f32],
        mode: LatentMode,
    ) -> Result<(Vec<usize>, Vec<f32>), EngineError> {
        let m = self.bundle.manifest();
        let f = m.vae.downsample_factor;
        if shape[1] != 3
            || !shape[2].is_multiple_of(f)
            || !shape[3].is_multiple_of(f)
            || shape.iter().product::<usize>() != pixels.len()
        {
            return Err(EngineError::invalid(
                "pixels",
                format!(
                    "shape {shape:?} with {} values: need [B, 3, H, W] with H, W multiples of {f}",
                    pixels.len()
                ),
            ));
        }
        let enc = self.vae_encoder()?;
        let input = f32_input(&shape, pixels.to_vec(), &enc.path)?;
        let cancel = CancelToken::new();
        let mut t = Duration::ZERO;
        let (lshape, mean) = enc.run(
            vec![(Cow::Borrowed("sample"), input)],
            "latent_mean",
            &cancel,
            &mut t,
        )?;
        let mut z = match mode {
            LatentMode::Mean => mean,
            LatentMode::Sample { seed } => {
                let input = f32_input(&shape, pixels.to_vec(), &enc.path)?;
                let (_, logvar) = enc.run(
                    vec![(Cow::Borrowed("sample"), input)],
                    "latent_logvar",
                    &cancel,
                    &mut t,
                )?;
                let noise = crate::rng::TorchRng::new(seed).randn(mean.len());
                mean.iter()
                    .zip(&logvar)
                    .zip(&noise)
                    .map(|((mu, lv), e)| mu + (0.5 * lv.clamp(-30.0, 20.0)).exp() * e)
                    .collect()
            }
        };
        let (scale, shift) = (
            m.vae.scaling_factor as f32,
            m.vae.shift_factor.unwrap_or(0.0) as f32,
        );
        z.iter_mut().for_each(|v| *v = (*v - shift) * scale);
        Ok((lshape, z))
    }
}

/// `layers_per_block` from the UNet's diffusers config (needed to read kohya LDM names).
pub fn layers_per_block(bundle: &Bundle) -> Result<usize, EngineError> {
    let path = bundle.path(&bundle.manifest().unet.config);
    let text = std::fs::read_to_string(&path).map_err(|e| BundleError::Io {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| BundleError::Json {
        path: path.clone(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    match &v["layers_per_block"] {
        serde_json::Value::Number(n) => n.as_u64().map(|n| n as usize),
        // diffusers allows a per-block list; LDM numbering needs one value.
        serde_json::Value::Array(a) => a.first().and_then(|n| n.as_u64()).map(|n| n as usize),
        _ => None,
    }
    .ok_or_else(|| {
        BundleError::Field {
            path,
            field: "layers_per_block".into(),
            message: "missing or not an integer".into(),
        }
        .into()
    })
}
