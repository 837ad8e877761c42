//! The assembled UNet: the diffusers module tree flattened into the sequence of units it executes
//! (llm.c style), a forward that records one tape entry per unit, and a backward that walks the
//! tape in reverse.
//!
//! Skip connections are the only non-sequential data flow: `PushSkip` saves the current
//! activation, `Concat` (in the up blocks) pops the latest one and concatenates it after the
//! current activation along channels. In backward, `Concat` splits the gradient and parks the
//! skip's part until the reverse walk reaches the matching `PushSkip`, where it joins the main
//! gradient (the pushed tensor was also the input of the next unit, so both paths add).

use super::super::backend::Backend;
use super::super::lora::{LinearInfo, LoraConfig, LoraGrads, LoraSet};
use super::super::tensor::Tensor;
use super::super::TrainError;
use super::config::UNetConfig;
use super::layers::{
    sinusoidal_embedding, Conv2d, Ctx, Downsample, GroupNorm, Resnet, ResnetCache, TimeEmbedding,
    TimeEmbeddingCache, Transformer2D, Transformer2DCache, Upsample,
};
use super::weights::{self, Loader, Weights};
use std::path::Path;
use std::sync::Arc;

/// One step of the flattened UNet.
enum Unit<B: Backend> {
    ConvIn(Conv2d<B>),
    Resnet(Resnet<B>),
    Attn(Transformer2D<B>),
    Down(Downsample<B>),
    Up(Upsample<B>),
    PushSkip,
    Concat,
    NormAct(GroupNorm<B>),
    ConvOut(Conv2d<B>),
}

/// What one unit left for backward.
enum Step<B: Backend> {
    /// A convolution: only the input shape.
    Conv(Vec<usize>),
    Resnet(Box<ResnetCache<B>>),
    Attn(Box<Transformer2DCache<B>>),
    /// Checkpointed resnet/transformer: its input; the cache is rebuilt in backward.
    Recompute(Tensor<B>),
    Up {
        in_shape: Vec<usize>,
        out_hw: (usize, usize),
    },
    Push(usize),
    Concat {
        ca: usize,
        cb: usize,
        skip: usize,
    },
    NormAct {
        x: Tensor<B>,
        stats: B::Buf,
    },
}

/// The inputs of one UNet evaluation. Timesteps are per sample (one per batch row, or one for all).
pub struct UNetInput<'a, B: Backend> {
    /// `[batch, in_channels, h, w]` noisy latents.
    pub sample: &'a Tensor<B>,
    /// `batch` timesteps (fractional allowed), or a single one for the whole batch.
    pub timesteps: &'a [f32],
    /// `[batch, tokens, cross_attention_dim]` text-encoder hidden states.
    pub ehs: &'a Tensor<B>,
}

/// Everything [`UNet::backward`] needs from a [`UNet::forward_train`]. Holding it holds the
/// activations; dropping it frees them.
pub struct UNetCache<B: Backend> {
    tape: Vec<Step<B>>,
    ehs: Tensor<B>,
    emb: Tensor<B>,
    emb_act: Tensor<B>,
    time: TimeEmbeddingCache<B>,
    sample_shape: Vec<usize>,
    lora_tag: Option<(u64, u64)>,
    want_demb: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    Nothing,
    All,
    Checkpoints,
}

/// The trainer's UNet: frozen base weights on a backend. `Send + Sync`; every method takes `&self`.
pub struct UNet<B: Backend> {
    be: Arc<B>,
    config: UNetConfig,
    time: TimeEmbedding<B>,
    units: Vec<Unit<B>>,
    linears: Vec<LinearInfo>,
}

impl<B: Backend> std::fmt::Debug for UNet<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UNet")
            .field("backend", &self.be.name())
            .field("block_out_channels", &self.config.block_out_channels)
            .field("units", &self.units.len())
            .finish()
    }
}

impl<B: Backend> UNet<B> {
    /// Reads a diffusers `config.json` and `unet.safetensors` (diffusers names).
    pub fn load(be: Arc<B>, config: &Path, weights: &Path) -> Result<Self, TrainError> {
        let config = UNetConfig::load(config)?;
        let weights = Weights::load(weights)?;
        Self::from_parts(be, config, &weights)
    }

    /// The UNet of a model bundle (its `unet.config` and `unet.weights` files).
    pub fn from_bundle(be: Arc<B>, bundle: &crate::bundle::Bundle) -> Result<Self, TrainError> {
        let u = &bundle.manifest().unet;
        Self::load(be, &bundle.path(&u.config), &bundle.path(&u.weights))
    }

