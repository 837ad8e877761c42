//! The DPOK training loop (Fan et al. 2023; google-research `dpok/train_online_pg.py`), built on
//! the objective in [`super::dpok`] and the DPO run's machinery (run directory, checkpoints,
//! metrics log, plots, adapter file, AdamW on host master copies).
//!
//! Each iteration:
//! 1. **Rollout.** `samples_per_iter / samples_per_prompt` prompts drawn uniformly (with
//!    replacement) from the prompt file, each sampled `samples_per_prompt` times; each sample's
//!    initial latents and per-step variance noise come from its own counter-based generator
//!    `(seed, sample index)`, so the draws do not depend on how samples are batched. Stochastic
//!    DDIM with CFG through the ONNX UNet with the current LoRA ([`super::dpok::rollout`]), every
//!    transition and its log-probability recorded.
//! 2. **Reward.** The final latents are decoded with the bundle's VAE exactly as `dpoimg generate`
//!    does, and scored by the reward bundle ([`crate::score::RewardModel`]).
//! 3. **Advantage** = reward − baseline (per-prompt running mean, or none) for every transition of
//!    the sample; the transitions enter a FIFO replay buffer of `buffer_size`.
//! 4. **Policy steps.** `policy_steps` AdamW steps, each accumulating `grad_accum` micro-batches of
//!    `minibatch` transitions drawn uniformly with replacement from the buffer (the reference's
//!    `np.random.choice`), through [`super::dpok::policy_gradients`] (trainer UNet forward with
//!    LoRA, reference forward without it while the KL term is active, DPOK loss, backward), then
//!    gradient clipping.
//!
//! Checkpoints hold the LoRA, the AdamW moments, the replay buffer, the baseline's history and the
//! position `(iteration, policy steps done)`; with every random draw a function of the seed and a
//! counter, a resumed run ends with the same adapter, byte for byte, as an uninterrupted one.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use super::adapter_file::{self, ModuleWeights};
use super::checkpoint::{self, Checkpoint, CheckpointState};
use super::dpok::{
    adapter_from_lora, compose_current, rollout, DdimPolicy, DpokStats, DpokWeights,
    PromptBaseline, StoredTransition,
};
use super::metrics::MetricsLog;
use super::order::{below, rng_for};
use super::trainer::{module_states, restore_params, Params};
use super::{BaselineChoice, Compute, DpokConfig, Event, FinetuneError, LoraInitChoice, Outcome};
use crate::engine::{Engine, EngineOptions};
use crate::optim::{clip_grad_norm, AdamW};
use crate::rng::TorchRng;
use crate::scheduler::NoiseSource;
use crate::score::{RewardModel, RgbRef, ScoreOptions};
use crate::train::{Backend, LoraConfig, LoraGrads, LoraInit, LoraSet, UNet};
use crate::CancelToken;

const STREAM_PROMPTS: u64 = 0x0070_726f_6d70; // "promp"
const STREAM_SAMPLE: u64 = 0x0073_616d_706c; // "sampl"
const STREAM_MINI: u64 = 0x006d_696e_6962; // "minib"

/// Extra checkpoint files of a DPOK run.
const STATE_FILE: &str = "dpok.json";
const BUFFER_FILE: &str = "buffer.safetensors";

/// What one DPOK optimiser step reports; one line of `metrics.jsonl`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct DpokMetrics {
    /// 1-based optimiser step over the whole run.
    pub step: usize,
    /// `steps · policy_steps`.
    pub total_steps: usize,
    /// 1-based iteration (rollout batch) this step belongs to.
    pub iteration: usize,
    pub total_iterations: usize,
    /// 1-based policy step within the iteration.
    pub policy_step: usize,
    /// The loss (micro-batch losses summed, i.e. already divided by `grad_accum`).
    pub loss: f64,
    /// `mean(−reward_weight·adv·ratio)` averaged over micro-batches.
    pub policy_loss: f64,
    /// `mean (ε_θ − ε_ref)²` of the CFG-combined predictions (0 while the KL term is off).
    pub kl: f64,
    pub kl_active: bool,
    pub ratio_mean: f64,
    pub ratio_min: f64,
    pub ratio_max: f64,
    /// Fraction of transitions whose ratio was clamped (they pass no policy gradient).
    pub clamped: f64,
    /// Reward of this iteration's rollout samples: mean, population std, min, max.
    pub reward_mean: f64,
    pub reward_std: f64,
    pub reward_min: f64,
    pub reward_max: f64,
    pub advantage_mean: f64,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub buffer_len: usize,
    /// Cumulative compute of the run up to and including this step.
    pub unet_forward: u64,
    pub unet_backward: u64,
    pub samples_drawn: u64,
    pub reward_evals: u64,
    /// Wall time of this step (the first step of an iteration includes its rollout).
    pub step_seconds: f64,
}

