//! The optimisation loop, generic over the compute backend: micro-batches of preference pairs
//! through the trainer's UNet with LoRA (policy) and without (reference), the DPO or SFT loss,
//! backward into the LoRA gradients, clipping and AdamW on host master copies, metrics,
//! checkpoints, and the final adapter file.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::adapter_file::{self, ModuleWeights};
use super::checkpoint::{self, Checkpoint, CheckpointState, ModuleState};
use super::metrics::{MetricsLog, StepMetrics};
use super::order::{micro_draws, PairOrder};
use super::prepare::Prepared;
use super::{DpoConfig, Event, FinetuneError, LoraInitChoice, Objective, Outcome};
use crate::loss::{self, LossStats, Target};
use crate::optim::{clip_grad_norm, AdamW};
use crate::scheduler::PredictionType;
use crate::train::{Backend, LoraConfig, LoraGrads, LoraInit, LoraSet, Tensor, UNet, UNetInput};
use crate::CancelToken;

/// The adapted modules in a fixed order, with host master copies of their parameters; the
/// optimiser sees `[A₀, B₀, A₁, B₁, ...]`.
pub(crate) struct Params {
    pub(crate) ids: Vec<usize>,
    pub(crate) names: Vec<String>,
    pub(crate) ranks: Vec<usize>,
    pub(crate) scales: Vec<f32>,
    pub(crate) host: Vec<Vec<f32>>,
}

impl Params {
    pub(crate) fn of<B: Backend>(be: &B, lora: &LoraSet<B>) -> Self {
        let mut p = Params {
            ids: vec![],
            names: vec![],
            ranks: vec![],
            scales: vec![],
            host: vec![],
        };
        for (id, m, lp) in lora.iter() {
            p.ids.push(id);
            p.names.push(m.name.clone());
            p.ranks.push(lp.rank);
            p.scales.push(lp.scale);
            p.host.push(be.download(&lp.a));
            p.host.push(be.download(&lp.b));
        }
        p
    }

    pub(crate) fn upload<B: Backend>(&self, be: &B, lora: &mut LoraSet<B>) {
        for (i, (_, lp)) in lora.params_mut().enumerate() {
            lp.a = be.upload(&self.host[2 * i]);
            lp.b = be.upload(&self.host[2 * i + 1]);
        }
    }
}

fn target_of(p: PredictionType) -> Result<Target, FinetuneError> {
    match p {
        PredictionType::Epsilon => Ok(Target::Epsilon),
        PredictionType::VPrediction => Ok(Target::VPrediction),
        other => Err(FinetuneError::Config {
            field: "bundle",
            message: format!(
                "the scheduler's prediction_type is {other:?}; Diffusion-DPO trains epsilon or \
                 v_prediction models"
            ),
        }),
    }
}

/// Sum of per-micro-batch statistics, averaged at the end of a step.
#[derive(Default)]
struct StatSum {
    n: f64,
    s: LossStats,
}

impl StatSum {
    fn add(&mut self, x: &LossStats) {
        self.n += 1.0;
        self.s.loss += x.loss;
        self.s.implicit_acc += x.implicit_acc;
        self.s.model_mse += x.model_mse;
        self.s.ref_mse += x.ref_mse;
        self.s.reward_margin += x.reward_margin;
    }

    fn mean(&self) -> LossStats {
        let n = self.n.max(1.0);
        LossStats {
            loss: self.s.loss / n,
            implicit_acc: self.s.implicit_acc / n,
            model_mse: self.s.model_mse / n,
            ref_mse: self.s.ref_mse / n,
            reward_margin: self.s.reward_margin / n,
        }
    }
}

