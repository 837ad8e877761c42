//! `dpoimg-finetune`: LoRA fine-tuning jobs from the shell — Diffusion-DPO on preference pairs
//! (and its SFT baseline), with progress bars, Ctrl-C to checkpoint and stop, and `--resume`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use dpoimg::finetune::{
    self, BaselineChoice, DpoConfig, DpokConfig, Event, FinetuneError, LatentChoice,
    LoraInitChoice, Objective, ScheduleChoice,
};
use dpoimg::CancelToken;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "dpoimg-finetune",
    version,
    about = "LoRA fine-tuning for dpoimg bundles"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Diffusion-DPO (or, with --sft, supervised) LoRA training on preference pairs.
    Dpo(Box<DpoArgs>),
    /// Held-out preference metrics of an adapter (or the base model) on fixed draws.
    Validate(ValidateArgs),
    /// DPOK: online policy-gradient LoRA training against a reward bundle (Fan et al. 2023).
    Dpok(Box<DpokArgs>),
}

#[derive(Args)]
struct ValidateArgs {
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Preference data (any format `dpo` reads).
    #[arg(long)]
    data: PathBuf,
    /// Adapter to evaluate (omit for the base model).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Fixed draws (timestep + noise) per pair.
    #[arg(long, default_value_t = 8)]
    repeats: usize,
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    #[arg(long, default_value_t = 5000.0)]
    beta: f64,
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    threads: usize,
    #[arg(long)]
    split: Option<String>,
    #[arg(long)]
    max_pairs: Option<usize>,
}

