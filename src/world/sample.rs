//! `dpoimg world sample`: a model's images of world prompts, laid out as `world render` lays out
//! its renders (`DIR/{prompt:05}-{k}.png` + `DIR/index.json`), so that `world check --index`
//! scores them and `world annotate --index` turns them into a preference dataset.
//!
//! ```text
//! dpoimg world sample --bundle DIR (--prompts FILE | --split test|train|validation|all --count N
//!     [--prompt-seed S]) --per-prompt K [--seed S] [--steps --guidance --sampler --width --height]
//!     [--adapter PATH[:S]]... [--device auto] [--threads N] [--quiet] -o DIR
//! ```
//!
//! Seeds. Images are numbered as `render` and `eval` number theirs: image k of prompt i is image
//! `i·K + k`. Each prompt's K images come from ONE batched engine request (count K, the batch
//! shares one seeded noise stream, as diffusers' does with one generator) with seed
//! `seed + i·K`; K above the engine's per-request limit ([`crate::limits::MAX_COUNT`], 16) is
//! split into requests of 16 whose seed is `seed + i·K + k0` for their first image k0. So image
//! k of a prompt is byte for byte `dpoimg generate PROMPT --seed <its request seed> --count
//! <its request count>`'s image `k − k0` (same settings), and the same settings give the same
//! files. Every PNG carries the provenance chunks `dpoimg generate` writes (request seed and
//! batch index among them); index.json's `seed` is the request seed.
//!
//! Prompts: `--prompts FILE` (one per line, blank and `#` lines skipped; each must parse with the
//! world grammar and name a different scene, else an error naming the line) or `--split S
//! --count N [--prompt-seed S]`, which draws exactly the prompts `dpoimg world prompts --split S
//! --count N --seed S` prints. K may be 1 to 64; `world annotate` needs 4 to 9 per prompt.
//!
//! Ctrl-C stops between denoising steps; the images of finished prompts stay on disk and
//! index.json is written only when every prompt is done, so a consumer never reads a partial
//! index (rerunning with the same settings rewrites the same files).

use super::cli::parse_split;
use super::scene::{PromptSampler, Scene, Split};
use super::WorldError;
use crate::cancel::CancelToken;
use crate::engine::{Engine, EngineError, GenerateRequest, RuntimeFlags, Stage};
use crate::lora::AdapterRef;
use crate::provenance::{write_png, AdapterRecord, Origin, Provenance};
use crate::scheduler::SamplerKind;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Most images per prompt (`--per-prompt`).
pub const MAX_PER_PROMPT: u32 = 64;
/// Most prompts drawn with `--split` (`--count`); the grammar has about 13,500.
pub const MAX_PROMPTS: usize = 10_000;

#[derive(Debug, Clone, clap::Args)]
pub struct SampleArgs {
    /// Bundle directory (an SD-1.x bundle trained on the world, e.g. models/world).
    #[arg(long)]
    pub bundle: PathBuf,
    /// A file with one world prompt per line (blank lines and `#` lines skipped).
    #[arg(long, conflicts_with_all = ["split", "count", "prompt_seed"])]
    pub prompts: Option<PathBuf>,
    /// Draw prompts of this split: train, validation, test or all (with --count).
    #[arg(long)]
    pub split: Option<String>,
    /// How many distinct prompts to draw with --split.
    #[arg(long, requires = "split")]
    pub count: Option<usize>,
    /// Seed of the prompt draw (as `world prompts --seed`).
    #[arg(long, requires = "split")]
    pub prompt_seed: Option<u64>,
    /// Images per prompt (1 to 64; `world annotate` needs 4 to 9).
    #[arg(long)]
    pub per_prompt: u32,
    /// Prompt i's batch uses seed + i·K (module docs).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Denoising steps (default: the bundle's).
    #[arg(long)]
    pub steps: Option<u32>,
    /// Classifier-free guidance scale (default: the bundle's).
    #[arg(long)]
    pub guidance: Option<f32>,
    /// Sampler (default: the bundle's).
    #[arg(long)]
    pub sampler: Option<SamplerKind>,
    #[arg(long)]
    pub width: Option<u32>,
    #[arg(long)]
    pub height: Option<u32>,
    /// PATH[:STRENGTH] (strength defaults to 1), repeatable; several are composed.
    #[arg(long = "adapter")]
    pub adapters: Vec<String>,
    #[command(flatten)]
    pub rt: RuntimeFlags,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Output directory (PNG files and index.json).
    #[arg(short, long)]
    pub output: PathBuf,
}