pub(crate) fn train<B: Backend>(
    be: Arc<B>,
    cfg: &DpoConfig,
    prep: &Prepared,
    resume_from: Option<&Path>,
    on_event: &mut dyn FnMut(&Event),
    cancel: &CancelToken,
) -> Result<Outcome, FinetuneError> {
    let unet = UNet::from_bundle(be.clone(), &prep.bundle)?;
    let lpb = crate::engine::layers_per_block(&prep.bundle)?;
    let mut lora = match &cfg.init_adapter {
        Some(path) => LoraSet::load_file(&*be, unet.linear_modules(), path, lpb)?,
        None => unet.new_lora(&LoraConfig {
            targets: cfg.targets.clone(),
            rank: cfg.rank,
            alpha: cfg.alpha.unwrap_or(cfg.rank as f32),
            init: match cfg.lora_init {
                LoraInitChoice::Gaussian => LoraInit::Gaussian,
                LoraInitChoice::Kaiming => LoraInit::KaimingUniform,
            },
            seed: cfg.seed,
        })?,
    };
    if lora.is_empty() {
        return Err(FinetuneError::Config {
            field: "targets",
            message: format!(
                "{:?} match no linear module of this UNet (e.g. to_q, to_k, to_v, to_out.0, \
                 proj_in, ff.net.2)",
                cfg.targets
            ),
        });
    }
    let mut params = Params::of(&*be, &lora);
    let sizes: Vec<usize> = params.host.iter().map(Vec::len).collect();
    let mut adam = AdamW::new(cfg.adamw(), &sizes);
    let fingerprint = cfg.fingerprint();

    let mut start = 0usize;
    let mut metrics_keep = 0usize;
    if let Some(dir) = resume_from {
        let ck = checkpoint::load(dir)?;
        if ck.state.fingerprint != fingerprint {
            return Err(FinetuneError::Run {
                path: dir.to_path_buf(),
                message: "checkpoint of a run with other settings. Fix: resume with the run's \
                          settings, or choose a new --output"
                    .into(),
            });
        }
        restore_params(dir, &ck, &mut params, &mut adam, &sizes)?;
        adam.step = ck.state.step as u64;
        start = ck.state.step;
        metrics_keep = ck.state.metrics_lines;
        params.upload(&*be, &mut lora);
        on_event(&Event::Resumed { step: start });
    }
    let mut log = MetricsLog::open(&cfg.output, metrics_keep)?;

    let target_kind = target_of(
        prep.scheduler
            .prediction_type()
            .map_err(crate::engine::EngineError::from)?,
    )?;
    let alphas = prep.scheduler.alphas_cumprod();
    let t_range = timestep_range(cfg, prep.scheduler.num_train_timesteps)?;

    let save = |step: usize, params: &Params, adam: &AdamW, log: &MetricsLog| {
        log.sync()?;
        let modules = module_states(params, adam);
        let ck = Checkpoint {
            state: CheckpointState {
                format: checkpoint::FORMAT.into(),
                step,
                fingerprint: fingerprint.clone(),
                lora_scale: params.scales.first().copied().unwrap_or(1.0),
                metrics_lines: log.lines(),
            },
            modules,
        };
        checkpoint::save(&cfg.output, &ck, cfg.keep_checkpoints)
    };

    let n_pairs = cfg.batch_pairs;
    let mut order = PairOrder::new(cfg.seed, prep.pairs.len());
    let mut grads = LoraGrads::zeros(&*be, &lora);
    let end = cfg
        .stop_after
        .map_or(cfg.steps, |s| (start + s).min(cfg.steps));
    let schedule = cfg.lr_schedule();
    let mut last_saved = start;
    let mut recent: Vec<StepMetrics> = Vec::new();

    for step in start..end {
        let t0 = Instant::now();
        grads.zero(&*be);
        let mut sums = StatSum::default();
        for k in 0..cfg.grad_accum {
            if cancel.is_cancelled() {
                if step > last_saved {
                    let path = save(step, &params, &adam, &log)?;
                    on_event(&Event::Checkpoint { step, path });
                }
                return Err(FinetuneError::Cancelled);
            }
            let micro = (step * cfg.grad_accum + k) as u64;
            let batch = order.batch(micro, n_pairs);
            let stats = micro_step(
                &unet,
                &lora,
                &mut grads,
                cfg,
                prep,
                &batch,
                micro,
                target_kind,
                &alphas,
                t_range.clone(),
            )?;
            sums.add(&stats);
        }
        // gradients to the host, in the optimiser's order
        let mut g: Vec<Vec<f32>> = Vec::with_capacity(params.host.len());
        for &id in &params.ids {
            let (da, db) = grads.get(id).expect("every adapted module has a gradient");
            g.push(be.download(da));
            g.push(be.download(db));
        }
        let stats = sums.mean();
        if !stats.loss.is_finite() {
            return Err(FinetuneError::Diverged {
                step: step + 1,
                what: "the loss",
            });
        }
        let mut gm: Vec<&mut [f32]> = g.iter_mut().map(|v| v.as_mut_slice()).collect();
        let grad_norm = clip_grad_norm(&mut gm, cfg.max_grad_norm.unwrap_or(f64::INFINITY));
        if !grad_norm.is_finite() {
            return Err(FinetuneError::Diverged {
                step: step + 1,
                what: "the gradient norm",
            });
        }
        let lr = cfg.lr * schedule.factor(step);
        {
            let mut pm: Vec<&mut [f32]> =
                params.host.iter_mut().map(|v| v.as_mut_slice()).collect();
            let gr: Vec<&[f32]> = g.iter().map(|v| v.as_slice()).collect();
            adam.update(&mut pm, &gr, lr);
        }
        params.upload(&*be, &mut lora);

        let m = StepMetrics {
            step: step + 1,
            total_steps: cfg.steps,
            loss: stats.loss,
            implicit_acc: stats.implicit_acc,
            model_mse: stats.model_mse,
            ref_mse: stats.ref_mse,
            reward_margin: stats.reward_margin,
            lr,
            grad_norm,
            pairs_seen: ((step + 1) * cfg.grad_accum * n_pairs) as u64,
            step_seconds: t0.elapsed().as_secs_f64(),
        };
        log.append(&m)?;
        on_event(&Event::Step(m));
        recent.push(m);
        if recent.len() > 10 {
            recent.remove(0);
        }
        let done = step + 1;
        if cfg.checkpoint_every > 0 && done % cfg.checkpoint_every == 0 && done < cfg.steps {
            let path = save(done, &params, &adam, &log)?;
            last_saved = done;
            on_event(&Event::Checkpoint { step: done, path });
        }
    }

    let complete = end == cfg.steps;
    if end > last_saved {
        let path = save(end, &params, &adam, &log)?;
        on_event(&Event::Checkpoint { step: end, path });
    }
    let adapter = super::adapter_path(&cfg.output);
    let metrics_path = log.path().to_path_buf();
    if !complete {
        return Err(FinetuneError::Paused { step: end });
    }
    write_adapter(cfg, prep, &params, &adapter)?;
    let history = super::metrics::read(&metrics_path)?;
    let plots = super::plots::write_all(&cfg.output, &history)?;
    let tail: Vec<&StepMetrics> = history.iter().rev().take(10).collect();
    let mean = |f: fn(&StepMetrics) -> f64| {
        tail.iter().map(|m| f(m)).sum::<f64>() / tail.len().max(1) as f64
    };
    let bytes = std::fs::read(&adapter).map_err(|e| FinetuneError::Io {
        path: adapter.clone(),
        message: e.to_string(),
    })?;
    let outcome = Outcome {
        adapter_sha256: crate::hash::sha256_hex(&bytes),
        adapter,
        metrics: metrics_path,
        plots,
        steps: end,
        final_loss: mean(|m| m.loss),
        final_implicit_acc: mean(|m| m.implicit_acc),
        final_reward: None,
        compute: dpo_compute(cfg, end, &history),
    };
    on_event(&Event::Finished(outcome.clone()));
    Ok(outcome)
}