fn validate(a: &ValidateArgs) -> ExitCode {
    let mut cfg = DpoConfig {
        data: a.data.clone(),
        cache_dir: a.cache_dir.clone(),
        threads: a.threads,
        split: a.split.clone(),
        max_pairs: a.max_pairs,
        ..DpoConfig::default()
    };
    if let Some(b) = a
        .bundle
        .clone()
        .or_else(|| std::env::var_os("DPOIMG_BUNDLE").map(PathBuf::from))
    {
        cfg.bundle = b;
    }
    match finetune::validate::evaluate(&cfg, a.adapter.as_deref(), a.repeats.max(1), a.seed, a.beta)
    {
        Ok(m) => {
            println!("{}", serde_json::to_string_pretty(&m).expect("serialises"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Schedule {
    Constant,
    Warmup,
    Cosine,
}

#[derive(Clone, Copy, ValueEnum)]
enum Latents {
    Mean,
    Sample,
}

#[derive(Clone, Copy, ValueEnum)]
enum Init {
    Gaussian,
    Kaiming,
}

#[derive(Args)]
struct DpoArgs {
    /// Start from the settings in this JSON file (a `DpoConfig`, e.g. a run's run.json
    /// `config`); flags given on the command line override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Model bundle (default: $DPOIMG_BUNDLE or models/default).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Preference data: ImageRewardDB folder or metadata-*.parquet, Pick-a-Pic parquet, or JSONL
    /// `{prompt, chosen, rejected}`.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Run directory (checkpoints, metrics.jsonl, plots/, adapter.safetensors).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// ImageRewardDB split.
    #[arg(long)]
    split: Option<String>,
    /// Keep prompts containing this text (case-insensitive; repeatable, all must match).
    #[arg(long = "prompt-contains")]
    prompt_contains: Vec<String>,
    /// Keep prompts matching this regular expression.
    #[arg(long)]
    prompt_regex: Option<String>,
    /// What to do with a broken data row: stop with an error (default) or skip and count it.
    #[arg(long, value_parser = ["error", "skip"])]
    on_bad_row: Option<String>,
    /// Use at most this many pairs.
    #[arg(long)]
    max_pairs: Option<usize>,
    /// Supervised baseline: MSE on the preferred image only.
    #[arg(long)]
    sft: bool,
    #[arg(long)]
    beta: Option<f64>,
    /// Optimiser steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Preference pairs per micro-batch.
    #[arg(long)]
    batch: Option<usize>,
    /// Micro-batches per optimiser step.
    #[arg(long)]
    grad_accum: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, value_enum)]
    lr_schedule: Option<Schedule>,
    #[arg(long)]
    warmup_steps: Option<usize>,
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Clip the global gradient norm (0 = off).
    #[arg(long)]
    max_grad_norm: Option<f64>,
    #[arg(long)]
    rank: Option<usize>,
    /// LoRA alpha (default: rank).
    #[arg(long)]
    alpha: Option<f32>,
    /// Comma-separated module suffixes to adapt.
    #[arg(long, value_delimiter = ',')]
    targets: Option<Vec<String>>,
    #[arg(long, value_enum)]
    lora_init: Option<Init>,
    /// Continue training this adapter instead of a fresh one.
    #[arg(long)]
    init_adapter: Option<PathBuf>,
    #[arg(long)]
    seed: Option<u64>,
    /// Probability of training a pair on the empty prompt.
    #[arg(long)]
    caption_dropout: Option<f64>,
    /// Train on timesteps >= this only (layout is decided at high noise; default 0).
    #[arg(long)]
    timestep_min: Option<usize>,
    /// Train on timesteps < this only (default: the scheduler's num_train_timesteps).
    #[arg(long)]
    timestep_max: Option<usize>,
    /// VAE latent per image: posterior mean or one seeded sample.
    #[arg(long, value_enum)]
    latents: Option<Latents>,
    /// Checkpoint every N optimiser steps (0 = only at the end and on Ctrl-C).
    #[arg(long)]
    checkpoint_every: Option<usize>,
    #[arg(long)]
    keep_checkpoints: Option<usize>,
    /// Encode-once cache directory (default ~/.cache/dpoimg/encode).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Trainer device: cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// CPU threads (0 = all cores; bit-exact resume needs the same count).
    #[arg(long)]
    threads: Option<usize>,
    /// Recompute activations in backward (less memory).
    #[arg(long)]
    recompute: bool,
    /// Continue the run in --output from its newest checkpoint.
    #[arg(long)]
    resume: bool,
    /// Stop after this many steps of this invocation (checkpointed; --resume continues).
    #[arg(long)]
    stop_after: Option<usize>,
    /// No progress bars; one line per event on stderr.
    #[arg(long)]
    quiet: bool,
    /// Events as JSON lines on stdout (for scripts).
    #[arg(long)]
    json: bool,
}

/// The settings a run starts from: `--config FILE`, else (for `--resume --output DIR` alone) the
/// run's own run.json, else the defaults with `$DPOIMG_BUNDLE` as the bundle. Shared by `dpo` and
/// `dpok`, whose configs both keep the run's settings under "config" in run.json.
fn base_config<T: serde::de::DeserializeOwned + Default>(
    config: Option<&PathBuf>,
    output: Option<&PathBuf>,
    resume: bool,
    set_bundle: impl FnOnce(&mut T, PathBuf),
) -> Result<T, String> {
    let run_file = output
        .map(|o| o.join(finetune::RUN_FILE))
        .filter(|p| resume && config.is_none() && p.is_file());
    let mut c = match config.or(run_file.as_ref()) {
        Some(p) => {
            let text = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let v: serde_json::Value = serde_json::from_slice(&text)
                .map_err(|e| format!("{}: not JSON: {e}", p.display()))?;
            // a run.json holds the config under "config"
            let v = v.get("config").cloned().unwrap_or(v);
            serde_json::from_value(v).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => T::default(),
    };
    if config.is_none() && run_file.is_none() {
        if let Some(b) = std::env::var_os("DPOIMG_BUNDLE").filter(|v| !v.is_empty()) {
            set_bundle(&mut c, b.into());
        }
    }
    Ok(c)
}

fn build_config(a: &DpoArgs) -> Result<DpoConfig, String> {
    let mut c: DpoConfig = base_config(
        a.config.as_ref(),
        a.output.as_ref(),
        a.resume,
        |c: &mut DpoConfig, b| c.bundle = b,
    )?;
    macro_rules! set {
        ($field:ident, $v:expr) => {
            if let Some(v) = $v {
                c.$field = v;
            }
        };
    }
    set!(bundle, a.bundle.clone());
    set!(data, a.data.clone());
    set!(output, a.output.clone());
    if a.split.is_some() {
        c.split = a.split.clone();
    }
    if !a.prompt_contains.is_empty() {
        c.prompt_contains = a.prompt_contains.clone();
    }
    if a.prompt_regex.is_some() {
        c.prompt_regex = a.prompt_regex.clone();
    }
    if let Some(m) = &a.on_bad_row {
        c.skip_bad_rows = m == "skip";
    }
    if a.max_pairs.is_some() {
        c.max_pairs = a.max_pairs;
    }
    if a.sft {
        c.objective = Objective::Sft;
    }
    set!(beta, a.beta);
    set!(steps, a.steps);
    set!(batch_pairs, a.batch);
    set!(grad_accum, a.grad_accum);
    set!(lr, a.lr);
    set!(warmup_steps, a.warmup_steps);
    set!(weight_decay, a.weight_decay);
    if let Some(n) = a.max_grad_norm {
        c.max_grad_norm = (n > 0.0).then_some(n);
    }
    set!(rank, a.rank);
    if a.alpha.is_some() {
        c.alpha = a.alpha;
    }
    set!(targets, a.targets.clone());
    if a.init_adapter.is_some() {
        c.init_adapter = a.init_adapter.clone();
    }
    set!(seed, a.seed);
    set!(caption_dropout, a.caption_dropout);
    set!(timestep_min, a.timestep_min);
    if a.timestep_max.is_some() {
        c.timestep_max = a.timestep_max;
    }
    set!(checkpoint_every, a.checkpoint_every);
    set!(keep_checkpoints, a.keep_checkpoints);
    if a.cache_dir.is_some() {
        c.cache_dir = a.cache_dir.clone();
    }
    set!(device, a.device.clone());
    set!(threads, a.threads);
    if let Some(s) = a.lr_schedule {
        c.schedule = match s {
            Schedule::Constant => ScheduleChoice::Constant,
            Schedule::Warmup => ScheduleChoice::Warmup,
            Schedule::Cosine => ScheduleChoice::Cosine,
        };
    }
    if let Some(l) = a.latents {
        c.latents = match l {
            Latents::Mean => LatentChoice::Mean,
            Latents::Sample => LatentChoice::Sample,
        };
    }
    if let Some(i) = a.lora_init {
        c.lora_init = match i {
            Init::Gaussian => LoraInitChoice::Gaussian,
            Init::Kaiming => LoraInitChoice::Kaiming,
        };
    }
    c.recompute |= a.recompute;
    c.resume |= a.resume;
    if a.stop_after.is_some() {
        c.stop_after = a.stop_after;
    }
    Ok(c)
}

/// Renders events: progress bars on a terminal, plain lines otherwise, JSON with --json.
struct Reporter {
    quiet: bool,
    json: bool,
    encode: Option<ProgressBar>,
    train: Option<ProgressBar>,
}

impl Reporter {
    fn event(&mut self, e: &Event) {
        if self.json {
            println!("{}", serde_json::to_string(e).expect("events serialise"));
            return;
        }
        match e {
            Event::Loaded {
                pairs,
                rows_read,
                skipped,
            } => {
                let skips: Vec<String> = skipped.iter().map(|(k, n)| format!("{n} {k}")).collect();
                eprintln!(
                    "data: {pairs} pairs from {rows_read} rows{}",
                    if skips.is_empty() {
                        String::new()
                    } else {
                        format!(" (skipped: {})", skips.join(", "))
                    }
                );
            }
            Event::Encoding { done, total } => {
                if self.quiet {
                    return;
                }
                let bar = self.encode.get_or_insert_with(|| {
                    let b = ProgressBar::new(*total as u64);
                    b.set_style(
                        ProgressStyle::with_template("encode {bar:30} {pos}/{len} images {eta}")
                            .expect("template"),
                    );
                    b
                });
                bar.set_length(*total as u64);
                bar.set_position(*done as u64);
                if done == total {
                    bar.finish_and_clear();
                }
            }
            Event::Cached {
                images,
                prompts,
                new_images,
                new_prompts,
            } => eprintln!(
                "encode-once cache: {images} images, {prompts} prompts ({new_images} and {new_prompts} newly encoded)"
            ),
            Event::Resumed { step } => eprintln!("resuming after step {step}"),
            Event::Step(m) => {
                if self.quiet {
                    if m.step % 10 == 0 || m.step == m.total_steps {
                        eprintln!(
                            "step {}/{} loss {:.5} acc {:.3} lr {:.2e}",
                            m.step, m.total_steps, m.loss, m.implicit_acc, m.lr
                        );
                    }
                    return;
                }
                let bar = self.train.get_or_insert_with(|| {
                    let b = ProgressBar::new(m.total_steps as u64);
                    b.set_style(
                        ProgressStyle::with_template(
                            "train {bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
                        )
                        .expect("template"),
                    );
                    b.set_position(m.step.saturating_sub(1) as u64);
                    b.reset_eta();
                    b
                });
                bar.set_position(m.step as u64);
                bar.set_message(format!(
                    "loss {:.4} acc {:.2} margin {:+.3}",
                    m.loss, m.implicit_acc, m.reward_margin
                ));
            }
            Event::DpokStep(m) => {
                if self.quiet {
                    if m.policy_step == 1 || m.step == m.total_steps {
                        eprintln!(
                            "iteration {}/{} step {}/{} reward {:.4} ± {:.4} loss {:.5} kl {:.3e} clamped {:.2} grad {:.3e}",
                            m.iteration,
                            m.total_iterations,
                            m.step,
                            m.total_steps,
                            m.reward_mean,
                            m.reward_std,
                            m.loss,
                            m.kl,
                            m.clamped,
                            m.grad_norm
                        );
                    }
                    return;
                }
                let bar = self.train.get_or_insert_with(|| {
                    let b = ProgressBar::new(m.total_steps as u64);
                    b.set_style(
                        ProgressStyle::with_template(
                            "dpok {bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
                        )
                        .expect("template"),
                    );
                    b.set_position(m.step.saturating_sub(1) as u64);
                    b.reset_eta();
                    b
                });
                bar.set_position(m.step as u64);
                bar.set_message(format!(
                    "it {}/{} reward {:.3} kl {:.2e} loss {:.4}",
                    m.iteration, m.total_iterations, m.reward_mean, m.kl, m.loss
                ));
            }
            Event::Checkpoint { step, path } => {
                let line = format!("checkpoint at step {step}: {}", path.display());
                match &self.train {
                    Some(b) => b.println(line),
                    None => eprintln!("{line}"),
                }
            }
            Event::Finished(o) => {
                if let Some(b) = &self.train {
                    b.finish_and_clear();
                }
                match o.final_reward {
                    Some(r) => eprintln!(
                        "done: {} steps, final loss {:.5}, rollout reward {r:.4} (last 10 iterations); \
                         {} UNet forwards, {} backwards, {} samples",
                        o.steps,
                        o.final_loss,
                        o.compute.unet_forward,
                        o.compute.unet_backward,
                        o.compute.samples_drawn
                    ),
                    None => eprintln!(
                        "done: {} steps, final loss {:.5}, implicit accuracy {:.3}",
                        o.steps, o.final_loss, o.final_implicit_acc
                    ),
                }
                eprintln!(
                    "adapter: {} (sha256 {})",
                    o.adapter.display(),
                    o.adapter_sha256
                );
                eprintln!("metrics: {}", o.metrics.display());
                for p in &o.plots {
                    eprintln!("plot: {}", p.display());
                }
            }
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DPOIMG_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let args = match cli.command {
        Command::Dpo(a) => a,
        Command::Validate(v) => return validate(&v),
        Command::Dpok(a) => return dpok_main(&a),
    };
    let cfg = match build_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: --config {e}");
            return ExitCode::from(2);
        }
    };
    run_reported(
        "dpo",
        args.quiet,
        args.json,
        cfg.steps,
        &cfg.output,
        |on_event, cancel| finetune::run_dpo(&cfg, on_event, cancel).map(|_| ()),
    )
}

#[derive(Clone, Copy, ValueEnum)]
enum Baseline {
    PromptMean,
    None,
}

#[derive(Args)]
struct DpokArgs {
    /// Start from the settings in this JSON file (a `DpokConfig`, e.g. a run's run.json
    /// `config`); flags given on the command line override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Model bundle (default: $DPOIMG_BUNDLE or models/default).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Reward bundle directory (reward.json; `tools/export_imagereward.py` makes one).
    #[arg(long)]
    reward: Option<PathBuf>,
    /// Training prompts: a text file, one prompt per line (`#` comments and blank lines skipped).
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Run directory (checkpoints, metrics.jsonl, plots/, adapter.safetensors).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Outer iterations (one rollout batch + --policy-steps optimiser steps each).
    #[arg(long)]
    steps: Option<usize>,
    /// Images sampled from the current policy per iteration.
    #[arg(long)]
    samples_per_iter: Option<usize>,
    /// Images per drawn prompt per iteration (divides --samples-per-iter; >1 gives the
    /// prompt-mean baseline a group to compare against).
    #[arg(long)]
    samples_per_prompt: Option<usize>,
    /// Images per ONNX rollout call (memory vs speed; the draws do not change).
    #[arg(long)]
    rollout_batch: Option<usize>,
    /// DDIM steps per rollout.
    #[arg(long)]
    sampling_steps: Option<usize>,
    #[arg(long)]
    guidance: Option<f64>,
    /// DDIM eta of the rollouts, in (0, 1].
    #[arg(long)]
    eta: Option<f64>,
    /// Optimiser steps per iteration.
    #[arg(long)]
    policy_steps: Option<usize>,
    /// Transitions per micro-batch.
    #[arg(long)]
    minibatch: Option<usize>,
    /// Micro-batches per optimiser step.
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Clip the global gradient norm (0 = off).
    #[arg(long)]
    max_grad_norm: Option<f64>,
    /// Clamp the importance ratio to [1 - c, 1 + c].
    #[arg(long)]
    ratio_clip: Option<f64>,
    #[arg(long)]
    reward_weight: Option<f64>,
    #[arg(long)]
    kl_weight: Option<f64>,
    /// First iteration (0-based) whose loss has the KL term.
    #[arg(long)]
    kl_warmup: Option<usize>,
    /// Advantage baseline.
    #[arg(long, value_enum)]
    baseline: Option<Baseline>,
    /// Rewards remembered per prompt by the prompt-mean baseline (0 = all).
    #[arg(long)]
    baseline_window: Option<usize>,
    /// Transitions kept in the replay buffer.
    #[arg(long)]
    buffer_size: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    weight_decay: Option<f64>,
    #[arg(long)]
    rank: Option<usize>,
    /// LoRA alpha (default: rank).
    #[arg(long)]
    alpha: Option<f32>,
    /// Comma-separated module suffixes to adapt.
    #[arg(long, value_delimiter = ',')]
    targets: Option<Vec<String>>,
    #[arg(long, value_enum)]
    lora_init: Option<Init>,
    #[arg(long)]
    seed: Option<u64>,
    /// Checkpoint every N iterations (0 = only at the end and on Ctrl-C).
    #[arg(long)]
    checkpoint_every: Option<usize>,
    #[arg(long)]
    keep_checkpoints: Option<usize>,
    /// Trainer device: cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// CPU threads (0 = all cores; bit-exact resume needs the same count).
    #[arg(long)]
    threads: Option<usize>,
    /// Continue the run in --output from its newest checkpoint.
    #[arg(long)]
    resume: bool,
    /// Stop after this many iterations of this invocation (checkpointed; --resume continues).
    #[arg(long)]
    stop_after: Option<usize>,
    /// No progress bars; one line per iteration on stderr.
    #[arg(long)]
    quiet: bool,
    /// Events as JSON lines on stdout (for scripts).
    #[arg(long)]
    json: bool,
}

fn build_dpok_config(a: &DpokArgs) -> Result<DpokConfig, String> {
    let mut c: DpokConfig = base_config(
        a.config.as_ref(),
        a.output.as_ref(),
        a.resume,
        |c: &mut DpokConfig, b| c.bundle = b,
    )?;
    macro_rules! set {
        ($($field:ident),*) => {
            $(if let Some(v) = a.$field.clone() {
                c.$field = v;
            })*
        };
    }
    set!(
        bundle,
        reward,
        prompts,
        output,
        steps,
        samples_per_iter,
        samples_per_prompt,
        rollout_batch,
        sampling_steps,
        guidance,
        eta,
        policy_steps,
        minibatch,
        grad_accum,
        ratio_clip,
        reward_weight,
        kl_weight,
        kl_warmup,
        baseline_window,
        buffer_size,
        lr,
        weight_decay,
        rank,
        targets,
        seed,
        checkpoint_every,
        keep_checkpoints,
        device,
        threads
    );
    if let Some(n) = a.max_grad_norm {
        c.max_grad_norm = (n > 0.0).then_some(n);
    }
    if a.alpha.is_some() {
        c.alpha = a.alpha;
    }
    if let Some(b) = a.baseline {
        c.baseline = match b {
            Baseline::PromptMean => BaselineChoice::PromptMean,
            Baseline::None => BaselineChoice::None,
        };
    }
    if let Some(i) = a.lora_init {
        c.lora_init = match i {
            Init::Gaussian => LoraInitChoice::Gaussian,
            Init::Kaiming => LoraInitChoice::Kaiming,
        };
    }
    c.resume |= a.resume;
    if a.stop_after.is_some() {
        c.stop_after = a.stop_after;
    }
    Ok(c)
}

fn dpok_main(args: &DpokArgs) -> ExitCode {
    let cfg = match build_dpok_config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: --config {e}");
            return ExitCode::from(2);
        }
    };
    run_reported(
        "dpok",
        args.quiet,
        args.json,
        cfg.steps * cfg.policy_steps,
        &cfg.output,
        |on_event, cancel| finetune::run_dpok(&cfg, on_event, cancel).map(|_| ()),
    )
}

/// Runs one training job with Ctrl-C cancellation and progress reporting, and turns its outcome
/// into the exit status and the resume hint that DPO and DPOK share (`method` is the subcommand,
/// `steps` the total the pause message quotes).
fn run_reported(
    method: &str,
    quiet: bool,
    json: bool,
    steps: usize,
    output: &std::path::Path,
    run: impl FnOnce(&mut dyn FnMut(&Event), &CancelToken) -> Result<(), FinetuneError>,
) -> ExitCode {
    let cancel = CancelToken::new();
    {
        let c = cancel.clone();
        let _ = ctrlc::set_handler(move || {
            eprintln!("\ninterrupt: finishing the micro-batch and writing a checkpoint...");
            c.cancel();
        });
    }
    let mut rep = Reporter {
        quiet: quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()),
        json,
        encode: None,
        train: None,
    };
    match run(&mut |e| rep.event(e), &cancel) {
        Ok(()) => ExitCode::SUCCESS,
        Err(FinetuneError::Paused { step }) => {
            eprintln!(
                "paused after step {step} of {steps}; continue with: dpoimg-finetune {method} --resume --output {}",
                output.display()
            );
            ExitCode::SUCCESS
        }
        Err(FinetuneError::Cancelled) => {
            eprintln!(
                "cancelled; the newest checkpoint is kept. Continue with: dpoimg-finetune {method} --resume --output {} (same settings)",
                output.display()
            );
            ExitCode::from(130)
        }
        Err(e) => {
            if let Some(b) = &rep.train {
                b.abandon();
            }
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
