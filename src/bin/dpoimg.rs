//! `dpoimg`: generate images, inspect bundles and images, merge adapters.

use clap::{Args, Parser, Subcommand};
use dpoimg::bundle::{Bundle, Verify};
use dpoimg::engine::RuntimeFlags;
use dpoimg::lora::AdapterRef;
use dpoimg::provenance::{read_png_text, write_png, AdapterRecord, Origin, Provenance};
use dpoimg::runtime::{GraphOptimization, Runtime};
use dpoimg::scheduler::SamplerKind;
use dpoimg::{CancelToken, Engine, EngineError, EngineOptions, GenerateRequest, Stage};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "dpoimg",
    version,
    about = "Text-to-image diffusion on ONNX Runtime, with LoRA adapters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log more (repeat for debug output); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Send generate/score/job/adapters commands to the dpoimgd daemon on this Unix socket
    /// (else DPOIMG_SOCKET; neither: run locally).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images from a prompt.
    Generate(GenerateArgs),
    /// Describe a bundle directory or a PNG's provenance.
    Info {
        /// A bundle directory or a PNG written by dpoimg.
        path: Option<PathBuf>,
        #[command(flatten)]
        rt: RuntimeArgs,
    },
    /// Adapter tools.
    #[command(subcommand)]
    Adapter(AdapterCommand),
    /// ImageReward scores of image files (PROMPT IMAGE..., or --prompts FILE IMAGE_DIR).
    Score(dpoimg::score::cli::ScoreArgs),
    /// Evaluate arms (base, adapters) on a prompt file: images, metrics, paired statistics,
    /// eval.json + report.html; blind A/B export and votes.
    Eval(dpoimg::eval::cli::EvalArgs),
    /// Base vs DPO vs DPOK (vs SFT) from one config: train each arm (resumable), evaluate all,
    /// compute accounting, reward-vs-compute curves, blinded A/B pack; experiment.json + report.html.
    Experiment(dpoimg::experiment::cli::ExperimentArgs),
    /// The shapes world: prompts, renderer, attribute checker, simulated annotators.
    #[command(subcommand)]
    World(dpoimg::world::cli::WorldCommand),
    /// Fine-tune jobs in the daemon (needs --socket or DPOIMG_SOCKET).
    #[command(subcommand)]
    Job(dpoimg::remote::cli::JobCommand),
    /// Adapters the daemon serves, by name (needs --socket or DPOIMG_SOCKET).
    #[command(subcommand)]
    Adapters(dpoimg::remote::cli::AdaptersCommand),
}