/// UNet sample-evaluations of `steps` DPO/SFT steps: per pair, DPO runs the policy and the
/// reference on the preferred and the rejected latent (4 forwards) and back-propagates the
/// policy's 2; SFT runs and back-propagates the preferred one.
fn dpo_compute(cfg: &DpoConfig, steps: usize, history: &[StepMetrics]) -> super::Compute {
    let pairs = (steps * cfg.grad_accum * cfg.batch_pairs) as u64;
    let (fwd, bwd) = match cfg.objective {
        Objective::Dpo => (4, 2),
        Objective::Sft => (1, 1),
    };
    super::Compute {
        unet_forward: fwd * pairs,
        unet_backward: bwd * pairs,
        samples_drawn: 0,
        reward_evals: 0,
        wall_seconds: history.iter().map(|m| m.step_seconds).sum(),
    }
}

/// One micro-batch: forward (policy with LoRA, reference without), loss, backward into `grads`
/// (scaled by 1/grad_accum, as accelerate's accumulation does).
#[allow(clippy::too_many_arguments)]
fn micro_step<B: Backend>(
    unet: &UNet<B>,
    lora: &LoraSet<B>,
    grads: &mut LoraGrads<B>,
    cfg: &DpoConfig,
    prep: &Prepared,
    batch: &[usize],
    micro: u64,
    target_kind: Target,
    alphas: &[f64],
    t_range: std::ops::Range<usize>,
) -> Result<LossStats, FinetuneError> {
    let be = unet.backend();
    let n = batch.len();
    let (mut lat_shape, mut per) = (Vec::new(), 0usize);
    let mut xw = Vec::new();
    let mut xl = Vec::new();
    let mut texts = Vec::new();
    for &i in batch {
        let pk = &prep.pairs[i];
        let (s, w) = prep.cache.latent(&pk.chosen)?;
        let (_, l) = prep.cache.latent(&pk.rejected)?;
        if per == 0 {
            per = w.len();
            lat_shape = s;
        }
        if w.len() != per || l.len() != per {
            return Err(FinetuneError::Io {
                path: prep.cache.root().to_path_buf(),
                message: "cached latents of different sizes in one batch. Fix: clear the cache"
                    .into(),
            });
        }
        xw.extend(w);
        xl.extend(l);
        texts.push(pk.text.clone());
    }
    let draws = micro_draws(cfg.seed, micro, n, per, t_range, cfg.caption_dropout);
    let mut ehs = Vec::new();
    let mut ehs_shape = Vec::new();
    for (key, drop) in texts.iter().zip(&draws.drop_caption) {
        let k = if *drop { &prep.empty_text } else { key };
        let (s, e) = prep.cache.text(k)?;
        ehs_shape = s;
        ehs.extend(e);
    }
    let sft = cfg.objective == Objective::Sft;
    let samples = if sft { n } else { 2 * n };
    // preferred first, then rejected; both with the pair's noise and timestep
    let x0: Vec<f32> = if sft { xw } else { [xw, xl].concat() };
    let noise: Vec<f32> = if sft {
        draws.noise.clone()
    } else {
        [draws.noise.clone(), draws.noise.clone()].concat()
    };
    let ts: Vec<usize> = (0..samples).map(|s| draws.timesteps[s % n]).collect();
    let ehs_all: Vec<f32> = if sft {
        ehs
    } else {
        [ehs.clone(), ehs].concat()
    };
    let mut noisy = vec![0f32; x0.len()];
    for (s, &t) in ts.iter().enumerate() {
        let r = s * per..(s + 1) * per;
        crate::scheduler::add_noise(alphas, &x0[r.clone()], &noise[r.clone()], t, &mut noisy[r]);
    }
    let at: Vec<f64> = ts.iter().map(|&t| alphas[t]).collect();
    let target = loss::regression_target(target_kind, &noise, &x0, &at, per);

    let mut shape = vec![samples];
    shape.extend(&lat_shape);
    let mut eshape = vec![samples];
    eshape.extend(&ehs_shape);
    let x = Tensor::from_host(be, &noisy, &shape);
    let c = Tensor::from_host(be, &ehs_all, &eshape);
    let tf: Vec<f32> = ts.iter().map(|&t| t as f32).collect();
    let input = UNetInput {
        sample: &x,
        timesteps: &tf,
        ehs: &c,
    };
    let (pred, cache) = unet.forward_train(&input, Some(lora), cfg.recompute)?;
    let pred_h = pred.to_host(be);
    let (stats, mut d) = if sft {
        // sft_loss takes [preferred, rejected] halves; the rejected half is unused
        let doubled = [pred_h.clone(), pred_h].concat();
        let tt = [target.clone(), target].concat();
        let (st, g) = loss::sft_loss(&doubled, &tt, 2 * n)?;
        (st, g[..n * per].to_vec())
    } else {
        let reference = unet.forward(&input, None)?.to_host(be);
        loss::dpo_loss(&pred_h, &reference, &target, samples, cfg.beta)?
    };
    let k = 1.0 / cfg.grad_accum as f32;
    if cfg.grad_accum > 1 {
        d.iter_mut().for_each(|v| *v *= k);
    }
    let d_eps = Tensor::from_host(be, &d, &shape);
    unet.backward(cache, &d_eps, Some(lora), grads)?;
    Ok(stats)
}

