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

/// Whether a guidance scale runs classifier-free guidance: as diffusers'
/// `do_classifier_free_guidance`, only a scale above 1 adds the unconditional branch; at 1 or less
/// the UNet sees the prompt alone and `ε = ε_c`. Sampling and DPOK's rollouts and policy both ask
/// this one function, so their trajectories stay the same.
pub fn uses_cfg(guidance: f64) -> bool {
    guidance > 1.0
}

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
        let cfg = uses_cfg(f64::from(r.guidance));
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

impl Engine {
    /// Decodes final sampling latents `[B, C, h, w]` (as the denoising loop leaves them, before
    /// division by the VAE scaling factor) into images exactly as [`Engine::generate`] does:
    /// `[B, H, W, 3]` pixels in [0, 1] and 8-bit images. Used by DPOK, which samples through its
    /// own loop (it records every transition) and then scores the images.
    pub fn decode_latents(
        &self,
        latent_shape: [usize; 4],
        latents: &[f32],
    ) -> Result<(Vec<f32>, Vec<Image>), EngineError> {
        if latent_shape.iter().product::<usize>() != latents.len() {
            return Err(EngineError::invalid(
                "latents",
                format!(
                    "has {} values; shape {latent_shape:?} needs {}",
                    latents.len(),
                    latent_shape.iter().product::<usize>()
                ),
            ));
        }
        let m = self.bundle.manifest();
        let inv = 1.0 / m.vae.scaling_factor as f32;
        let shift = m.vae.shift_factor.unwrap_or(0.0) as f32;
        let scaled: Vec<f32> = latents.iter().map(|x| x * inv + shift).collect();
        let mut t = Duration::ZERO;
        let (ishape, img) = self.decode(&latent_shape, scaled, &CancelToken::new(), &mut t)?;
        Ok(to_images(&img, latent_shape[0], ishape[2], ishape[3]))
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

/// What must be equal for requests to share one UNet run: the loop shape (steps, sampler, eta,
/// size), the guidance (CFG doubles the batch and mixes the two halves with one scale) and the
/// LoRA inputs (one set of adapter tensors feeds the whole batch).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchKey {
    pub steps: u32,
    pub guidance: f32,
    pub sampler: SamplerKind,
    pub eta: f64,
    pub width: u32,
    pub height: u32,
    /// Adapter identity (sha256) and strength, in request order.
    pub adapters: Vec<(String, f32)>,
}

impl Engine {
    /// Checks a request against the limits and the bundle without running anything, and returns
    /// the key that decides which requests may be batched with it. A daemon calls this before it
    /// answers, so that a bad request gets a 4xx instead of a failed stream.
    pub fn batch_key(&self, req: &GenerateRequest) -> Result<BatchKey, EngineError> {
        let r = self.resolve(req)?;
        let c = self.bundle.manifest().unet.in_channels;
        let f = self.bundle.manifest().vae.downsample_factor as u32;
        if let Some(l) = &req.init_latents {
            let numel = r.count * c * (r.height / f) as usize * (r.width / f) as usize;
            if l.len() != numel {
                return Err(EngineError::invalid(
                    "init_latents",
                    format!("has {} values; this request needs {numel}", l.len()),
                ));
            }
        }
        // Building the sampler checks the step count against its schedule (e.g. a leading
        // spacing that would leave the training range), so that fails here, not mid-run.
        scheduler::build(
            &self.scheduler,
            &SamplerOptions {
                kind: r.sampler,
                eta: req.eta,
                timestep_spacing: None,
                prediction_type: None,
                karras: None,
            },
            r.steps as usize,
        )?;
        Ok(BatchKey {
            steps: r.steps,
            guidance: r.guidance,
            sampler: r.sampler,
            eta: req.eta,
            width: r.width,
            height: r.height,
            adapters: req
                .adapters
                .iter()
                .map(|a| (a.adapter.hash.clone(), a.strength))
                .collect(),
        })
    }