#[derive(Subcommand)]
enum AdapterCommand {
    /// Merge adapters into the UNet weights (diffusers-named safetensors).
    Merge {
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// PATH[:STRENGTH], repeatable.
        #[arg(long = "adapter", required = true)]
        adapters: Vec<String>,
        /// Output safetensors file.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Check an adapter against a bundle and print its modules and metadata.
    Inspect {
        path: PathBuf,
        #[arg(long)]
        bundle: Option<PathBuf>,
    },
}

#[derive(Args, Clone)]
struct RuntimeArgs {
    #[command(flatten)]
    flags: RuntimeFlags,
    /// ONNX Runtime graph optimisation: disable, basic, extended, all.
    #[arg(long, default_value = "all")]
    ort_opt: GraphOptimization,
}

#[derive(Args)]
struct GenerateArgs {
    prompt: String,
    /// Bundle directory (default: DPOIMG_BUNDLE, else the shipped bundle).
    #[arg(long)]
    bundle: Option<PathBuf>,
    #[arg(long, default_value = "")]
    negative_prompt: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Denoising steps (default: the bundle's).
    #[arg(long)]
    steps: Option<u32>,
    /// Classifier-free guidance scale (default: the bundle's; <= 1 disables CFG).
    #[arg(long)]
    guidance: Option<f32>,
    /// ddim, ddpm, euler, euler-a, dpmpp-2m, dpmpp-2m-karras (default: the bundle's).
    #[arg(long)]
    sampler: Option<SamplerKind>,
    /// DDIM eta (0 = deterministic).
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    #[arg(long)]
    width: Option<u32>,
    #[arg(long)]
    height: Option<u32>,
    /// Images in the batch.
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// PATH[:STRENGTH] (strength defaults to 1), repeatable; several are composed.
    #[arg(long = "adapter")]
    adapters: Vec<String>,
    /// Output directory.
    #[arg(short, long, default_value = "out")]
    output: PathBuf,
    /// Start from these latents ([count, C, h, w] float32 .npy) instead of seeded noise.
    #[arg(long)]
    init_latents: Option<PathBuf>,
    /// Also write the final latents as .npy next to the images.
    #[arg(long)]
    save_latents: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    rt: RuntimeArgs,
}

/// The shipped bundle: DPOIMG_BUNDLE, `models/default` next to the binary's tree, or in the
/// source checkout this binary was built from.
fn eval_cmd(args: &dpoimg::eval::cli::EvalArgs) -> Result<(), Failure> {
    let cancel = CancelToken::new();
    let c = cancel.clone();
    let _ = ctrlc::set_handler(move || c.cancel());
    match dpoimg::eval::cli::run(args, default_bundle(), &cancel) {
        Err(dpoimg::eval::EvalError::Cancelled) => Err(Failure::Cancelled),
        r => r.map_err(|e| Failure::Message(e.to_string())),
    }
}

/// `dpoimg world`; Ctrl-C cancels `world sample` cleanly (the other subcommands keep the
/// default handler: they are quick and write atomically).
fn world_cmd(cmd: &dpoimg::world::cli::WorldCommand) -> Result<(), Failure> {
    let cancel = CancelToken::new();
    if matches!(cmd, dpoimg::world::cli::WorldCommand::Sample(_)) {
        let c = cancel.clone();
        let _ = ctrlc::set_handler(move || c.cancel());
    }
    match dpoimg::world::cli::run_cancellable(cmd, &mut std::io::stdout().lock(), &cancel) {
        Err(dpoimg::world::WorldError::Cancelled) => Err(Failure::Cancelled),
        r => r.map_err(|e| Failure::Message(e.to_string())),
    }
}

fn experiment_cmd(args: &dpoimg::experiment::cli::ExperimentArgs) -> Result<(), Failure> {
    let cancel = CancelToken::new();
    let c = cancel.clone();
    let _ = ctrlc::set_handler(move || c.cancel());
    match dpoimg::experiment::cli::run(args, &cancel) {
        Err(dpoimg::experiment::ExperimentError::Cancelled) => Err(Failure::Cancelled),
        r => r.map_err(|e| Failure::Message(e.to_string())),
    }
}

fn default_bundle() -> PathBuf {
    if let Some(p) = std::env::var_os("DPOIMG_BUNDLE").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        for up in [
            exe_dir.join("models/default"),
            exe_dir.join("../share/dpoimg/models/default"),
        ] {
            if up.join("bundle.json").is_file() {
                return up;
            }
        }
    }
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models/default"))
}

fn engine_options(rt: &RuntimeArgs) -> EngineOptions {
    let mut o = rt.flags.engine_options();
    o.session.optimization = rt.ort_opt;
    o
}

/// `PATH[:STRENGTH]` ([`dpoimg::lora::split_adapter_arg`]) with a finite strength.
fn parse_adapter_arg(s: &str) -> Result<(PathBuf, f32), String> {
    let (path, strength) = dpoimg::lora::split_adapter_arg(s);
    if !strength.is_finite() {
        return Err(format!("adapter strength in {s:?} is not finite"));
    }
    Ok((PathBuf::from(path), strength))
}

fn load_adapters(engine: &Engine, args: &[String]) -> Result<Vec<AdapterRef>, String> {
    args.iter()
        .map(|a| {
            let (path, strength) = parse_adapter_arg(a)?;
            let adapter = engine.load_adapter(&path).map_err(|e| e.to_string())?;
            Ok(AdapterRef { adapter, strength })
        })
        .collect()
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let result = match remote_dispatch(cli.command, cli.socket) {
        Ok(r) => r,
        Err(command) => match *command {
        Command::Generate(args) => generate(args),
        Command::Info { path, rt } => info(path, &rt),
        Command::Adapter(cmd) => adapter(cmd),
        Command::Score(args) => dpoimg::score::cli::run(&args, &mut std::io::stdout().lock())
            .map_err(|e| Failure::Message(e.to_string())),
        Command::Eval(args) => eval_cmd(&args),
        Command::Experiment(args) => experiment_cmd(&args),
        Command::World(cmd) => world_cmd(&cmd),
        Command::Job(_) | Command::Adapters(_) => Err(Failure::Message(
            "`job` and `adapters` talk to the dpoimgd daemon: pass --socket PATH or set DPOIMG_SOCKET (start one with `dpoimgd --bundle DIR`)".into(),
        )),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Cancelled) => {
            eprintln!("dpoimg: cancelled");
            ExitCode::from(130)
        }
        Err(Failure::Message(m)) => {
            eprintln!("dpoimg: error: {m}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Cancelled,
    Message(String),
}

impl From<dpoimg::remote::RemoteError> for Failure {
    fn from(e: dpoimg::remote::RemoteError) -> Self {
        match e {
            dpoimg::remote::RemoteError::Cancelled => Failure::Cancelled,
            other => Failure::Message(other.to_string()),
        }
    }
}

/// With `--socket PATH` (or DPOIMG_SOCKET), runs generate/score/job/adapters through the daemon;
/// hands every other command back to run locally (refused when --socket was given explicitly,
/// since it cannot go to the daemon).
fn remote_dispatch(
    command: Command,
    flag: Option<PathBuf>,
) -> Result<Result<(), Failure>, Box<Command>> {
    use dpoimg::remote::{cli as rc, Client};
    let explicit = flag.is_some();
    let Some(socket) = flag.or_else(|| {
        std::env::var_os(dpoimg::remote::SOCKET_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    }) else {
        return Err(Box::new(command));
    };
    let name = match &command {
        Command::Generate(_) | Command::Score(_) | Command::Job(_) | Command::Adapters(_) => None,
        Command::Info { .. } => Some("info"),
        Command::Adapter(_) => Some("adapter"),
        Command::Eval(_) => Some("eval"),
        Command::Experiment(_) => Some("experiment"),
        Command::World(_) => Some("world"),
    };
    if let Some(name) = name {
        if explicit {
            return Ok(Err(Failure::Message(format!(
                "`{name}` runs locally, not through dpoimgd: drop --socket"
            ))));
        }
        return Err(Box::new(command));
    }
    let client = match Client::new(&socket) {
        Ok(c) => c,
        Err(e) => return Ok(Err(e.into())),
    };
    let cancel = CancelToken::new();
    {
        let c = cancel.clone();
        let _ = ctrlc::set_handler(move || c.cancel());
    }
    let mut out = std::io::stdout().lock();
    Ok(match command {
        Command::Generate(a) => {
            if a.init_latents.is_some() {
                return Ok(Err(Failure::Message(
                    "--init-latents cannot go to dpoimgd (it takes no latents): drop --socket to run locally".into(),
                )));
            }
            if a.save_latents {
                return Ok(Err(Failure::Message(
                    "--save-latents cannot go to dpoimgd (it returns images only): drop --socket to run locally".into(),
                )));
            }
            let mut ignored = a.rt.flags.given();
            if a.rt.ort_opt != GraphOptimization::All {
                ignored.push("--ort-opt");
            }
            if !ignored.is_empty() {
                eprintln!(
                    "dpoimg: warning: {} ignored with --socket (the daemon's engine settings apply)",
                    ignored.join(", ")
                );
            }
            let o = rc::GenerateOptions {
                prompt: a.prompt,
                negative_prompt: a.negative_prompt,
                seed: a.seed,
                steps: a.steps,
                guidance: a.guidance,
                sampler: a.sampler,
                eta: a.eta,
                width: a.width,
                height: a.height,
                count: a.count,
                adapters: a.adapters,
                output: a.output,
                bundle: a.bundle,
                quiet: a.quiet,
            };
            rc::generate(&client, &o, &cancel, &mut out)
                .map(|_| ())
                .map_err(Failure::from)
        }
        Command::Score(a) => {
            let mut ignored = a.rt.given();
            if a.batch_size != 8 {
                ignored.push("--batch-size");
            }
            if !ignored.is_empty() {
                eprintln!(
                    "dpoimg: warning: {} ignored with --socket (the daemon's reward settings apply)",
                    ignored.join(", ")
                );
            }
            rc::score(&client, &a, &mut out).map_err(Failure::from)
        }
        Command::Job(c) => rc::job(&client, &c, &cancel, &mut out).map_err(Failure::from),
        Command::Adapters(c) => rc::adapters(&client, &c, &mut out).map_err(Failure::from),
        other => return Err(Box::new(other)),
    })
}

impl From<String> for Failure {
    fn from(m: String) -> Self {
        Failure::Message(m)
    }
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Cancelled => Failure::Cancelled,
            other => Failure::Message(other.to_string()),
        }
    }
}

/// A file name in `dir` that does not exist yet (never overwrite an earlier image).
fn fresh_path(dir: &Path, stem: &str, ext: &str) -> PathBuf {
    let first = dir.join(format!("{stem}.{ext}"));
    if !first.exists() {
        return first;
    }
    (1..)
        .map(|k| dir.join(format!("{stem}-{k}.{ext}")))
        .find(|p| !p.exists())
        .expect("an unused name exists")
}

fn generate(args: GenerateArgs) -> Result<(), Failure> {
    let bundle_dir = args.bundle.clone().unwrap_or_else(default_bundle);
    // Fail on an unusable output directory before spending time on the models.
    std::fs::create_dir_all(&args.output)
        .map_err(|e| format!("output directory {}: {e}", args.output.display()))?;
    let probe = args
        .output
        .join(format!(".dpoimg-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| {
        format!(
            "output directory {} is not writable: {e}",
            args.output.display()
        )
    })?;
    let _ = std::fs::remove_file(&probe);

    let engine = Engine::open(&bundle_dir, &engine_options(&args.rt))?;
    let adapters = load_adapters(&engine, &args.adapters)?;
    let mut req = GenerateRequest::new(args.prompt.clone());
    req.negative_prompt = args.negative_prompt.clone();
    req.seed = args.seed;
    req.steps = args.steps;
    req.guidance = args.guidance;
    req.sampler = args.sampler;
    req.eta = args.eta;
    req.width = args.width;
    req.height = args.height;
    req.count = args.count;
    req.adapters = adapters.clone();
    if let Some(p) = &args.init_latents {
        let (_shape, data) = dpoimg::npy::read_f32(p).map_err(|e| e.to_string())?;
        req.init_latents = Some(data);
    }

    let cancel = CancelToken::new();
    {
        let c = cancel.clone();
        let _ = ctrlc::set_handler(move || c.cancel());
    }
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(u64::from(
            args.steps
                .unwrap_or(engine.bundle().manifest().defaults.steps),
        ));
        b.set_style(
            ProgressStyle::with_template(
                "{msg:>10} [{bar:30}] {pos}/{len} steps  {elapsed} (eta {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b
    };
    let mut on_progress = |p: dpoimg::Progress| {
        bar.set_length(u64::from(p.total_steps));
        bar.set_position(u64::from(p.step));
        bar.set_message(match p.stage {
            Stage::EncodingPrompt => "encoding",
            Stage::Denoising => "denoising",
            Stage::Decoding => "decoding",
        });
        true
    };
    let g = engine.generate(&req, &mut on_progress, &cancel);
    bar.finish_and_clear();
    let g = g?;

    let records: Vec<AdapterRecord> = adapters.iter().map(AdapterRecord::from).collect();
    let origin = Origin {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        seed: args.seed,
        adapters: records,
        bundle: engine.bundle().manifest().name.clone(),
        bundle_sha256: engine.bundle().hash().to_string(),
        init_latents_file: args.init_latents.as_ref().map(|p| p.display().to_string()),
    };
    let stem = format!("dpoimg-{}", args.seed);
    for (i, img) in g.images.iter().enumerate() {
        let prov = Provenance::new(&g, &origin, i);
        let path = fresh_path(&args.output, &format!("{stem}-{i}"), "png");
        write_png(&path, img, Some(&prov))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("{}", path.display());
    }
    if args.save_latents {
        let path = fresh_path(&args.output, &format!("{stem}.latents"), "npy");
        dpoimg::npy::write_f32(&path, &g.latent_shape, &g.latents).map_err(|e| e.to_string())?;
        println!("{}", path.display());
    }
    let t = g.timings;
    eprintln!(
        "{} image(s) {}x{} in {:.2}s ({} UNet calls; {:.1}% of the time inside ONNX Runtime) on {}",
        g.images.len(),
        g.width,
        g.height,
        t.total.as_secs_f64(),
        t.unet_calls,
        100.0 * t.ort_run.as_secs_f64() / t.total.as_secs_f64().max(1e-9),
        engine.device()
    );
    Ok(())
}

fn info(path: Option<PathBuf>, rt: &RuntimeArgs) -> Result<(), Failure> {
    let path = path.unwrap_or_else(default_bundle);
    if path.is_file() {
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let chunks =
            read_png_text(&bytes).map_err(|e| format!("{}: not a PNG: {e}", path.display()))?;
        if chunks.is_empty() {
            println!("{}: no text chunks", path.display());
        }
        for (k, v) in chunks {
            if k != "dpoimg" {
                println!("{k}: {v}");
            }
        }
        return Ok(());
    }
    let b = Bundle::open(&path, rt.flags.verify()).map_err(|e| e.to_string())?;
    let m = b.manifest();
    println!("bundle      {} ({})", b.dir().display(), m.name);
    println!(
        "format      {} v{} ({})",
        m.format, m.version, m.architecture
    );
    println!("sha256      {} (bundle.json)", b.hash());
    println!(
        "text        {} (max length {}, pad id {}, hidden {})",
        m.text_encoder.onnx,
        m.text_encoder.max_length,
        m.text_encoder.pad_id,
        m.text_encoder.hidden_size
    );
    println!(
        "unet        {} (latent channels {}, cross-attention {}, LoRA modules {} on {})",
        m.unet.onnx,
        m.unet.in_channels,
        m.unet.cross_attention_dim,
        m.unet.lora.modules.len(),
        m.unet.lora.targets.join(",")
    );
    println!(
        "vae         {} / {} (factor {}, scaling {})",
        m.vae.decoder, m.vae.encoder, m.vae.downsample_factor, m.vae.scaling_factor
    );
    println!(
        "defaults    {}x{} {} steps, guidance {}, sampler {}; sizes must be multiples of {}",
        m.defaults.width,
        m.defaults.height,
        m.defaults.steps,
        m.defaults.guidance,
        m.defaults.sampler,
        m.pixel_multiple()
    );
    println!(
        "files       {} ({})",
        m.files.len(),
        if rt.flags.no_verify {
            "not hashed"
        } else {
            "sha256 verified"
        }
    );
    match Runtime::get(rt.flags.ort_lib.as_deref()) {
        Ok(r) => println!(
            "onnxruntime {} ({:?}); CUDA provider {}",
            r.library().path.display(),
            r.library().source,
            if r.cuda_provider_present() {
                "present"
            } else {
                "absent"
            }
        ),
        Err(e) => println!("onnxruntime not available: {e}"),
    }
    Ok(())
}

fn adapter(cmd: AdapterCommand) -> Result<(), Failure> {
    match cmd {
        AdapterCommand::Merge {
            bundle,
            adapters,
            output,
        } => {
            let bundle = Bundle::open(bundle.unwrap_or_else(default_bundle), Verify::Full)
                .map_err(|e| e.to_string())?;
            let lpb = layers_per_block(&bundle)?;
            let refs = adapters
                .iter()
                .map(|a| {
                    let (p, s) = parse_adapter_arg(a)?;
                    let ad = dpoimg::lora::LoraAdapter::load(&p, &bundle.manifest().unet.lora, lpb)
                        .map_err(|e| e.to_string())?;
                    Ok(AdapterRef {
                        adapter: ad.into(),
                        strength: s,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            let composed = dpoimg::lora::compose(&bundle.manifest().unet.lora, &refs)
                .map_err(|e| e.to_string())?;
            let n = dpoimg::lora::merge_into_unet(
                &bundle.path(&bundle.manifest().unet.weights),
                &composed,
                &output,
            )
            .map_err(|e| e.to_string())?;
            println!("merged {n} modules into {}", output.display());
            Ok(())
        }
        AdapterCommand::Inspect { path, bundle } => {
            let bundle = Bundle::open(bundle.unwrap_or_else(default_bundle), Verify::Quick)
                .map_err(|e| e.to_string())?;
            let lpb = layers_per_block(&bundle)?;
            let ad = dpoimg::lora::LoraAdapter::load(&path, &bundle.manifest().unet.lora, lpb)
                .map_err(|e| e.to_string())?;
            println!("adapter {} sha256 {}", path.display(), ad.hash);
            println!(
                "modules {} of {} (max rank {})",
                ad.modules.len(),
                bundle.manifest().unet.lora.modules.len(),
                ad.rank()
            );
            for (k, v) in &ad.metadata {
                println!("  {k}: {v}");
            }
            Ok(())
        }
    }
}

fn layers_per_block(bundle: &Bundle) -> Result<usize, String> {
    dpoimg::engine::layers_per_block(bundle).map_err(|e| e.to_string())
}