/// One stored transition.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    x_t: Vec<f32>,
    x_prev: Vec<f32>,
    t: i64,
    old_log_prob: f64,
    advantage: f64,
    prompt: usize,
}

/// Reward statistics of one rollout batch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
struct RewardStats {
    mean: f64,
    std: f64,
    min: f64,
    max: f64,
    advantage_mean: f64,
}

/// Position and small state of a run, saved beside the tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunState {
    format: String,
    /// 0-based iteration in progress (or next).
    iteration: usize,
    /// `Some(p)`: this iteration's rollout is in the buffer and `p` policy steps are done;
    /// `None`: the iteration has not started.
    policy_done: Option<usize>,
    baseline: PromptBaseline,
    counters: Compute,
    rewards: RewardStats,
}

const STATE_FORMAT: &str = "dpoimg-dpok-state/1";

/// Everything mutable in a run.
struct State {
    run: RunState,
    buffer: VecDeque<Entry>,
}

/// Per-sample generators: sample `j` of a rollout chunk fills its own `C·H·W` slice of every
/// draw from its own stream, so batching never changes a sample.
struct PerSample {
    rngs: Vec<TorchRng>,
}

impl NoiseSource for PerSample {
    fn fill_normal(&mut self, out: &mut [f32]) {
        let n = out.len() / self.rngs.len();
        for (chunk, rng) in out.chunks_mut(n).zip(&mut self.rngs) {
            rng.fill_randn(chunk);
        }
    }
}

fn io(path: &Path, e: impl std::fmt::Display) -> FinetuneError {
    FinetuneError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Reads the prompt file: one prompt per line; blank lines and `#` comments skipped.
fn read_prompts(path: &Path) -> Result<(Vec<String>, String), FinetuneError> {
    let bytes = std::fs::read(path).map_err(|e| {
        io(
            path,
            format!("{e}. Fix: --prompts names a text file with one prompt per line"),
        )
    })?;
    let text = String::from_utf8(bytes.clone()).map_err(|_| {
        io(
            path,
            "is not UTF-8 text. Fix: save the prompt file as UTF-8",
        )
    })?;
    let mut prompts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let p = line.trim();
        if p.is_empty() || p.starts_with('#') {
            continue;
        }
        if p.len() > crate::limits::MAX_PROMPT_BYTES {
            return Err(io(
                path,
                format!(
                    "line {}: the prompt has {} bytes, the limit is {}",
                    i + 1,
                    p.len(),
                    crate::limits::MAX_PROMPT_BYTES
                ),
            ));
        }
        prompts.push(p.to_string());
    }
    if prompts.is_empty() {
        return Err(io(path, "holds no prompt. Fix: write one prompt per line"));
    }
    if prompts.len() > super::dpok_config::limits::MAX_PROMPTS {
        return Err(io(
            path,
            format!(
                "holds {} prompts, the limit is {}",
                prompts.len(),
                super::dpok_config::limits::MAX_PROMPTS
            ),
        ));
    }
    Ok((prompts, crate::hash::sha256_hex(&bytes)))
}

#[derive(Debug, Serialize, Deserialize)]
struct RunRecord {
    format: String,
    method: String,
    fingerprint: String,
    config: DpokConfig,
}

/// Runs (or resumes) a DPOK LoRA job. `on_event` sees progress ([`Event::DpokStep`] per optimiser
/// step, [`Event::Checkpoint`], [`Event::Finished`]); `cancel` stops it between rollout chunks or
/// micro-batches, after saving a checkpoint of the completed work.
pub fn run_dpok(
    cfg: &DpokConfig,
    on_event: &mut dyn FnMut(&Event),
    cancel: &CancelToken,
) -> Result<Outcome, FinetuneError> {
    cfg.validate()?;
    let fingerprint = cfg.fingerprint();
    let (existing, resume_from) = super::check_run_dir_of(&cfg.output, cfg.resume, &fingerprint)?;
    let (prompts, prompts_hash) = read_prompts(&cfg.prompts)?;
    let mut eopts = EngineOptions::default();
    eopts.session.intra_threads = cfg.threads;
    let engine = Engine::open(&cfg.bundle, &eopts)?;
    let mut ropts = ScoreOptions::default();
    ropts.session.intra_threads = cfg.threads;
    let reward = RewardModel::open(&cfg.reward, &ropts)?;
    if !existing {
        let run = &cfg.output;
        std::fs::create_dir_all(run).map_err(|e| io(run, e))?;
        let rec = RunRecord {
            format: "dpoimg-run/1".into(),
            method: "dpok".into(),
            fingerprint: fingerprint.clone(),
            config: cfg.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&rec).expect("record serialises");
        crate::fsutil::atomic_write(&run.join(super::RUN_FILE), &bytes)
            .map_err(|e| io(&run.join(super::RUN_FILE), e))?;
    }
    let ctx = Ctx {
        cfg,
        engine: &engine,
        reward: &reward,
        prompts: &prompts,
        prompts_hash: &prompts_hash,
        fingerprint: &fingerprint,
    };
    let device = cfg.device.trim().to_ascii_lowercase();
    match super::parse_device(&device)? {
        super::DeviceChoice::Cpu => {
            let be = Arc::new(crate::train::Cpu::new(cfg.threads));
            train(be, &ctx, resume_from.as_deref(), on_event, cancel)
        }
        #[cfg(feature = "cuda")]
        super::DeviceChoice::Cuda(ordinal) => {
            let be = crate::train::backend::cuda::Cuda::new(ordinal).map_err(|e| {
                FinetuneError::Device {
                    device: device.clone(),
                    message: e.to_string(),
                }
            })?;
            train(Arc::new(be), &ctx, resume_from.as_deref(), on_event, cancel)
        }
        #[cfg(not(feature = "cuda"))]
        super::DeviceChoice::Cuda(_) => Err(FinetuneError::Device {
            device,
            message: "this build has no CUDA trainer backend. Fix: rebuild with \
                      `cargo build --release --features cuda`, or use --device cpu"
                .into(),
        }),
    }
}