fn option(name: &str, value: impl ToString, problem: impl Into<String>) -> WorldError {
    WorldError::Option {
        name: name.into(),
        value: value.to_string(),
        problem: problem.into(),
    }
}

/// The prompts of a prompt file, as written, each parsed with the world grammar, no
/// scene twice (a consumer of the index groups images by scene).
pub fn read_prompt_file(path: &Path) -> Result<Vec<String>, WorldError> {
    let text = std::fs::read_to_string(path).map_err(|e| WorldError::io("read", path, e))?;
    let at_line = |line: usize, source: WorldError| WorldError::PromptLine {
        path: path.to_path_buf(),
        line,
        source: Box::new(source),
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let scene = Scene::parse(line).map_err(|e| at_line(n + 1, e))?;
        if let Some(first) = seen.insert(scene.to_string(), n + 1) {
            return Err(at_line(
                n + 1,
                option(
                    "prompt",
                    line,
                    format!(
                        "the same scene as line {first}; list each prompt once (--per-prompt sets images per prompt)"
                    ),
                ),
            ));
        }
        out.push(line.to_string());
    }
    if out.is_empty() {
        return Err(option(
            "prompts",
            path.display(),
            "the file holds no prompts (one world prompt per line)",
        ));
    }
    Ok(out)
}

/// The prompts `args` asks for, checked (module docs).
pub fn prompts(args: &SampleArgs) -> Result<Vec<String>, WorldError> {
    match (&args.prompts, &args.split) {
        (Some(f), None) => read_prompt_file(f),
        (None, Some(split)) => {
            let split = parse_split(split)?;
            let count = args.count.ok_or_else(|| {
                option("count", "none", "give --count N (how many prompts to draw)")
            })?;
            if count == 0 || count > MAX_PROMPTS {
                return Err(option(
                    "count",
                    count,
                    format!("use 1 to {MAX_PROMPTS} prompts"),
                ));
            }
            let sampler = PromptSampler {
                seed: args.prompt_seed.unwrap_or(0),
                ..Default::default()
            };
            Ok(sampler
                .distinct(split, count)?
                .iter()
                .map(Scene::to_string)
                .collect())
        }
        _ => Err(option(
            "prompts",
            "none",
            "give --prompts FILE or --split SPLIT --count N",
        )),
    }
}

/// `PATH[:STRENGTH]` ([`crate::lora::split_adapter_arg`]) with a finite strength.
fn parse_adapter(s: &str) -> Result<(PathBuf, f32), WorldError> {
    let (path, strength) = crate::lora::split_adapter_arg(s);
    if !strength.is_finite() {
        return Err(option("adapter", s, "the strength is not finite"));
    }
    Ok((PathBuf::from(path), strength))
}