    /// Builds the module tree the config describes from `weights`; every tensor of the file must
    /// be used and have the implied shape.
    pub fn from_parts(
        be: Arc<B>,
        config: UNetConfig,
        weights: &Weights,
    ) -> Result<Self, TrainError> {
        let ((time, units), linears) =
            weights::build(&*be, weights, "", |ld| build_units(ld, &config))?;
        Ok(UNet {
            be,
            config,
            time,
            units,
            linears,
        })
    }

    pub fn backend(&self) -> &B {
        &self.be
    }

    pub fn backend_arc(&self) -> &Arc<B> {
        &self.be
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Every linear (and 1×1-convolution token projection) module, in model order: the possible
    /// LoRA targets and the indexing of [`LoraSet`] and [`LoraGrads`].
    pub fn linear_modules(&self) -> &[LinearInfo] {
        &self.linears
    }

    /// A fresh LoRA (A random, B zero) on the configured targets.
    pub fn new_lora(&self, cfg: &LoraConfig) -> Result<LoraSet<B>, TrainError> {
        LoraSet::new(&*self.be, &self.linears, cfg)
    }

    /// Reads an adapter file (diffusers/peft or kohya keys) into a [`LoraSet`] at strength 1.
    pub fn load_lora(&self, path: &Path) -> Result<LoraSet<B>, TrainError> {
        LoraSet::load_file(&*self.be, &self.linears, path, self.config.down[0].layers)
    }

    /// Inference: the UNet output (ε or v) `[batch, out_channels, h, w]`, keeping nothing for
    /// backward. `lora = None` is the frozen base model (the DPO reference).
    pub fn forward(
        &self,
        input: &UNetInput<'_, B>,
        lora: Option<&LoraSet<B>>,
    ) -> Result<Tensor<B>, TrainError> {
        Ok(self.run(input, lora, Keep::Nothing)?.0)
    }

    /// Training forward: the output and the cache [`UNet::backward`] consumes. With `recompute`,
    /// only each resnet's and transformer's input is kept and its activations are recomputed in
    /// backward (gradient checkpointing: about one extra forward of compute for a fraction of the
    /// memory).
    pub fn forward_train(
        &self,
        input: &UNetInput<'_, B>,
        lora: Option<&LoraSet<B>>,
        recompute: bool,
    ) -> Result<(Tensor<B>, UNetCache<B>), TrainError> {
        let keep = if recompute {
            Keep::Checkpoints
        } else {
            Keep::All
        };
        let (out, cache) = self.run(input, lora, keep)?;
        Ok((out, cache.expect("cache kept")))
    }

    fn check_input(&self, input: &UNetInput<'_, B>) -> Result<usize, TrainError> {
        let s = input.sample.shape();
        let bad = |field, message: String| Err(TrainError::Input { field, message });
        if s.len() != 4 || s[1] != self.config.in_channels || s[0] == 0 || s[2] == 0 || s[3] == 0 {
            return bad(
                "sample",
                format!(
                    "shape {s:?}, expected [batch, {}, h, w]",
                    self.config.in_channels
                ),
            );
        }
        let b = s[0];
        if input.timesteps.len() != b && input.timesteps.len() != 1 {
            return bad(
                "timesteps",
                format!("{} values for a batch of {b}", input.timesteps.len()),
            );
        }
        if let Some(t) = input.timesteps.iter().find(|t| !t.is_finite()) {
            return bad("timesteps", format!("{t} is not finite"));
        }
        let e = input.ehs.shape();
        let dims: Vec<usize> = self
            .config
            .down
            .iter()
            .chain(&self.config.up)
            .chain([&self.config.mid])
            .filter(|b| b.cross_attention)
            .map(|b| b.cross_attention_dim)
            .collect();
        if e.len() != 3 || e[0] != b || e[1] == 0 || dims.iter().any(|&d| d != e[2]) {
            return bad(
                "encoder_hidden_states",
                format!(
                    "shape {e:?}, expected [{b}, tokens, {}]",
                    dims.first().copied().unwrap_or(0)
                ),
            );
        }
        Ok(b)
    }

    fn run(
        &self,
        input: &UNetInput<'_, B>,
        lora: Option<&LoraSet<B>>,
        keep: Keep,
    ) -> Result<(Tensor<B>, Option<UNetCache<B>>), TrainError> {
        let n = self.check_input(input)?;
        Ok(self.be.scope(|| self.run_checked(n, input, lora, keep)))
    }

    fn run_checked(
        &self,
        n: usize,
        input: &UNetInput<'_, B>,
        lora: Option<&LoraSet<B>>,
        keep: Keep,
    ) -> (Tensor<B>, Option<UNetCache<B>>) {
        let be = &*self.be;
        let cx = Ctx::new(be, lora);
        let cfg = &self.config;
        let ts: Vec<f32> = (0..n)
            .map(|i| input.timesteps[i.min(input.timesteps.len() - 1)])
            .collect();
        let sin = sinusoidal_embedding(
            &ts,
            cfg.timestep_input_dim,
            cfg.flip_sin_to_cos,
            cfg.freq_shift,
        );
        let sin = Tensor::from_host(be, &sin, &[n, cfg.timestep_input_dim]);
        let (emb, time_cache) = self.time.forward(cx, &sin);
        let emb_act = Tensor::new(be, be.silu(emb.buf()), emb.shape());
        let ehs = input.ehs;

        let mut h = input.sample.clone();
        if cfg.center_input_sample {
            let mut x = h.buf().clone();
            be.scale(&mut x, 2.0);
            be.add_broadcast(&mut x, &be.upload(&[-1.0]), h.numel(), 1, 1);
            h = Tensor::new(be, x, h.shape());
        }
        let mut skips: Vec<(Tensor<B>, usize)> = Vec::new();
        let mut pushes = 0usize;
        let mut tape: Vec<Step<B>> = Vec::new();
        let mut record = |s: Step<B>| {
            if keep != Keep::Nothing {
                tape.push(s);
            }
        };
        for unit in &self.units {
            let in_shape = h.shape().to_vec();
            let (nb, hh, ww) = (in_shape[0], in_shape[2], in_shape[3]);
            match unit {
                Unit::ConvIn(c) | Unit::ConvOut(c) => {
                    let (y, oh, ow) = c.forward(be, h.buf(), nb, hh, ww);
                    h = Tensor::new(be, y, &[nb, c.cout, oh, ow]);
                    record(Step::Conv(in_shape));
                }
                Unit::Down(d) => {
                    h = d.forward(be, &h);
                    record(Step::Conv(in_shape));
                }
                Unit::Resnet(r) => {
                    let (y, c) = r.forward(cx, &h, Some(&emb_act));
                    record(match keep {
                        Keep::Checkpoints => Step::Recompute(h.clone()),
                        _ => Step::Resnet(Box::new(c)),
                    });
                    h = y;
                }
                Unit::Attn(t) => {
                    let (y, c) = t.forward(cx, &h, ehs);
                    record(match keep {
                        Keep::Checkpoints => Step::Recompute(h.clone()),
                        _ => Step::Attn(Box::new(c)),
                    });
                    h = y;
                }
                Unit::PushSkip => {
                    skips.push((h.clone(), pushes));
                    record(Step::Push(pushes));
                    pushes += 1;
                }
                Unit::Concat => {
                    let (s, idx) = skips.pop().expect("skip stack built with the units");
                    let (ca, cb) = (in_shape[1], s.shape()[1]);
                    let y = be.concat_channels(h.buf(), s.buf(), nb, ca, cb, hh * ww);
                    h = Tensor::new(be, y, &[nb, ca + cb, hh, ww]);
                    record(Step::Concat { ca, cb, skip: idx });
                }
                Unit::Up(u) => {
                    // diffusers passes the next skip's size when the latent is not a multiple
                    // of the total down-sampling factor; otherwise it is exactly 2×.
                    let out_hw = skips
                        .last()
                        .map(|(s, _)| (s.shape()[2], s.shape()[3]))
                        .unwrap_or((2 * hh, 2 * ww));
                    h = u.forward(be, &h, out_hw);
                    record(Step::Up { in_shape, out_hw });
                }
                Unit::NormAct(g) => {
                    let (y, stats) = g.forward(be, h.buf(), nb, hh * ww, true);
                    record(Step::NormAct {
                        x: h.clone(),
                        stats,
                    });
                    h = Tensor::new(be, y, &in_shape);
                }
            }
        }
        let cache = (keep != Keep::Nothing).then(|| UNetCache {
            // LoRA inside the time embedding needs dLoss/d emb, gathered from every resnet.
            want_demb: cx.lora_for(self.time.linear_1.id).is_some()
                || cx.lora_for(self.time.linear_2.id).is_some(),
            tape,
            ehs: ehs.clone(),
            emb,
            emb_act,
            time: time_cache,
            sample_shape: input.sample.shape().to_vec(),
            lora_tag: lora.map(|l| l.tag()),
        });
        (h, cache)
    }

    /// Backward of one [`UNet::forward_train`] for the upstream gradient `d_out` (same shape as
    /// the output). Adds dLoss/dA and dLoss/dB of every adapted module to `grads` and returns
    /// dLoss/d sample. `lora` must be the very set (same parameters, not modified since) the forward
    /// used; `grads` must have been made for it ([`LoraGrads::zeros`]), or be
    /// [`LoraGrads::none`] when the forward ran without LoRA.
    pub fn backward(
        &self,
        cache: UNetCache<B>,
        d_out: &Tensor<B>,
        lora: Option<&LoraSet<B>>,
        grads: &mut LoraGrads<B>,
    ) -> Result<Tensor<B>, TrainError> {
        if cache.lora_tag != lora.map(|l| l.tag()) {
            return Err(TrainError::Lora(
                "backward got other LoRA parameters than its forward (or they were modified in between)"
                    .into(),
            ));
        }
        if let Some(l) = lora {
            if grads.uid() != l.uid() {
                return Err(TrainError::Lora(
                    "the gradient buffer was made for another LoRA set".into(),
                ));
            }
        }
        let cx = Ctx::new(&*self.be, lora);
        let expect: Vec<usize> = {
            let mut s = cache.sample_shape.clone();
            s[1] = self.config.out_channels;
            s
        };
        if d_out.shape() != expect.as_slice() {
            return Err(TrainError::Input {
                field: "d_out",
                message: format!("shape {:?}, the output was {expect:?}", d_out.shape()),
            });
        }
        Ok(self
            .be
            .scope(|| self.backward_checked(cache, d_out, cx, grads)))
    }

    fn backward_checked(
        &self,
        cache: UNetCache<B>,
        d_out: &Tensor<B>,
        cx: Ctx<'_, B>,
        grads: &mut LoraGrads<B>,
    ) -> Tensor<B> {
        let be = &*self.be;
        let n = cache.sample_shape[0];
        let ehs = &cache.ehs;
        let emb_act = &cache.emb_act;
        let want_demb = cache.want_demb;
        let mut demb: Option<B::Buf> = None;
        let mut skip_grads: Vec<Option<B::Buf>> = Vec::new();
        let mut dh = d_out.buf().clone();
        for (unit, step) in self.units.iter().zip(cache.tape).rev() {
            match (unit, step) {
                (Unit::ConvIn(c) | Unit::ConvOut(c), Step::Conv(s)) => {
                    dh = c.backward(be, &dh, s[0], s[2], s[3]);
                }
                (Unit::Down(d), Step::Conv(s)) => dh = d.backward(be, &dh, &s),
                (Unit::NormAct(g), Step::NormAct { x, stats }) => {
                    let s = x.shape();
                    dh = g.backward(be, x.buf(), &stats, &dh, s[0], s[2] * s[3], true);
                }
                (Unit::Up(u), Step::Up { in_shape, out_hw }) => {
                    dh = u.backward(be, &dh, &in_shape, out_hw);
                }
                (Unit::Resnet(r), step) => {
                    let c = match step {
                        Step::Resnet(c) => *c,
                        Step::Recompute(x) => r.forward(cx, &x, Some(emb_act)).1,
                        _ => unreachable!("tape out of step with units"),
                    };
                    let (dx, de) = r.backward(cx, &c, Some(emb_act), &dh, want_demb, grads);
                    dh = dx;
                    if let Some(de) = de {
                        match demb.as_mut() {
                            Some(acc) => be.add_assign(acc, &de),
                            None => demb = Some(de),
                        }
                    }
                }
                (Unit::Attn(t), step) => {
                    let c = match step {
                        Step::Attn(c) => *c,
                        Step::Recompute(x) => t.forward(cx, &x, ehs).1,
                        _ => unreachable!("tape out of step with units"),
                    };
                    dh = t.backward(cx, &c, ehs, &dh, grads);
                }
                (Unit::Concat, Step::Concat { ca, cb, skip }) => {
                    let hw = be.len(&dh) / (n * (ca + cb));
                    let (da, ds) = be.split_channels(&dh, n, ca, cb, hw);
                    if skip_grads.len() <= skip {
                        skip_grads.resize_with(skip + 1, || None);
                    }
                    skip_grads[skip] = Some(ds);
                    dh = da;
                }
                (Unit::PushSkip, Step::Push(skip)) => {
                    if let Some(g) = skip_grads.get_mut(skip).and_then(Option::take) {
                        be.add_assign(&mut dh, &g);
                    }
                }
                _ => unreachable!("tape out of step with units"),
            }
        }
        if self.config.center_input_sample {
            be.scale(&mut dh, 2.0);
        }
        if want_demb {
            let de = demb.unwrap_or_else(|| be.zeros(cache.emb.numel()));
            let d_emb = be.silu_backward(cache.emb.buf(), &de);
            self.time.backward(cx, &cache.time, &d_emb, false, grads);
        }
        Tensor::new(be, dh, &cache.sample_shape)
    }
}

/// The flattened module tree, in execution order (see the module docs).
#[allow(clippy::type_complexity)]
fn build_units<B: Backend>(
    root: &Loader<'_, B>,
    cfg: &UNetConfig,
) -> Result<(TimeEmbedding<B>, Vec<Unit<B>>), TrainError> {
    let (groups, eps) = (cfg.norm_num_groups, cfg.norm_eps);
    let temb = Some(cfg.time_embed_dim);
    let time = TimeEmbedding::load(
        &root.sub("time_embedding"),
        cfg.timestep_input_dim,
        cfg.time_embed_dim,
    )?;
    let b0 = cfg.block_out_channels[0];
    let (ki, ko) = (cfg.conv_in_kernel, cfg.conv_out_kernel);
    let mut units = vec![
        Unit::ConvIn(Conv2d::load(
            root,
            "conv_in",
            cfg.in_channels,
            b0,
            ki,
            1,
            [(ki - 1) / 2; 4],
        )?),
        Unit::PushSkip,
    ];
    let mut skip_ch = vec![b0];
    let mut ch = b0;
    let attn = |ld: &Loader<'_, B>, ch: usize, spec: &super::config::BlockSpec| {
        Transformer2D::load(
            ld,
            ch,
            spec.heads,
            ch / spec.heads,
            spec.cross_attention_dim,
            groups,
            spec.transformer_depth,
        )
    };
    let last = cfg.down.len() - 1;
    for (i, spec) in cfg.down.iter().enumerate() {
        let ld = root.sub(&format!("down_blocks.{i}"));
        for j in 0..spec.layers {
            let r = Resnet::load(
                &ld.sub(&format!("resnets.{j}")),
                ch,
                spec.out_channels,
                temb,
                groups,
                eps,
                cfg.resnet_out_scale_factor,
            )?;
            units.push(Unit::Resnet(r));
            ch = spec.out_channels;
            if spec.cross_attention {
                units.push(Unit::Attn(attn(
                    &ld.sub(&format!("attentions.{j}")),
                    ch,
                    spec,
                )?));
            }
            units.push(Unit::PushSkip);
            skip_ch.push(ch);
        }
        if i < last {
            let d = Downsample::load(&ld.sub("downsamplers.0"), ch, cfg.downsample_padding)?;
            units.push(Unit::Down(d));
            units.push(Unit::PushSkip);
            skip_ch.push(ch);
        }
    }
    let mid = root.sub("mid_block");
    let mid_resnet = |j: usize| {
        Resnet::load(
            &mid.sub(&format!("resnets.{j}")),
            ch,
            ch,
            temb,
            groups,
            eps,
            cfg.mid_block_scale_factor,
        )
    };
    units.push(Unit::Resnet(mid_resnet(0)?));
    units.push(Unit::Attn(attn(&mid.sub("attentions.0"), ch, &cfg.mid)?));
    units.push(Unit::Resnet(mid_resnet(1)?));
    for (i, spec) in cfg.up.iter().enumerate() {
        let ld = root.sub(&format!("up_blocks.{i}"));
        for j in 0..spec.layers {
            let s = skip_ch.pop().ok_or_else(|| TrainError::Config {
                path: Default::default(),
                field: "layers_per_block".into(),
                message: "up blocks consume more skip connections than the down blocks make".into(),
            })?;
            units.push(Unit::Concat);
            let r = Resnet::load(
                &ld.sub(&format!("resnets.{j}")),
                ch + s,
                spec.out_channels,
                temb,
                groups,
                eps,
                cfg.resnet_out_scale_factor,
            )?;
            units.push(Unit::Resnet(r));
            ch = spec.out_channels;
            if spec.cross_attention {
                units.push(Unit::Attn(attn(
                    &ld.sub(&format!("attentions.{j}")),
                    ch,
                    spec,
                )?));
            }
        }
        if i < last {
            units.push(Unit::Up(Upsample::load(&ld.sub("upsamplers.0"), ch)?));
        }
    }
    units.push(Unit::NormAct(GroupNorm::load(
        root,
        "conv_norm_out",
        ch,
        groups,
        eps,
    )?));
    units.push(Unit::ConvOut(Conv2d::load(
        root,
        "conv_out",
        ch,
        cfg.out_channels,
        ko,
        1,
        [(ko - 1) / 2; 4],
    )?));
    Ok((time, units))
}