struct Ctx<'a> {
    cfg: &'a DpokConfig,
    engine: &'a Engine,
    reward: &'a RewardModel,
    prompts: &'a [String],
    prompts_hash: &'a str,
    fingerprint: &'a str,
}

/// The run's fixed pieces besides the model.
struct Setup {
    policy: DdimPolicy,
    /// `[B=1, C, h, w]` of one sample.
    chw: [usize; 3],
    /// `[L, D]` of one prompt embedding.
    ld: [usize; 2],
    /// Embeddings of every prompt, then the empty prompt (the unconditional branch) last.
    emb: Vec<Vec<f32>>,
    init_sigma: f32,
}

fn setup(ctx: &Ctx) -> Result<Setup, FinetuneError> {
    let e = ctx.engine;
    let m = e.bundle().manifest();
    let f = m.vae.downsample_factor;
    let chw = [
        m.unet.in_channels,
        m.defaults.height as usize / f,
        m.defaults.width as usize / f,
    ];
    let policy = DdimPolicy::new(e.scheduler_config(), ctx.cfg.sampling_steps, ctx.cfg.eta)?;
    let init_sigma = policy.sampler()?.init_noise_sigma() as f32;
    let mut texts: Vec<&str> = ctx.prompts.iter().map(String::as_str).collect();
    texts.push("");
    let mut emb = Vec::with_capacity(texts.len());
    let mut ld = [0usize; 2];
    for chunk in texts.chunks(16) {
        let (shape, v) = e.encode_prompts(chunk)?;
        ld = [shape[1], shape[2]];
        let per = ld[0] * ld[1];
        emb.extend(v.chunks(per).map(<[f32]>::to_vec));
    }
    Ok(Setup {
        policy,
        chw,
        ld,
        emb,
        init_sigma,
    })
}

