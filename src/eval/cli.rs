//! `dpoimg eval` arguments and driver.
//!
//! ```text
//! dpoimg eval --prompts FILE --arm base --arm dpo=dpo.safetensors:1.0 [-n 4] [--seed 0]
//!     [--reward DIR] [--clip DIR] [--inception DIR [--fid-reference IMAGE_DIR]] [--world-check]
//!     [--blind-export DIR [--blind-key FILE] [--blind-seed N]] [--votes FILE --key FILE] -o OUT
//! dpoimg eval -o OUT --votes FILE --key FILE      # add human votes to an existing OUT/eval.json
//! ```

use super::metrics::{check_world_prompts, Clip, Fid, InceptionScore, Reward, WorldCheck};
use super::{
    apply_votes, blind_export, parse_arm, read_prompts, read_report, write_outputs, EvalConfig,
    EvalError, ImageScorer, SetMetric,
};
use crate::cancel::CancelToken;
use crate::engine::{Engine, RuntimeFlags};
use crate::metrics::{ClipScorer, FeatureStats, InceptionExtractor};
use crate::scheduler::SamplerKind;
use crate::score::{load_image, RewardModel, RgbRef, ScoreOptions};
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// Prompt file: one prompt per line, or `category<TAB>prompt`; `#` lines are comments.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Bundle directory (default: DPOIMG_BUNDLE, else the shipped bundle).
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// NAME or NAME=ADAPTER[:S][,ADAPTER[:S]]...; repeatable; no adapter = the base model.
    #[arg(long = "arm")]
    pub arms: Vec<String>,
    /// Images per prompt and arm (paired seeds across arms).
    #[arg(short = 'n', long, default_value_t = 4)]
    pub images_per_prompt: u32,
    /// Image i of prompt p uses seed + p·N + i.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    #[arg(long)]
    pub steps: Option<u32>,
    #[arg(long)]
    pub guidance: Option<f32>,
    #[arg(long)]
    pub sampler: Option<SamplerKind>,
    #[arg(long)]
    pub width: Option<u32>,
    #[arg(long)]
    pub height: Option<u32>,
    /// ImageReward bundle (reward.json).
    #[arg(long)]
    pub reward: Option<PathBuf>,
    /// CLIP metric bundle (metric.json, kind clip).
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// Inception metric bundle (metric.json, kind inception): FID and IS.
    #[arg(long)]
    pub inception: Option<PathBuf>,
    /// Folder of reference images for FID (png/jpg/webp); without it FID is between arms only.
    #[arg(long)]
    pub fid_reference: Option<PathBuf>,
    /// Shapes-world attribute checker per image: `world_check` (fraction of the prompt's
    /// attributes right) and `world_all_correct` (1/0). Every prompt must be a world prompt.
    #[arg(long)]
    pub world_check: bool,
    #[arg(long, default_value_t = 9999)]
    pub bootstrap_resamples: usize,
    #[arg(long, default_value_t = 0)]
    pub bootstrap_seed: u64,
    /// Write a blinded A/B pair set into this new directory.
    #[arg(long)]
    pub blind_export: Option<PathBuf>,
    /// Where the blind key goes (default OUT/blind-key.json); never inside the export.
    #[arg(long)]
    pub blind_key: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub blind_seed: u64,
    /// Human votes (JSONL: {"id": ..., "choice": "left"|"right"|"tie"}) to un-blind with --key.
    #[arg(long, requires = "key")]
    pub votes: Option<PathBuf>,
    /// The blind key that --blind-export wrote.
    #[arg(long, requires = "votes")]
    pub key: Option<PathBuf>,
    /// Output directory (eval.json, report.html, images/, grids/).
    #[arg(short, long, default_value = "eval")]
    pub output: PathBuf,
    #[command(flatten)]
    pub rt: RuntimeFlags,
}

