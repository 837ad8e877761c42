//! The txt2img loop: prompt embeddings with classifier-free guidance batched into one UNet call
//! per step, a sampler from [`crate::scheduler`], and VAE decoding, following diffusers'
//! `StableDiffusionPipeline` step for step.

use super::models::LoraValues;
use super::{Engine, EngineError, GenerateRequest, Progress, Stage};
use crate::cancel::CancelToken;
use crate::limits;
use crate::rng::TorchRng;
use crate::scheduler::{self, NoiseSource, SamplerKind, SamplerOptions};
use ort::value::Tensor;
use std::time::{Duration, Instant};

/// One RGB image, 8 bits per channel, rows top to bottom, no padding (stride = 3·width).
#[derive(Debug, Clone)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

/// Where the time went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub total: Duration,
    /// Time inside ONNX Runtime's `run` (text encoder, UNet, VAE).
    pub ort_run: Duration,
    pub unet_calls: u32,
}

/// Result of one request.
#[derive(Debug, Clone)]
pub struct Generated {
    pub images: Vec<Image>,
    /// Decoded pixels `[count, H, W, 3]` in [0, 1] before 8-bit rounding (diffusers' `output_type="np"`).
    pub pixels: Vec<f32>,
    /// Final latents `[count, C, h, w]` (before division by the VAE scaling factor).
    pub latents: Vec<f32>,
    pub latent_shape: [usize; 4],
    pub sampler: SamplerKind,
    pub steps: u32,
    pub guidance: f32,
    pub width: u32,
    pub height: u32,
    pub timings: Timings,
}

/// A request with defaults filled in and limits checked.
struct Resolved {
    steps: u32,
    guidance: f32,
    sampler: SamplerKind,
    width: u32,
    height: u32,
    count: usize,
}

impl Engine {
    /// Generates with the request's seed through [`TorchRng`].
    pub fn generate(
        &self,
        req: &GenerateRequest,
        progress: &mut dyn FnMut(Progress) -> bool,
        cancel: &CancelToken,
    ) -> Result<Generated, EngineError> {
        let mut rng = TorchRng::new(req.seed);
        self.generate_with_noise(req, &mut rng, progress, cancel)
    }

    fn resolve(&self, req: &GenerateRequest) -> Result<Resolved, EngineError> {
        let d = &self.bundle.manifest().defaults;
        let steps = req.steps.unwrap_or(d.steps);
        let guidance = req.guidance.unwrap_or(d.guidance);
        let sampler = match req.sampler {
            Some(s) => s,
            None => d
                .sampler
                .parse::<SamplerKind>()
                .map_err(|e| EngineError::invalid("sampler", format!("bundle default: {e}")))?,
        };
        let width = req.width.unwrap_or(d.width);
        let height = req.height.unwrap_or(d.height);
        let mult = self.bundle.manifest().pixel_multiple() as u32;
        let train_steps = self.scheduler.num_train_timesteps as u32;
        if steps == 0 || steps > limits::MAX_STEPS.min(train_steps) {
            return Err(EngineError::invalid(
                "steps",
                format!(
                    "{steps} is out of range 1..={}",
                    limits::MAX_STEPS.min(train_steps)
                ),
            ));
        }
        if !guidance.is_finite() || !(0.0..=limits::MAX_GUIDANCE).contains(&guidance) {
            return Err(EngineError::invalid(
                "guidance",
                format!(
                    "{guidance} must be a finite number in 0..={}",
                    limits::MAX_GUIDANCE
                ),
            ));
        }
        for (field, v) in [("width", width), ("height", height)] {
            if v == 0 || v > limits::MAX_SIDE || v % mult != 0 {
                return Err(EngineError::invalid(
                    field,
                    format!(
                        "{v} must be a multiple of {mult} (VAE factor x UNet factor of this bundle) in {mult}..={}",
                        limits::MAX_SIDE
                    ),
                ));
            }
        }
        if req.count == 0 || req.count > limits::MAX_COUNT {
            return Err(EngineError::invalid(
                "count",
                format!("{} is out of range 1..={}", req.count, limits::MAX_COUNT),
            ));
        }
        for (field, text) in [
            ("prompt", &req.prompt),
            ("negative_prompt", &req.negative_prompt),
        ] {
            if text.len() > limits::MAX_PROMPT_BYTES {
                return Err(EngineError::invalid(
                    field,
                    format!(
                        "is {} bytes; the limit is {}",
                        text.len(),
                        limits::MAX_PROMPT_BYTES
                    ),
                ));
            }
        }
        if req.adapters.len() > limits::MAX_ADAPTERS {
            return Err(EngineError::invalid(
                "adapters",
                format!(
                    "{} adapters; at most {} per request",
                    req.adapters.len(),
                    limits::MAX_ADAPTERS
                ),
            ));
        }
        for a in &req.adapters {
            if !a.strength.is_finite() || a.strength.abs() > limits::MAX_STRENGTH {
                return Err(EngineError::invalid(
                    "adapters",
                    format!(
                        "strength {} of {} must be finite, |s| <= {}",
                        a.strength,
                        a.adapter.name,
                        limits::MAX_STRENGTH
                    ),
                ));
            }
        }
        if !req.eta.is_finite() || req.eta < 0.0 {
            return Err(EngineError::invalid(
                "eta",
                format!("{} must be finite and >= 0", req.eta),
            ));
        }
        Ok(Resolved {
            steps,
            guidance,
            sampler,
            width,
            height,
            count: req.count as usize,
        })
    }