fn train<B: Backend>(
    be: Arc<B>,
    ctx: &Ctx,
    resume_from: Option<&Path>,
    on_event: &mut dyn FnMut(&Event),
    cancel: &CancelToken,
) -> Result<Outcome, FinetuneError> {
    let cfg = ctx.cfg;
    let su = setup(ctx)?;
    let unet = UNet::from_bundle(be.clone(), ctx.engine.bundle())?;
    let mut lora = unet.new_lora(&LoraConfig {
        targets: cfg.targets.clone(),
        rank: cfg.rank,
        alpha: cfg.alpha.unwrap_or(cfg.rank as f32),
        init: match cfg.lora_init {
            LoraInitChoice::Gaussian => LoraInit::Gaussian,
            LoraInitChoice::Kaiming => LoraInit::KaimingUniform,
        },
        seed: cfg.seed,
    })?;
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
    let mut st = State {
        run: RunState {
            format: STATE_FORMAT.into(),
            iteration: 0,
            policy_done: None,
            baseline: PromptBaseline::new(cfg.baseline_window),
            counters: Compute::default(),
            rewards: RewardStats::default(),
        },
        buffer: VecDeque::new(),
    };
    let mut metrics_keep = 0usize;
    let n = su.chw.iter().product::<usize>();
    if let Some(dir) = resume_from {
        let ck = checkpoint::load(dir)?;
        if ck.state.fingerprint != ctx.fingerprint {
            return Err(FinetuneError::Run {
                path: dir.to_path_buf(),
                message: "checkpoint of a run with other settings. Fix: resume with the run's \
                          settings, or choose a new --output"
                    .into(),
            });
        }
        restore_params(dir, &ck, &mut params, &mut adam, &sizes)?;
        adam.step = ck.state.step as u64;
        st = load_state(dir, n, ctx.prompts.len())?;
        metrics_keep = ck.state.metrics_lines;
        params.upload(&*be, &mut lora);
        on_event(&Event::Resumed {
            step: ck.state.step,
        });
    }
    let mut log = MetricsLog::open(&cfg.output, metrics_keep)?;

    let save = |st: &State, params: &Params, adam: &AdamW, log: &MetricsLog| {
        log.sync()?;
        save_checkpoint(cfg, ctx.fingerprint, st, params, adam, log)
    };
    let done_steps =
        |st: &State| st.run.iteration * cfg.policy_steps + st.run.policy_done.unwrap_or(0);
    let start_iteration = st.run.iteration;
    let end_iteration = cfg
        .stop_after
        .map_or(cfg.steps, |s| (start_iteration + s).min(cfg.steps));
    // the position `(iteration, policy_done)` of the newest checkpoint on disk
    let pos = |st: &State| (st.run.iteration, st.run.policy_done);
    let mut saved = resume_from.map(|_| pos(&st));
    let mut grads = LoraGrads::zeros(&*be, &lora);
    let total_steps = cfg.steps * cfg.policy_steps;
    // Checks for a cancel request; if set, checkpoints the state unless it is already on disk.
    macro_rules! check_cancel {
        () => {
            if cancel.is_cancelled() {
                if saved != Some(pos(&st)) {
                    let path = save(&st, &params, &adam, &log)?;
                    on_event(&Event::Checkpoint {
                        step: done_steps(&st),
                        path,
                    });
                }
                return Err(FinetuneError::Cancelled);
            }
        };
    }

    while st.run.iteration < end_iteration {
        let it = st.run.iteration;
        let mut t0 = Instant::now();
        if st.run.policy_done.is_none() {
            check_cancel!();
            let Some(rolled) = rollout_iteration(ctx, &su, &*be, &lora, it, cancel)? else {
                // cancelled during the rollout: nothing of this iteration is kept
                check_cancel!();
                return Err(FinetuneError::Cancelled);
            };
            absorb(cfg, &mut st, rolled, n)?;
            st.run.policy_done = Some(0);
        }
        let kl_active = it >= cfg.kl_warmup;
        let w = DpokWeights {
            reward_weight: cfg.reward_weight,
            kl_weight: cfg.kl_weight,
            ratio_clip: cfg.ratio_clip,
            kl_active,
            grad_accum: cfg.grad_accum,
            guidance: cfg.guidance,
        };
        while let Some(p) = st.run.policy_done.filter(|&p| p < cfg.policy_steps) {
            check_cancel!();
            let step = it * cfg.policy_steps + p;
            grads.zero(&*be);
            let mut agg = Agg::default();
            for k in 0..cfg.grad_accum {
                if k > 0 {
                    check_cancel!();
                }
                let micro = (step * cfg.grad_accum + k) as u64;
                let mut rng = rng_for(cfg.seed, STREAM_MINI, micro);
                let idx: Vec<usize> = (0..cfg.minibatch)
                    .map(|_| below(&mut rng, st.buffer.len() as u64) as usize)
                    .collect();
                let batch: Vec<StoredTransition> = idx
                    .iter()
                    .map(|&i| {
                        let e = &st.buffer[i];
                        StoredTransition {
                            x_t: &e.x_t,
                            x_prev: &e.x_prev,
                            t: e.t,
                            old_log_prob: e.old_log_prob,
                            advantage: e.advantage,
                            uncond: &su.emb[ctx.prompts.len()],
                            cond: &su.emb[e.prompt],
                        }
                    })
                    .collect();
                let s = super::dpok::policy_gradients(
                    &unet, &lora, &su.policy, &batch, su.chw, su.ld, &w, &mut grads,
                )?;
                agg.add(&s);
                let b = (super::dpok::branches(cfg.guidance) * cfg.minibatch) as u64;
                st.run.counters.unet_forward += if kl_active { 2 * b } else { b };
                st.run.counters.unet_backward += b;
            }
            let mut g: Vec<Vec<f32>> = Vec::with_capacity(params.host.len());
            for &id in &params.ids {
                let (da, db) = grads.get(id).expect("every adapted module has a gradient");
                g.push(be.download(da));
                g.push(be.download(db));
            }
            if !agg.loss.is_finite() {
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
            {
                let mut pm: Vec<&mut [f32]> =
                    params.host.iter_mut().map(|v| v.as_mut_slice()).collect();
                let gr: Vec<&[f32]> = g.iter().map(|v| v.as_slice()).collect();
                adam.update(&mut pm, &gr, cfg.lr);
            }
            params.upload(&*be, &mut lora);
            st.run.policy_done = Some(p + 1);
            let secs = t0.elapsed().as_secs_f64();
            st.run.counters.wall_seconds += secs;
            t0 = Instant::now();
            let c = st.run.counters;
            let r = st.run.rewards;
            let m = DpokMetrics {
                step: step + 1,
                total_steps,
                iteration: it + 1,
                total_iterations: cfg.steps,
                policy_step: p + 1,
                loss: agg.loss,
                policy_loss: agg.policy_loss / cfg.grad_accum as f64,
                kl: agg.kl / cfg.grad_accum as f64,
                kl_active,
                ratio_mean: agg.ratio_sum / agg.ratio_n.max(1.0),
                ratio_min: agg.ratio_min,
                ratio_max: agg.ratio_max,
                clamped: agg.clamped / cfg.grad_accum as f64,
                reward_mean: r.mean,
                reward_std: r.std,
                reward_min: r.min,
                reward_max: r.max,
                advantage_mean: r.advantage_mean,
                lr: cfg.lr,
                grad_norm,
                buffer_len: st.buffer.len(),
                unet_forward: c.unet_forward,
                unet_backward: c.unet_backward,
                samples_drawn: c.samples_drawn,
                reward_evals: c.reward_evals,
                step_seconds: secs,
            };
            log.append_json(&m)?;
            on_event(&Event::DpokStep(m));
        }
        st.run.iteration += 1;
        st.run.policy_done = None;
        let done = st.run.iteration;
        if cfg.checkpoint_every > 0 && done.is_multiple_of(cfg.checkpoint_every) && done < cfg.steps
        {
            let path = save(&st, &params, &adam, &log)?;
            saved = Some(pos(&st));
            on_event(&Event::Checkpoint {
                step: done_steps(&st),
                path,
            });
        }
    }

    let end_steps = done_steps(&st);
    if saved != Some(pos(&st)) {
        let path = save(&st, &params, &adam, &log)?;
        on_event(&Event::Checkpoint {
            step: end_steps,
            path,
        });
    }
    if st.run.iteration < cfg.steps {
        return Err(FinetuneError::Paused { step: end_steps });
    }
    let metrics_path = log.path().to_path_buf();
    let history = read_metrics(&metrics_path)?;
    let adapter = super::adapter_path(&cfg.output);
    write_adapter(ctx, &params, &history, &adapter)?;
    let plots = write_plots(&cfg.output, &history)?;
    let bytes = std::fs::read(&adapter).map_err(|e| io(&adapter, e))?;
    let tail: Vec<&DpokMetrics> = history.iter().rev().take(10).collect();
    let final_loss = tail.iter().map(|m| m.loss).sum::<f64>() / tail.len().max(1) as f64;
    let mut per_iter: Vec<f64> = history
        .iter()
        .filter(|m| m.policy_step == 1)
        .map(|m| m.reward_mean)
        .collect();
    let keep = per_iter.len().min(10);
    let per_iter = per_iter.split_off(per_iter.len() - keep);
    let mut compute = st.run.counters;
    // the run's whole wall time, resumed invocations included
    compute.wall_seconds = history.iter().map(|m| m.step_seconds).sum();
    let outcome = Outcome {
        adapter_sha256: crate::hash::sha256_hex(&bytes),
        adapter,
        metrics: metrics_path,
        plots,
        steps: end_steps,
        final_loss,
        final_implicit_acc: 0.0,
        final_reward: Some(per_iter.iter().sum::<f64>() / per_iter.len().max(1) as f64),
        compute,
    };
    on_event(&Event::Finished(outcome.clone()));
    Ok(outcome)
}

/// Micro-batch statistics of one optimiser step.
#[derive(Default)]
struct Agg {
    loss: f64,
    policy_loss: f64,
    kl: f64,
    ratio_sum: f64,
    ratio_n: f64,
    ratio_min: f64,
    ratio_max: f64,
    clamped: f64,
}

impl Agg {
    fn add(&mut self, s: &DpokStats) {
        if self.ratio_n == 0.0 {
            self.ratio_min = f64::INFINITY;
            self.ratio_max = f64::NEG_INFINITY;
        }
        self.loss += s.loss;
        self.policy_loss += s.policy_loss;
        self.kl += s.kl;
        self.clamped += s.clamped;
        for &r in &s.ratio {
            self.ratio_sum += r;
            self.ratio_n += 1.0;
            self.ratio_min = self.ratio_min.min(r);
            self.ratio_max = self.ratio_max.max(r);
        }
    }
}

/// One sampled trajectory: `(t, x_t, x_{t−1}, log π_old)` per step.
type Trajectory = Vec<(i64, Vec<f32>, Vec<f32>, f64)>;

/// What one iteration's rollout produced.
struct Rolled {
    /// Per sample: prompt index, `[steps]` transitions `(t, x_t, x_prev, log_prob)`, reward.
    samples: Vec<(usize, Trajectory, f64)>,
}

/// Samples and scores iteration `it`'s batch with the current LoRA; `None` if cancelled.
fn rollout_iteration<B: Backend>(
    ctx: &Ctx,
    su: &Setup,
    be: &B,
    lora: &LoraSet<B>,
    it: usize,
    cancel: &CancelToken,
) -> Result<Option<Rolled>, FinetuneError> {
    let cfg = ctx.cfg;
    let composed = compose_current(ctx.engine, adapter_from_lora(be, lora, "dpok-current"))?;
    let mut prng = rng_for(cfg.seed, STREAM_PROMPTS, it as u64);
    let k = cfg.samples_per_prompt.max(1);
    let chosen: Vec<usize> = (0..cfg.samples_per_iter / k)
        .flat_map(|_| {
            let p = below(&mut prng, ctx.prompts.len() as u64) as usize;
            std::iter::repeat_n(p, k)
        })
        .collect();
    let n: usize = su.chw.iter().product();
    let per_emb = su.ld[0] * su.ld[1];
    let uncond = &su.emb[ctx.prompts.len()];
    let mut out = Rolled {
        samples: Vec::with_capacity(cfg.samples_per_iter),
    };
    for (c, idx) in chosen.chunks(cfg.rollout_batch).enumerate() {
        if cancel.is_cancelled() {
            return Ok(None);
        }
        let b = idx.len();
        let first = it * cfg.samples_per_iter + c * cfg.rollout_batch;
        let mut noise = PerSample {
            rngs: (0..b)
                .map(|j| rng_for(cfg.seed, STREAM_SAMPLE, (first + j) as u64))
                .collect(),
        };
        let mut x = vec![0f32; b * n];
        noise.fill_normal(&mut x);
        x.iter_mut().for_each(|v| *v *= su.init_sigma);
        let mut un = Vec::with_capacity(b * per_emb);
        let mut co = Vec::with_capacity(b * per_emb);
        for &p in idx {
            un.extend_from_slice(uncond);
            co.extend_from_slice(&su.emb[p]);
        }
        let lat_shape = [b, su.chw[0], su.chw[1], su.chw[2]];
        let r = rollout(
            ctx.engine,
            &composed,
            &su.policy,
            cfg.guidance,
            &lat_shape,
            &x,
            &un,
            &co,
            &[b, su.ld[0], su.ld[1]],
            &mut noise,
        )?;
        let last = r.latents.last().expect("a rollout has latents");
        let (_, images) = ctx.engine.decode_latents(lat_shape, last)?;
        for (j, &p) in idx.iter().enumerate() {
            let score = ctx
                .reward
                .score(&ctx.prompts[p], &[RgbRef::from(&images[j])])?;
            let rg = j * n..(j + 1) * n;
            let transitions = r
                .timesteps
                .iter()
                .enumerate()
                .map(|(i, &t)| {
                    (
                        t,
                        r.latents[i][rg.clone()].to_vec(),
                        r.latents[i + 1][rg.clone()].to_vec(),
                        r.log_prob[i][j],
                    )
                })
                .collect();
            out.samples.push((p, transitions, f64::from(score[0])));
        }
    }
    Ok(Some(out))
}

/// Baseline, advantages, buffer and counters from one rollout.
fn absorb(cfg: &DpokConfig, st: &mut State, rolled: Rolled, n: usize) -> Result<(), FinetuneError> {
    let keys: Vec<String> = rolled.samples.iter().map(|s| s.0.to_string()).collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let rewards: Vec<f64> = rolled.samples.iter().map(|s| s.2).collect();
    let adv = match cfg.baseline {
        BaselineChoice::PromptMean => st.run.baseline.advantages(&key_refs, &rewards)?,
        BaselineChoice::None => {
            if let Some(bad) = rewards.iter().find(|r| !r.is_finite()) {
                return Err(FinetuneError::Diverged {
                    step: st.run.iteration * cfg.policy_steps,
                    what: if bad.is_nan() {
                        "a reward (NaN)"
                    } else {
                        "a reward"
                    },
                });
            }
            rewards.clone()
        }
    };
    let k = rewards.len() as f64;
    let mean = rewards.iter().sum::<f64>() / k;
    st.run.rewards = RewardStats {
        mean,
        std: (rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / k).sqrt(),
        min: rewards.iter().copied().fold(f64::INFINITY, f64::min),
        max: rewards.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        advantage_mean: adv.iter().sum::<f64>() / k,
    };
    let steps = cfg.sampling_steps as u64;
    let k = super::dpok::branches(cfg.guidance) as u64;
    st.run.counters.unet_forward += k * steps * rewards.len() as u64;
    st.run.counters.samples_drawn += rewards.len() as u64;
    st.run.counters.reward_evals += rewards.len() as u64;
    for ((p, transitions, _), a) in rolled.samples.into_iter().zip(adv) {
        for (t, x_t, x_prev, lp) in transitions {
            debug_assert_eq!(x_t.len(), n);
            st.buffer.push_back(Entry {
                x_t,
                x_prev,
                t,
                old_log_prob: lp,
                advantage: a,
                prompt: p,
            });
        }
    }
    while st.buffer.len() > cfg.buffer_size {
        st.buffer.pop_front();
    }
    Ok(())
}

fn le_bytes<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    v.iter().flat_map(|&x| f(x)).collect()
}