fn write_adapter(
    cfg: &DpoConfig,
    prep: &Prepared,
    params: &Params,
    path: &Path,
) -> Result<(), FinetuneError> {
    let mut modules = BTreeMap::new();
    for (i, name) in params.names.iter().enumerate() {
        modules.insert(
            name.clone(),
            ModuleWeights {
                a: &params.host[2 * i],
                b: &params.host[2 * i + 1],
                rank: params.ranks[i],
                scale: params.scales[i],
            },
        );
    }
    let history = super::metrics::read(&cfg.output.join("metrics.jsonl")).unwrap_or_default();
    // timings would make two identical runs' files differ
    let last = StepMetrics {
        step_seconds: 0.0,
        ..history.last().copied().unwrap_or_default()
    };
    let provenance = serde_json::json!({
        "method": match cfg.objective { Objective::Dpo => "diffusion-dpo", Objective::Sft => "sft" },
        "tool": format!("dpoimg-finetune {}", env!("CARGO_PKG_VERSION")),
        "data": cfg.data.display().to_string(),
        "data_format": prep.data_format,
        "data_sha256": prep.data_hash,
        "pairs": prep.pairs.len(),
        "steps": cfg.steps,
        "hyperparameters": {
            "beta": cfg.beta, "lr": cfg.lr, "schedule": cfg.schedule, "warmup_steps": cfg.warmup_steps,
            "batch_pairs": cfg.batch_pairs, "grad_accum": cfg.grad_accum,
            "adam": [cfg.adam_beta1, cfg.adam_beta2, cfg.adam_eps, cfg.weight_decay],
            "max_grad_norm": cfg.max_grad_norm, "rank": cfg.rank,
            "alpha": cfg.alpha.unwrap_or(cfg.rank as f32), "lora_init": cfg.lora_init,
            "seed": cfg.seed, "caption_dropout": cfg.caption_dropout, "latents": cfg.latents,
            "timesteps": [cfg.timestep_min, cfg.timestep_max],
        },
        "final_metrics": last,
        "config_fingerprint": cfg.fingerprint(),
    });
    let mut meta = BTreeMap::new();
    meta.insert(
        "base_bundle_hash".to_string(),
        prep.bundle.hash().to_string(),
    );
    meta.insert("provenance".to_string(), provenance.to_string());
    adapter_file::write(path, &modules, &cfg.targets, meta)
}