    /// Generates with an explicit noise source (tests inject the reference's noise here).
    pub fn generate_with_noise(
        &self,
        req: &GenerateRequest,
        noise: &mut dyn NoiseSource,
        progress: &mut dyn FnMut(Progress) -> bool,
        cancel: &CancelToken,
    ) -> Result<Generated, EngineError> {
        let t_start = Instant::now();
        let r = self.resolve(req)?;
        let m = self.bundle.manifest();
        let mut timings = Timings::default();
        let check = |p: Progress, progress: &mut dyn FnMut(Progress) -> bool| {
            if cancel.is_cancelled() || !progress(p) {
                cancel.cancel();
                return Err(EngineError::Cancelled);
            }
            Ok(())
        };
        check(
            Progress {
                stage: Stage::EncodingPrompt,
                step: 0,
                total_steps: r.steps,
            },
            progress,
        )?;
        let options = SamplerOptions {
            kind: r.sampler,
            eta: req.eta,
            timestep_spacing: None,
            prediction_type: None,
            karras: None,
        };
        let mut sched = scheduler::build(&self.scheduler, &options, r.steps as usize)?;

        // Text embeddings: [uncond x N, cond x N] with CFG (diffusers' order), [cond x N] without.
        let cfg = r.guidance > 1.0;
        let prompts: Vec<&str> = if cfg {
            vec![req.negative_prompt.as_str(), req.prompt.as_str()]
        } else {
            vec![req.prompt.as_str()]
        };
        let (eshape, emb) = self.encode_prompts_timed(&prompts, cancel, &mut timings.ort_run)?;
        let per = eshape[1] * eshape[2];
        let n = r.count;
        let mut ehs = Vec::with_capacity(emb.len() * n);
        for p in 0..prompts.len() {
            for _ in 0..n {
                ehs.extend_from_slice(&emb[p * per..(p + 1) * per]);
            }
        }
        let batch = prompts.len() * n;
        let ehs = Tensor::from_array((vec![batch, eshape[1], eshape[2]], ehs)).map_err(|e| {
            EngineError::Model {
                file: self.unet.path.clone(),
                message: e.to_string(),
            }
        })?;
        let lora = LoraValues::new(&self.compose(&req.adapters)?, &self.unet.path)?;

        // Initial latents.
        let c = m.unet.in_channels;
        let f = m.vae.downsample_factor as u32;
        let (h, w) = ((r.height / f) as usize, (r.width / f) as usize);
        let latent_shape = [n, c, h, w];
        let numel = n * c * h * w;
        let mut latents = match &req.init_latents {
            Some(l) if l.len() != numel => {
                return Err(EngineError::invalid(
                    "init_latents",
                    format!("has {} values; [{n}, {c}, {h}, {w}] needs {numel}", l.len()),
                ))
            }
            Some(l) => l.clone(),
            None => {
                let mut v = vec![0f32; numel];
                noise.fill_normal(&mut v);
                v
            }
        };
        let sigma0 = sched.init_noise_sigma() as f32;
        latents.iter_mut().for_each(|x| *x *= sigma0);

        let timesteps: Vec<f64> = sched.timesteps().to_vec();
        let unet_shape = [batch, c, h, w];
        for (i, &t) in timesteps.iter().enumerate() {
            check(
                Progress {
                    stage: Stage::Denoising,
                    step: i as u32,
                    total_steps: r.steps,
                },
                progress,
            )?;
            let mut scaled = latents.clone();
            sched.scale_model_input(&mut scaled, i);
            let input = if cfg {
                [scaled.as_slice(), scaled.as_slice()].concat()
            } else {
                scaled
            };
            let ts = vec![t as f32; batch];
            let out = self.unet_run(
                &unet_shape,
                input,
                &ts,
                &ehs,
                &lora,
                cancel,
                &mut timings.ort_run,
            )?;
            timings.unet_calls += 1;
            let eps = if cfg {
                let (u, cnd) = out.split_at(numel);
                let g = r.guidance;
                u.iter().zip(cnd).map(|(u, c)| u + g * (c - u)).collect()
            } else {
                out
            };
            sched.step(&eps, i, &mut latents, noise)?;
        }
        check(
            Progress {
                stage: Stage::Decoding,
                step: r.steps,
                total_steps: r.steps,
            },
            progress,
        )?;
        let inv = 1.0 / m.vae.scaling_factor as f32;
        let shift = m.vae.shift_factor.unwrap_or(0.0) as f32;
        let scaled: Vec<f32> = latents.iter().map(|x| x * inv + shift).collect();
        let (ishape, img) = self.decode(&latent_shape, scaled, cancel, &mut timings.ort_run)?;
        let (ih, iw) = (ishape[2], ishape[3]);
        if ih != r.height as usize || iw != r.width as usize {
            return Err(EngineError::Model {
                file: self.vae_decoder.path.clone(),
                message: format!("decoded {iw}x{ih}, expected {}x{}", r.width, r.height),
            });
        }
        let (pixels, images) = to_images(&img, n, ih, iw);
        timings.total = t_start.elapsed();
        Ok(Generated {
            images,
            pixels,
            latents,
            latent_shape,
            sampler: r.sampler,
            steps: r.steps,
            guidance: r.guidance,
            width: r.width,
            height: r.height,
            timings,
        })
    }
}

/// `[B,3,H,W]` in [-1,1] → `[B,H,W,3]` in [0,1] and 8-bit images (`round(x·255)`, as diffusers'
/// `numpy_to_pil`).
fn to_images(img: &[f32], n: usize, h: usize, w: usize) -> (Vec<f32>, Vec<Image>) {
    let mut pixels = vec![0f32; n * h * w * 3];
    for b in 0..n {
        for ch in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    let v = img[((b * 3 + ch) * h + y) * w + x];
                    pixels[((b * h + y) * w + x) * 3 + ch] = (v / 2.0 + 0.5).clamp(0.0, 1.0);
                }
            }
        }
    }
    let images = pixels
        .chunks_exact(h * w * 3)
        .map(|p| Image {
            width: w as u32,
            height: h as u32,
            rgb: p.iter().map(|v| (v * 255.0).round() as u8).collect(),
        })
        .collect();
    (pixels, images)
}