fn save_checkpoint(
    cfg: &DpokConfig,
    fingerprint: &str,
    st: &State,
    params: &Params,
    adam: &AdamW,
    log: &MetricsLog,
) -> Result<PathBuf, FinetuneError> {
    let modules = module_states(params, adam);
    let step = st.run.iteration * cfg.policy_steps + st.run.policy_done.unwrap_or(0);
    let ck = Checkpoint {
        state: CheckpointState {
            format: checkpoint::FORMAT.into(),
            step,
            fingerprint: fingerprint.to_string(),
            lora_scale: params.scales.first().copied().unwrap_or(1.0),
            metrics_lines: log.lines(),
        },
        modules,
    };
    // the replay buffer as flat tensors
    let len = st.buffer.len();
    let n = st.buffer.front().map_or(0, |e| e.x_t.len());
    let x_t: Vec<f32> = st
        .buffer
        .iter()
        .flat_map(|e| e.x_t.iter().copied())
        .collect();
    let x_prev: Vec<f32> = st
        .buffer
        .iter()
        .flat_map(|e| e.x_prev.iter().copied())
        .collect();
    let t: Vec<i64> = st.buffer.iter().map(|e| e.t).collect();
    let prompt: Vec<i64> = st.buffer.iter().map(|e| e.prompt as i64).collect();
    let lp: Vec<f64> = st.buffer.iter().map(|e| e.old_log_prob).collect();
    let adv: Vec<f64> = st.buffer.iter().map(|e| e.advantage).collect();
    let owned = [
        (
            "x_t",
            Dtype::F32,
            vec![len, n],
            le_bytes(&x_t, f32::to_le_bytes),
        ),
        (
            "x_prev",
            Dtype::F32,
            vec![len, n],
            le_bytes(&x_prev, f32::to_le_bytes),
        ),
        ("t", Dtype::I64, vec![len], le_bytes(&t, i64::to_le_bytes)),
        (
            "prompt",
            Dtype::I64,
            vec![len],
            le_bytes(&prompt, i64::to_le_bytes),
        ),
        (
            "old_log_prob",
            Dtype::F64,
            vec![len],
            le_bytes(&lp, f64::to_le_bytes),
        ),
        (
            "advantage",
            Dtype::F64,
            vec![len],
            le_bytes(&adv, f64::to_le_bytes),
        ),
    ];
    let dir = checkpoint::dir_of(&cfg.output);
    let views: Vec<(&str, TensorView<'_>)> = owned
        .iter()
        .map(|(k, d, s, b)| {
            TensorView::new(*d, s.clone(), b)
                .map(|v| (*k, v))
                .map_err(|e| io(&dir, e))
        })
        .collect::<Result<_, _>>()?;
    let buffer = safetensors::serialize(views, None).map_err(|e| io(&dir, e))?;
    let state = serde_json::to_vec_pretty(&st.run).expect("state serialises");
    checkpoint::save_with_extras(
        &cfg.output,
        &ck,
        cfg.keep_checkpoints,
        &[(STATE_FILE, &state), (BUFFER_FILE, &buffer)],
    )
}

fn load_state(dir: &Path, n: usize, prompts: usize) -> Result<State, FinetuneError> {
    let sp = dir.join(STATE_FILE);
    let text = std::fs::read(&sp).map_err(|e| io(&sp, e))?;
    let run: RunState =
        serde_json::from_slice(&text).map_err(|e| io(&sp, format!("not a DPOK state: {e}")))?;
    if run.format != STATE_FORMAT {
        return Err(io(
            &sp,
            format!("format `{}`, this build reads `{STATE_FORMAT}`", run.format),
        ));
    }
    let bp = dir.join(BUFFER_FILE);
    let bytes = std::fs::read(&bp).map_err(|e| io(&bp, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| io(&bp, e))?;
    let get = |name: &str, dtype: Dtype| -> Result<(Vec<usize>, Vec<u8>), FinetuneError> {
        let t = st
            .tensor(name)
            .map_err(|e| io(&bp, format!("tensor `{name}`: {e}")))?;
        if t.dtype() != dtype {
            return Err(io(&bp, format!("tensor `{name}` is not {dtype:?}")));
        }
        Ok((t.shape().to_vec(), t.data().to_vec()))
    };
    let (sx, x_t) = get("x_t", Dtype::F32)?;
    let (_, x_prev) = get("x_prev", Dtype::F32)?;
    let (_, t) = get("t", Dtype::I64)?;
    let (_, prompt) = get("prompt", Dtype::I64)?;
    let (_, lp) = get("old_log_prob", Dtype::F64)?;
    let (_, adv) = get("advantage", Dtype::F64)?;
    let len = sx[0];
    let f32s = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect()
    };
    let f64s = |b: &[u8]| -> Vec<f64> {
        b.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()
    };
    let i64s = |b: &[u8]| -> Vec<i64> {
        b.chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()
    };
    let (x_t, x_prev, t, prompt, lp, adv) = (
        f32s(&x_t),
        f32s(&x_prev),
        i64s(&t),
        i64s(&prompt),
        f64s(&lp),
        f64s(&adv),
    );
    let consistent = len > 0
        && sx.get(1) == Some(&n)
        && x_t.len() == len * n
        && x_prev.len() == len * n
        && [t.len(), prompt.len(), lp.len(), adv.len()]
            .iter()
            .all(|&l| l == len)
        && prompt.iter().all(|&p| p >= 0 && (p as usize) < prompts);
    if !consistent {
        return Err(io(
            &bp,
            "the replay buffer does not fit this run (latent size or prompt count differs). \
             Fix: resume with the run's bundle and prompt file",
        ));
    }
    let buffer = (0..len)
        .map(|i| Entry {
            x_t: x_t[i * n..(i + 1) * n].to_vec(),
            x_prev: x_prev[i * n..(i + 1) * n].to_vec(),
            t: t[i],
            old_log_prob: lp[i],
            advantage: adv[i],
            prompt: prompt[i] as usize,
        })
        .collect();
    Ok(State { run, buffer })
}

/// Reads a DPOK run's `metrics.jsonl`.
pub fn read_metrics(path: &Path) -> Result<Vec<DpokMetrics>, FinetuneError> {
    let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| io(path, format!("line {}: {e}", i + 1))))
        .collect()
}