    /// Runs several compatible requests (equal [`BatchKey`]) with one UNet call per step.
    ///
    /// Each request keeps its own seed stream, sampler state, prompt encoding and VAE decode, so
    /// its result is the one [`Engine::generate`] gives for it alone; only the UNet batch is
    /// shared (`[uncond₁ ×n₁, cond₁ ×n₁, uncond₂ ×n₂, …]`). `progress(i, p)` reports for
    /// request `i`; returning false cancels that request. A cancelled request's slot holds
    /// [`EngineError::Cancelled`]; its rows keep being computed (the batch shape stays fixed)
    /// until every request is cancelled, when the whole call stops.
    pub fn generate_batch(
        &self,
        reqs: &[GenerateRequest],
        progress: &mut dyn FnMut(usize, Progress) -> bool,
        cancels: &[CancelToken],
    ) -> Result<Vec<Result<Generated, EngineError>>, EngineError> {
        if reqs.is_empty() || cancels.len() != reqs.len() {
            return Err(EngineError::invalid(
                "requests",
                format!(
                    "{} requests with {} cancel tokens: need at least one, one token each",
                    reqs.len(),
                    cancels.len()
                ),
            ));
        }
        let t_start = Instant::now();
        let key = self.batch_key(&reqs[0])?;
        for (i, q) in reqs.iter().enumerate().skip(1) {
            if self.batch_key(q)? != key {
                return Err(EngineError::invalid(
                    "requests",
                    format!("request {i} differs from request 0 in size, steps, sampler, eta, guidance or adapters"),
                ));
            }
        }
        let resolved: Vec<Resolved> = reqs
            .iter()
            .map(|q| self.resolve(q))
            .collect::<Result<_, _>>()?;
        let r0 = &resolved[0];
        let m = self.bundle.manifest();
        let mut timings = Timings::default();
        let live = |cancels: &[CancelToken]| cancels.iter().any(|c| !c.is_cancelled());
        let mut report = |i: usize, p: Progress, cancels: &[CancelToken]| {
            if !cancels[i].is_cancelled() && !progress(i, p) {
                cancels[i].cancel();
            }
        };
        // The whole-call token: cancelled only when every request is, so that one client leaving
        // never terminates the shared UNet run.
        let all = CancelToken::new();
        let check_all = |all: &CancelToken| {
            if live(cancels) {
                Ok(())
            } else {
                all.cancel();
                Err(EngineError::Cancelled)
            }
        };
        for (i, r) in resolved.iter().enumerate() {
            report(
                i,
                Progress {
                    stage: Stage::EncodingPrompt,
                    step: 0,
                    total_steps: r.steps,
                },
                cancels,
            );
        }
        check_all(&all)?;
        let options = SamplerOptions {
            kind: r0.sampler,
            eta: reqs[0].eta,
            timestep_spacing: None,
            prediction_type: None,
            karras: None,
        };
        let cfg = uses_cfg(f64::from(r0.guidance));
        let c = m.unet.in_channels;
        let f = m.vae.downsample_factor as u32;
        let (h, w) = ((r0.height / f) as usize, (r0.width / f) as usize);

        // Per request: sampler, noise stream, latents, embeddings rows.
        let mut scheds = Vec::with_capacity(reqs.len());
        let mut rngs = Vec::with_capacity(reqs.len());
        let mut lats = Vec::with_capacity(reqs.len());
        let mut ehs_rows = Vec::new();
        let mut rows = 0usize;
        for (q, r) in reqs.iter().zip(&resolved) {
            let sched = scheduler::build(&self.scheduler, &options, r.steps as usize)?;
            let mut rng = TorchRng::new(q.seed);
            let prompts: Vec<&str> = if cfg {
                vec![q.negative_prompt.as_str(), q.prompt.as_str()]
            } else {
                vec![q.prompt.as_str()]
            };
            let (eshape, emb) = self.encode_prompts_timed(&prompts, &all, &mut timings.ort_run)?;
            let per = eshape[1] * eshape[2];
            let n = r.count;
            for p in 0..prompts.len() {
                for _ in 0..n {
                    ehs_rows.extend_from_slice(&emb[p * per..(p + 1) * per]);
                }
            }
            rows += prompts.len() * n;
            let numel = n * c * h * w;
            let mut l = match &q.init_latents {
                Some(l) => l.clone(),
                None => {
                    let mut v = vec![0f32; numel];
                    rng.fill_normal(&mut v);
                    v
                }
            };
            let sigma0 = sched.init_noise_sigma() as f32;
            l.iter_mut().for_each(|x| *x *= sigma0);
            scheds.push(sched);
            rngs.push(rng);
            lats.push(l);
        }
        let (l_len, d_len) = {
            let per = ehs_rows.len() / rows;
            let d = self.bundle.manifest().text_encoder.max_length;
            (d, per / d)
        };
        let ehs = Tensor::from_array((vec![rows, l_len, d_len], ehs_rows)).map_err(|e| {
            EngineError::Model {
                file: self.unet.path.clone(),
                message: e.to_string(),
            }
        })?;
        let lora = LoraValues::new(&self.compose(&reqs[0].adapters)?, &self.unet.path)?;
        let timesteps: Vec<f64> = scheds[0].timesteps().to_vec();
        let unet_shape = [rows, c, h, w];
        for (i, &t) in timesteps.iter().enumerate() {
            for (k, r) in resolved.iter().enumerate() {
                report(
                    k,
                    Progress {
                        stage: Stage::Denoising,
                        step: i as u32,
                        total_steps: r.steps,
                    },
                    cancels,
                );
            }
            check_all(&all)?;
            let mut input = Vec::with_capacity(rows * c * h * w);
            for (k, l) in lats.iter().enumerate() {
                let mut scaled = l.clone();
                scheds[k].scale_model_input(&mut scaled, i);
                input.extend_from_slice(&scaled);
                if cfg {
                    input.extend_from_slice(&scaled);
                }
            }
            let ts = vec![t as f32; rows];
            let out = self.unet_run(
                &unet_shape,
                input,
                &ts,
                &ehs,
                &lora,
                &all,
                &mut timings.ort_run,
            )?;
            timings.unet_calls += 1;
            let mut off = 0;
            for k in 0..reqs.len() {
                let numel = lats[k].len();
                let eps: Vec<f32> = if cfg {
                    let (u, cnd) = out[off..off + 2 * numel].split_at(numel);
                    let g = r0.guidance;
                    off += 2 * numel;
                    u.iter().zip(cnd).map(|(u, c)| u + g * (c - u)).collect()
                } else {
                    off += numel;
                    out[off - numel..off].to_vec()
                };
                scheds[k].step(&eps, i, &mut lats[k], &mut rngs[k])?;
            }
        }
        let inv = 1.0 / m.vae.scaling_factor as f32;
        let shift = m.vae.shift_factor.unwrap_or(0.0) as f32;
        let mut results = Vec::with_capacity(reqs.len());
        for (k, r) in resolved.iter().enumerate() {
            report(
                k,
                Progress {
                    stage: Stage::Decoding,
                    step: r.steps,
                    total_steps: r.steps,
                },
                cancels,
            );
            if cancels[k].is_cancelled() {
                results.push(Err(EngineError::Cancelled));
                continue;
            }
            let latent_shape = [r.count, c, h, w];
            let scaled: Vec<f32> = lats[k].iter().map(|x| x * inv + shift).collect();
            let mut t = timings;
            let decoded = self.decode(&latent_shape, scaled, &cancels[k], &mut t.ort_run);
            timings.ort_run = t.ort_run;
            let (ishape, img) = match decoded {
                Ok(v) => v,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            let (ih, iw) = (ishape[2], ishape[3]);
            if ih != r.height as usize || iw != r.width as usize {
                return Err(EngineError::Model {
                    file: self.vae_decoder.path.clone(),
                    message: format!("decoded {iw}x{ih}, expected {}x{}", r.width, r.height),
                });
            }
            let (pixels, images) = to_images(&img, r.count, ih, iw);
            results.push(Ok(Generated {
                images,
                pixels,
                latents: std::mem::take(&mut lats[k]),
                latent_shape,
                sampler: r.sampler,
                steps: r.steps,
                guidance: r.guidance,
                width: r.width,
                height: r.height,
                timings: Timings::default(),
            }));
        }
        timings.total = t_start.elapsed();
        for g in results.iter_mut().flatten() {
            g.timings = timings;
        }
        Ok(results)
    }
}