/// The training timesteps `[timestep_min, timestep_max)`, checked against the bundle's scheduler.
fn timestep_range(
    cfg: &DpoConfig,
    num_train_timesteps: usize,
) -> Result<std::ops::Range<usize>, FinetuneError> {
    let hi = cfg.timestep_max.unwrap_or(num_train_timesteps);
    if hi > num_train_timesteps || cfg.timestep_min >= hi {
        return Err(FinetuneError::Config {
            field: "timestep_max",
            message: format!(
                "timesteps [{}, {hi}) do not fit this bundle's scheduler, whose timesteps are \
                 [0, {num_train_timesteps}). Fix: pick 0 <= min < max <= {num_train_timesteps}",
                cfg.timestep_min
            ),
        });
    }
    Ok(cfg.timestep_min..hi)
}

/// The checkpoint form of the parameters and the optimiser moments, by module name; the inverse of
/// [`restore_params`].
pub(crate) fn module_states(params: &Params, adam: &AdamW) -> BTreeMap<String, ModuleState> {
    params
        .names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            (
                name.clone(),
                ModuleState {
                    a: params.host[2 * i].clone(),
                    b: params.host[2 * i + 1].clone(),
                    rank: params.ranks[i],
                    exp_avg_a: adam.exp_avg[2 * i].clone(),
                    exp_avg_b: adam.exp_avg[2 * i + 1].clone(),
                    exp_avg_sq_a: adam.exp_avg_sq[2 * i].clone(),
                    exp_avg_sq_b: adam.exp_avg_sq[2 * i + 1].clone(),
                },
            )
        })
        .collect()
}

/// Copies a checkpoint's LoRA weights and AdamW moments into the host master copies, after
/// checking that every module of the run is there with the run's shapes (DPO and DPOK resume).
pub(crate) fn restore_params(
    dir: &Path,
    ck: &Checkpoint,
    params: &mut Params,
    adam: &mut AdamW,
    sizes: &[usize],
) -> Result<(), FinetuneError> {
    for (i, name) in params.names.iter().enumerate() {
        let m = ck.modules.get(name).ok_or_else(|| FinetuneError::Run {
            path: dir.to_path_buf(),
            message: format!("checkpoint lacks module `{name}`"),
        })?;
        let shapes_ok = m.a.len() == sizes[2 * i]
            && m.b.len() == sizes[2 * i + 1]
            && m.exp_avg_a.len() == m.a.len()
            && m.exp_avg_sq_a.len() == m.a.len()
            && m.exp_avg_b.len() == m.b.len()
            && m.exp_avg_sq_b.len() == m.b.len();
        if !shapes_ok {
            return Err(FinetuneError::Run {
                path: dir.to_path_buf(),
                message: format!("checkpoint module `{name}` has other shapes than the run"),
            });
        }
        params.host[2 * i] = m.a.clone();
        params.host[2 * i + 1] = m.b.clone();
        adam.exp_avg[2 * i] = m.exp_avg_a.clone();
        adam.exp_avg[2 * i + 1] = m.exp_avg_b.clone();
        adam.exp_avg_sq[2 * i] = m.exp_avg_sq_a.clone();
        adam.exp_avg_sq[2 * i + 1] = m.exp_avg_sq_b.clone();
    }
    Ok(())
}