/// `reward.png` (rollout reward per iteration), `loss.png` and `kl.png` in `<run>/plots/`.
fn write_plots(run: &Path, history: &[DpokMetrics]) -> Result<Vec<PathBuf>, FinetuneError> {
    let dir = run.join("plots");
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    let firsts: Vec<&DpokMetrics> = history.iter().filter(|m| m.policy_step == 1).collect();
    let it: Vec<f64> = firsts.iter().map(|m| m.iteration as f64).collect();
    let rw: Vec<f64> = firsts.iter().map(|m| m.reward_mean).collect();
    let xs: Vec<f64> = history.iter().map(|m| m.step as f64).collect();
    let loss: Vec<f64> = history.iter().map(|m| m.loss).collect();
    let kl: Vec<f64> = history.iter().map(|m| m.kl).collect();
    let (a, b, c) = (
        dir.join("reward.png"),
        dir.join("loss.png"),
        dir.join("kl.png"),
    );
    super::plots::line_chart(
        &a,
        "rollout reward per iteration (red: moving average)",
        &it,
        &rw,
        None,
    )?;
    super::plots::line_chart(&b, "dpok loss (red: moving average)", &xs, &loss, None)?;
    super::plots::line_chart(
        &c,
        "kl to the base model (red: moving average)",
        &xs,
        &kl,
        None,
    )?;
    Ok(vec![a, b, c])
}