/// Runs `dpoimg world sample`; the summary line goes to `out`, the progress bar to stderr.
pub fn run(args: &SampleArgs, out: &mut dyn Write, cancel: &CancelToken) -> Result<(), WorldError> {
    let k_total = args.per_prompt;
    if !(1..=MAX_PER_PROMPT).contains(&k_total) {
        return Err(option(
            "per-prompt",
            k_total,
            format!("use 1 to {MAX_PER_PROMPT} images per prompt (`world annotate` needs 4 to 9)"),
        ));
    }
    let list = prompts(args)?;
    std::fs::create_dir_all(&args.output)
        .map_err(|e| WorldError::io("create folder", &args.output, e))?;
    let engine =
        Engine::open(&args.bundle, &args.rt.engine_options()).map_err(|e| WorldError::Engine {
            what: format!("opening bundle {}", args.bundle.display()),
            source: Box::new(e),
        })?;
    let adapters = args
        .adapters
        .iter()
        .map(|a| {
            let (path, strength) = parse_adapter(a)?;
            let adapter = engine.load_adapter(&path).map_err(|e| WorldError::Engine {
                what: format!("adapter {}", path.display()),
                source: Box::new(e),
            })?;
            Ok(AdapterRef { adapter, strength })
        })
        .collect::<Result<Vec<_>, WorldError>>()?;
    let records: Vec<AdapterRecord> = adapters.iter().map(AdapterRecord::from).collect();
    let manifest = engine.bundle().manifest();
    let steps = args.steps.unwrap_or(manifest.defaults.steps);
    let chunk = crate::limits::MAX_COUNT;
    let batches_per_prompt = k_total.div_ceil(chunk) as usize;
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new((list.len() * batches_per_prompt) as u64 * u64::from(steps));
        b.set_style(
            ProgressStyle::with_template(
                "{msg:>16} [{bar:30}] {pos}/{len} steps  {elapsed} (eta {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b
    };
    let result = sample_all(
        args, &engine, &list, &adapters, &records, steps, &bar, cancel,
    );
    bar.finish_and_clear();
    let entries = result?;
    let index = args.output.join("index.json");
    let body =
        serde_json::to_vec_pretty(&json!({"version": 1, "images": entries})).map_err(|e| {
            WorldError::Json {
                what: "encode".into(),
                path: index.clone(),
                message: e.to_string(),
            }
        })?;
    crate::fsutil::atomic_write(&index, &body).map_err(|e| WorldError::io("write", &index, e))?;
    writeln!(
        out,
        "wrote {} images of {} prompts and {}",
        entries.len(),
        list.len(),
        index.display()
    )
    .map_err(|e| WorldError::io("write", Path::new("<stdout>"), e))
}

/// Generates and writes every prompt's images; returns the index entries.
#[allow(clippy::too_many_arguments)]
fn sample_all(
    args: &SampleArgs,
    engine: &Engine,
    list: &[String],
    adapters: &[AdapterRef],
    records: &[AdapterRecord],
    steps: u32,
    bar: &ProgressBar,
    cancel: &CancelToken,
) -> Result<Vec<serde_json::Value>, WorldError> {
    let k_total = args.per_prompt;
    let chunk = crate::limits::MAX_COUNT;
    let mut entries = Vec::with_capacity(list.len() * k_total as usize);
    let mut done_steps = 0u64;
    for (i, text) in list.iter().enumerate() {
        let mut k0 = 0u32;
        while k0 < k_total {
            if cancel.is_cancelled() {
                return Err(WorldError::Cancelled);
            }
            let count = chunk.min(k_total - k0);
            let seed = args
                .seed
                .wrapping_add(i as u64 * u64::from(k_total) + u64::from(k0));
            let mut req = GenerateRequest::new(text.clone());
            req.seed = seed;
            req.steps = args.steps;
            req.guidance = args.guidance;
            req.sampler = args.sampler;
            req.width = args.width;
            req.height = args.height;
            req.count = count;
            req.adapters = adapters.to_vec();
            let label = format!("prompt {}/{}", i + 1, list.len());
            let mut on_progress = |p: crate::engine::Progress| {
                bar.set_position(done_steps + u64::from(p.step));
                bar.set_message(match p.stage {
                    Stage::EncodingPrompt => format!("{label} encode"),
                    Stage::Denoising => label.clone(),
                    Stage::Decoding => format!("{label} decode"),
                });
                true
            };
            let g = engine
                .generate(&req, &mut on_progress, cancel)
                .map_err(|e| match e {
                    EngineError::Cancelled => WorldError::Cancelled,
                    e => WorldError::Engine {
                        what: format!("prompt {} `{text}` (seed {seed}, {count} images)", i + 1),
                        source: Box::new(e),
                    },
                })?;
            done_steps += u64::from(steps);
            bar.set_position(done_steps);
            let origin = Origin {
                prompt: text.clone(),
                negative_prompt: String::new(),
                seed,
                adapters: records.to_vec(),
                bundle: engine.bundle().manifest().name.clone(),
                bundle_sha256: engine.bundle().hash().to_string(),
                init_latents_file: None,
            };
            for (b, img) in g.images.iter().enumerate() {
                let k = k0 as usize + b;
                let file = format!("{i:05}-{k}.png");
                let path = args.output.join(&file);
                write_png(&path, img, Some(&Provenance::new(&g, &origin, b)))
                    .map_err(|e| WorldError::io("write image", &path, e))?;
                entries.push(json!({
                    "file": file, "prompt": text, "split": Split::of_prompt(text).name(),
                    "seed": seed,
                }));
            }
            k0 += count;
        }
    }
    Ok(entries)
}