/// Runs `dpoimg eval`; progress lines go to stderr, the output paths to stdout.
pub fn run(
    args: &EvalArgs,
    default_bundle: PathBuf,
    cancel: &CancelToken,
) -> Result<(), EvalError> {
    let mut log = |s: &str| eprintln!("{s}");
    let Some(prompts_path) = &args.prompts else {
        // Votes-only mode: update an existing evaluation.
        let (Some(votes), Some(key)) = (&args.votes, &args.key) else {
            return Err(EvalError::Setting { field: "prompts", message: "missing; give --prompts FILE (or --votes FILE --key FILE to add votes to OUT/eval.json)".into() });
        };
        let mut report = read_report(&args.output)?;
        apply_votes(&mut report, votes, key)?;
        write_outputs(&args.output, &report)?;
        println!("{}", args.output.join("report.html").display());
        return Ok(());
    };
    let prompts = read_prompts(prompts_path)?;
    let arms = args
        .arms
        .iter()
        .map(|a| parse_arm(a))
        .collect::<Result<Vec<_>, _>>()?;
    let score_options = ScoreOptions::from_flags(&args.rt, ScoreOptions::default().batch_size);
    // Open the metric models before generating anything: a wrong bundle fails fast.
    let metric_err = |metric: &str, e: String| EvalError::Metric {
        metric: metric.into(),
        message: e,
    };
    let reward = args
        .reward
        .as_ref()
        .map(|d| {
            RewardModel::open(d, &score_options)
                .map(Reward)
                .map_err(|e| metric_err("imagereward", e.to_string()))
        })
        .transpose()?;
    let clip = args
        .clip
        .as_ref()
        .map(|d| {
            ClipScorer::open(d, &score_options)
                .map(Clip)
                .map_err(|e| metric_err("clip_score", e.to_string()))
        })
        .transpose()?;
    let inception = args
        .inception
        .as_ref()
        .map(|d| {
            InceptionExtractor::open(d, &score_options)
                .map(std::rc::Rc::new)
                .map_err(|e| metric_err("fid", e.to_string()))
        })
        .transpose()?;
    let world = if args.world_check {
        check_world_prompts(&prompts).map_err(|e| metric_err("world_check", e))?;
        Some(WorldCheck::both())
    } else {
        None
    };
    if args.fid_reference.is_some() && inception.is_none() {
        return Err(EvalError::Setting {
            field: "fid-reference",
            message: "needs --inception DIR (the feature extractor)".into(),
        });
    }
    let bundle = args.bundle.clone().unwrap_or(default_bundle);
    let engine =
        Engine::open(&bundle, &args.rt.engine_options()).map_err(|source| EvalError::Generate {
            what: format!("opening bundle {}", bundle.display()),
            source: Box::new(source),
        })?;
    let mut cfg = EvalConfig::new(prompts, arms, &args.output);
    cfg.images_per_prompt = args.images_per_prompt;
    cfg.seed = args.seed;
    cfg.negative_prompt = args.negative_prompt.clone();
    cfg.steps = args.steps;
    cfg.guidance = args.guidance;
    cfg.sampler = args.sampler;
    cfg.width = args.width;
    cfg.height = args.height;
    cfg.bootstrap_resamples = args.bootstrap_resamples;
    cfg.bootstrap_seed = args.bootstrap_seed;

    let mut scorers: Vec<&dyn ImageScorer> = Vec::new();
    if let Some(r) = &reward {
        scorers.push(r);
    }
    if let Some(c) = &clip {
        scorers.push(c);
    }
    for w in world.iter().flatten() {
        scorers.push(w);
    }
    let mut fid_metric = None;
    let mut is_metric = None;
    if let Some(ex) = &inception {
        let reference = match &args.fid_reference {
            Some(dir) => Some(reference_stats(ex, dir)?),
            None => None,
        };
        fid_metric = Some(Fid {
            extractor: ex.clone(),
            reference,
        });
        is_metric = Some(InceptionScore(ex.clone()));
    }
    let mut sets: Vec<&dyn SetMetric> = Vec::new();
    if let Some(f) = &fid_metric {
        sets.push(f);
    }
    if let Some(i) = &is_metric {
        sets.push(i);
    }
    let mut report = super::run(&engine, &cfg, &scorers, &sets, cancel, &mut log)?;
    if let Some(dir) = &args.blind_export {
        let key_path = args
            .blind_key
            .clone()
            .unwrap_or_else(|| args.output.join("blind-key.json"));
        let key = blind_export(&args.output, &report, dir, &key_path, args.blind_seed)?;
        eprintln!(
            "blind export: {} pairs in {}, key {}",
            key.pairs.len(),
            dir.display(),
            key_path.display()
        );
    }
    if let (Some(votes), Some(key)) = (&args.votes, &args.key) {
        apply_votes(&mut report, votes, key)?;
        write_outputs(&args.output, &report)?;
    }
    println!("{}", args.output.join("eval.json").display());
    println!("{}", args.output.join("report.html").display());
    Ok(())
}

/// Inception statistics of every image in a reference folder.
fn reference_stats(
    ex: &InceptionExtractor,
    dir: &std::path::Path,
) -> Result<FeatureStats, EvalError> {
    let io = |e: String| EvalError::Io {
        path: dir.to_path_buf(),
        message: e,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io(format!("FID reference folder: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().and_then(|x| x.to_str()).is_some_and(|x| {
                ["png", "jpg", "jpeg", "webp"].contains(&x.to_ascii_lowercase().as_str())
            })
        })
        .collect();
    files.sort();
    if files.len() < 2 {
        return Err(io(format!(
            "FID reference folder holds {} images (png/jpg/webp); FID needs at least 2",
            files.len()
        )));
    }
    let images = files
        .iter()
        .map(|f| load_image(f).map_err(|e| io(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<RgbRef<'_>> = images.iter().map(RgbRef::from).collect();
    let f = ex.features(&refs).map_err(|e| io(e.to_string()))?;
    FeatureStats::from_features(&f.pool, f.pool_dim).map_err(|e| io(e.to_string()))
}