fn write_adapter(
    ctx: &Ctx,
    params: &Params,
    history: &[DpokMetrics],
    path: &Path,
) -> Result<(), FinetuneError> {
    let cfg = ctx.cfg;
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
    // timings would make two identical runs' files differ
    let last = DpokMetrics {
        step_seconds: 0.0,
        ..history.last().copied().unwrap_or_default()
    };
    let provenance = serde_json::json!({
        "method": "dpok",
        "tool": format!("dpoimg-finetune {}", env!("CARGO_PKG_VERSION")),
        "prompts": cfg.prompts.display().to_string(),
        "prompts_sha256": ctx.prompts_hash,
        "prompt_count": ctx.prompts.len(),
        "reward": cfg.reward.display().to_string(),
        "reward_name": ctx.reward.manifest().name,
        "steps": cfg.steps,
        "hyperparameters": {
            "samples_per_iter": cfg.samples_per_iter, "sampling_steps": cfg.sampling_steps,
            "guidance": cfg.guidance, "eta": cfg.eta, "policy_steps": cfg.policy_steps,
            "minibatch": cfg.minibatch, "grad_accum": cfg.grad_accum,
            "max_grad_norm": cfg.max_grad_norm, "ratio_clip": cfg.ratio_clip,
            "reward_weight": cfg.reward_weight, "kl_weight": cfg.kl_weight,
            "kl_warmup": cfg.kl_warmup, "baseline": cfg.baseline,
            "baseline_window": cfg.baseline_window, "buffer_size": cfg.buffer_size,
            "lr": cfg.lr, "adam": [cfg.adam_beta1, cfg.adam_beta2, cfg.adam_eps, cfg.weight_decay],
            "rank": cfg.rank, "alpha": cfg.alpha.unwrap_or(cfg.rank as f32),
            "lora_init": cfg.lora_init, "seed": cfg.seed,
        },
        "final_metrics": last,
        "config_fingerprint": ctx.fingerprint,
    });
    let mut meta = BTreeMap::new();
    meta.insert(
        "base_bundle_hash".to_string(),
        ctx.engine.bundle().hash().to_string(),
    );
    meta.insert("provenance".to_string(), provenance.to_string());
    adapter_file::write(path, &modules, &cfg.targets, meta)
}
