//! `dpoimg eval`: prompts × paired seeds × arms (base and adapter sets) → images → metrics →
//! paired statistics → `eval.json` + a self-contained `report.html`, plus a blinded A/B pair set
//! for a human panel and the un-blinding of its votes.
//!
//! Design choices (documented in docs/formats.md, "Evaluation"):
//! - **Pairing.** Image `i` of prompt `p` uses seed `seed + p·N + i` in every arm, generated one
//!   image per request, so arms differ only by their adapters and each (p, i) is one paired unit.
//! - **Resume.** Images live at `images/<arm>/p<PPPP>-i<II>.png`; an existing file is reused when
//!   its provenance record equals the one this run would write (prompt, seed, adapters with their
//!   sha256 and strength, bundle sha256, sampler, steps, guidance, size), else regenerated.
//! - **Metrics.** Per-image metrics come through [`ImageScorer`] (ImageReward, CLIP score, the
//!   shapes world's checker: [`WorldCheck`]);
//!   set-level metrics (FID, IS) through [`SetMetric`]: FID of each arm against a reference
//!   image folder when one is given, and between every pair of arms otherwise (both when both).
//! - **Statistics** ([`crate::stats`]) per metric and pair of arms over the paired units:
//!   mean difference (A − B) with a BCa bootstrap 95 % CI (fixed seed), Wilcoxon signed-rank p,
//!   win rate of A over B (ties excluded) with its binomial test and Clopper-Pearson CI.

mod blind;
pub mod cli;
mod grid;
mod html;
mod input;
mod metrics;
mod report;

pub use blind::{apply_votes, blind_export, BlindKey, BlindPair, Vote};
pub use input::{check_arms, parse_arm, read_prompts, ArmAdapter, ArmSpec, PromptEntry};
pub use metrics::{check_world_prompts, world_value, WorldCheck, WorldCheckValue};
pub use report::{EvalReport, HumanPair, ImageRecord, PairStats, PromptResult, SetValue};

use crate::cancel::CancelToken;
use crate::engine::{Engine, EngineError, GenerateRequest, Image};
use crate::lora::AdapterRef;
use crate::provenance::{read_png_text, write_png, AdapterRecord, Origin, Provenance};
use crate::scheduler::SamplerKind;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Errors of the evaluation layer, each naming the input and the fix.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("prompt file {path}: {message}")]
    PromptFile { path: PathBuf, message: String },
    #[error("arm `{spec}`: {message}")]
    Arm { spec: String, message: String },
    #[error("arm `{arm}`: adapter {path}: {source}")]
    Adapter {
        arm: String,
        path: PathBuf,
        source: Box<EngineError>,
    },
    #[error("generating {what}: {source}")]
    Generate {
        what: String,
        source: Box<EngineError>,
    },
    #[error("metric `{metric}`: {message}")]
    Metric { metric: String, message: String },
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("votes {path} line {line}: {message}")]
    Votes {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("blind key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("invalid setting `{field}`: {message}")]
    Setting {
        field: &'static str,
        message: String,
    },
    #[error("statistics: {0}")]
    Stats(#[from] crate::stats::StatsError),
    #[error("cancelled")]
    Cancelled,
}

pub(crate) fn io_err(path: &Path, e: impl std::fmt::Display) -> EvalError {
    EvalError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// A per-image metric that needs the prompt: ImageReward, CLIP score. Higher is better.
pub trait ImageScorer {
    /// Key in eval.json (e.g. `imagereward`, `clip_score`).
    fn name(&self) -> &str;
    /// One score per image, in order.
    fn score(&self, prompt: &str, images: &[&Image]) -> Result<Vec<f64>, String>;
}

/// A metric of a whole image set: FID, Inception Score. Images arrive in batches (one prompt's
/// images of one arm at a time) and only their features are kept, so memory does not grow with
/// the number of images beyond the features.
pub trait SetMetric {
    fn name(&self) -> &str;
    /// Lower is better (FID) or higher (IS); shown in the report.
    fn lower_is_better(&self) -> bool;
    /// Feature rows of a batch of images, appended per arm.
    fn features(&self, images: &[&Image]) -> Result<Vec<f32>, String>;
    /// The value for one arm's features (IS; FID against the reference set), None when the
    /// metric has no per-arm value here (FID without a reference).
    fn arm_value(&self, features: &[f32]) -> Result<Option<f64>, String>;
    /// The value between two arms (FID between their sets), None when not defined (IS).
    fn pair_value(&self, a: &[f32], b: &[f32]) -> Result<Option<f64>, String>;
}

/// Everything an evaluation run needs besides the engine and the metrics.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    pub prompts: Vec<PromptEntry>,
    pub arms: Vec<ArmSpec>,
    pub images_per_prompt: u32,
    pub seed: u64,
    pub negative_prompt: String,
    pub steps: Option<u32>,
    pub guidance: Option<f32>,
    pub sampler: Option<SamplerKind>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub out_dir: PathBuf,
    pub bootstrap_resamples: usize,
    pub bootstrap_seed: u64,
    pub confidence: f64,
}

impl EvalConfig {
    pub fn new(prompts: Vec<PromptEntry>, arms: Vec<ArmSpec>, out_dir: impl Into<PathBuf>) -> Self {
        EvalConfig {
            prompts,
            arms,
            images_per_prompt: 4,
            seed: 0,
            negative_prompt: String::new(),
            steps: None,
            guidance: None,
            sampler: None,
            width: None,
            height: None,
            out_dir: out_dir.into(),
            bootstrap_resamples: 9999,
            bootstrap_seed: 0,
            confidence: 0.95,
        }
    }

    /// Seed of image `i` of prompt `p` (the same in every arm).
    pub fn seed_for(&self, p: usize, i: u32) -> u64 {
        self.seed
            .wrapping_add(p as u64 * u64::from(self.images_per_prompt) + u64::from(i))
    }
}

/// Relative path of an arm's image.
pub fn image_rel_path(arm: &str, p: usize, i: u32) -> String {
    format!("images/{arm}/p{p:04}-i{i:02}.png")
}

/// Decodes an 8-bit RGB PNG (what dpoimg writes); None for anything else.
pub(crate) fn decode_png_rgb(bytes: &[u8]) -> Option<Image> {
    let dec = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = dec.read_info().ok()?;
    let mut buf = vec![0; reader.output_buffer_size()?];
    let info = reader.next_frame(&mut buf).ok()?;
    if info.color_type != png::ColorType::Rgb || info.bit_depth != png::BitDepth::Eight {
        return None;
    }
    buf.truncate(info.buffer_size());
    Some(Image {
        width: info.width,
        height: info.height,
        rgb: buf,
    })
}

/// The record as a reader of the PNG sees it: through JSON text, as the file stores it (f32
/// fields such as a 0.8 strength print as `0.8` and read back as the f64 0.8, which is not the
/// f32's exact value that `to_value` would give).
fn provenance_json(prov: &Provenance) -> serde_json::Value {
    let text = serde_json::to_string(prov).expect("provenance serialises");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("own JSON parses");
    if let Some(o) = v.as_object_mut() {
        o.remove("software");
    }
    v
}

/// An existing image whose provenance equals `want` (software version aside).
fn reusable(path: &Path, want: &serde_json::Value) -> Option<(Image, Vec<u8>)> {
    let bytes = std::fs::read(path).ok()?;
    let text = read_png_text(&bytes).ok()?;
    let (_, json) = text.iter().find(|(k, _)| k == "dpoimg")?;
    let mut got: serde_json::Value = serde_json::from_str(json).ok()?;
    got.as_object_mut()?.remove("software");
    if &got != want {
        return None;
    }
    Some((decode_png_rgb(&bytes)?, bytes))
}

/// Runs (or resumes) an evaluation and writes `eval.json`, `report.html` and the grids.
/// `log` receives one line per notable event (generation progress, reuse counts).
pub fn run(
    engine: &Engine,
    cfg: &EvalConfig,
    scorers: &[&dyn ImageScorer],
    set_metrics: &[&dyn SetMetric],
    cancel: &CancelToken,
    log: &mut dyn FnMut(&str),
) -> Result<EvalReport, EvalError> {
    check_arms(&cfg.arms)?;
    if cfg.prompts.is_empty() {
        return Err(EvalError::Setting {
            field: "prompts",
            message: "no prompts to evaluate".into(),
        });
    }
    if !(1..=1000).contains(&cfg.images_per_prompt) {
        return Err(EvalError::Setting {
            field: "images-per-prompt",
            message: format!("{} is out of range 1..=1000", cfg.images_per_prompt),
        });
    }
    if cfg.bootstrap_resamples == 0 {
        return Err(EvalError::Setting {
            field: "bootstrap-resamples",
            message: "must be at least 1 (SciPy's default is 9999)".into(),
        });
    }
    let m = engine.bundle().manifest();
    let sampler = match cfg.sampler {
        Some(s) => s,
        None => m
            .defaults
            .sampler
            .parse::<SamplerKind>()
            .map_err(|e| EvalError::Setting {
                field: "sampler",
                message: format!("bundle default: {e}"),
            })?,
    };
    let steps = cfg.steps.unwrap_or(m.defaults.steps);
    let guidance = cfg.guidance.unwrap_or(m.defaults.guidance);
    let width = cfg.width.unwrap_or(m.defaults.width);
    let height = cfg.height.unwrap_or(m.defaults.height);

    // Load every arm's adapters first: a bad path fails before any image is made.
    let mut arm_refs: Vec<Vec<AdapterRef>> = Vec::new();
    let mut arm_records: Vec<Vec<report::ArmAdapterRecord>> = Vec::new();
    for arm in &cfg.arms {
        let mut refs = Vec::new();
        let mut recs = Vec::new();
        for a in &arm.adapters {
            let adapter = engine
                .load_adapter(&a.path)
                .map_err(|source| EvalError::Adapter {
                    arm: arm.name.clone(),
                    path: a.path.clone(),
                    source: Box::new(source),
                })?;
            recs.push(report::ArmAdapterRecord {
                path: a.path.display().to_string(),
                name: adapter.name.clone(),
                strength: a.strength,
                sha256: adapter.hash.clone(),
            });
            refs.push(AdapterRef {
                adapter,
                strength: a.strength,
            });
        }
        engine.compose(&refs).map_err(|source| EvalError::Adapter {
            arm: arm.name.clone(),
            path: arm
                .adapters
                .first()
                .map(|a| a.path.clone())
                .unwrap_or_default(),
            source: Box::new(source),
        })?;
        arm_refs.push(refs);
        arm_records.push(recs);
    }

    let n = cfg.images_per_prompt;
    // Prompt by prompt, so that only one prompt's images (arms × N) are held in memory: the
    // per-image scores, the set metrics' features and the grid are taken before moving on.
    let mut records: Vec<Vec<Vec<ImageRecord>>> = vec![Vec::new(); cfg.arms.len()]; // [arm][prompt][i]
    let mut features: Vec<Vec<Vec<f32>>> =
        vec![vec![Vec::new(); cfg.arms.len()]; set_metrics.len()]; // [metric][arm]
    let mut grids = Vec::new();
    let (mut generated, mut reused) = (0usize, 0usize);
    let total = cfg.arms.len() * cfg.prompts.len() * n as usize;
    let arm_adapters: Vec<Vec<AdapterRecord>> = arm_refs
        .iter()
        .map(|refs| {
            refs.iter()
                .map(|r| AdapterRecord {
                    name: r.adapter.name.clone(),
                    strength: r.strength,
                    sha256: r.adapter.hash.clone(),
                })
                .collect()
        })
        .collect();
    for arm in &cfg.arms {
        let dir = cfg.out_dir.join("images").join(&arm.name);
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    }
    let grid_dir = cfg.out_dir.join("grids");
    std::fs::create_dir_all(&grid_dir).map_err(|e| io_err(&grid_dir, e))?;
    for (p, entry) in cfg.prompts.iter().enumerate() {
        let mut rows: Vec<Vec<Image>> = Vec::with_capacity(cfg.arms.len());
        for (a, arm) in cfg.arms.iter().enumerate() {
            let mut row = Vec::new();
            let mut rec_row = Vec::new();
            for i in 0..n {
                if cancel.is_cancelled() {
                    return Err(EvalError::Cancelled);
                }
                let seed = cfg.seed_for(p, i);
                let rel = image_rel_path(&arm.name, p, i);
                let path = cfg.out_dir.join(&rel);
                let origin = Origin {
                    prompt: entry.prompt.clone(),
                    negative_prompt: cfg.negative_prompt.clone(),
                    seed,
                    adapters: arm_adapters[a].clone(),
                    bundle: m.name.clone(),
                    bundle_sha256: engine.bundle().hash().to_string(),
                    init_latents_file: None,
                };
                let want = Provenance {
                    software: String::new(),
                    origin: origin.clone(),
                    batch_index: 0,
                    sampler: sampler.to_string(),
                    steps,
                    guidance,
                    width,
                    height,
                };
                let (img, bytes) = match reusable(&path, &provenance_json(&want)) {
                    Some(found) => {
                        reused += 1;
                        found
                    }
                    None => {
                        let mut req = GenerateRequest::new(entry.prompt.clone());
                        req.negative_prompt = cfg.negative_prompt.clone();
                        req.seed = seed;
                        req.steps = Some(steps);
                        req.guidance = Some(guidance);
                        req.sampler = Some(sampler);
                        req.width = Some(width);
                        req.height = Some(height);
                        req.adapters = arm_refs[a].clone();
                        let g = engine
                            .generate(&req, &mut |_| true, cancel)
                            .map_err(|source| match source {
                                EngineError::Cancelled => EvalError::Cancelled,
                                source => EvalError::Generate {
                                    what: format!("arm `{}` prompt {p} image {i}", arm.name),
                                    source: Box::new(source),
                                },
                            })?;
                        let prov = Provenance::new(&g, &origin, 0);
                        let img = g.images.into_iter().next().expect("one image per request");
                        write_png(&path, &img, Some(&prov)).map_err(|e| io_err(&path, e))?;
                        let bytes = std::fs::read(&path).map_err(|e| io_err(&path, e))?;
                        generated += 1;
                        if generated % 10 == 0 {
                            log(&format!(
                                "generated {generated}, reused {reused} of {total} images"
                            ));
                        }
                        (img, bytes)
                    }
                };
                rec_row.push(ImageRecord {
                    file: rel,
                    seed,
                    sha256: crate::hash::sha256_hex(&bytes),
                    scores: BTreeMap::new(),
                });
                row.push(img);
            }
            // Per-image metrics.
            let refs: Vec<&Image> = row.iter().collect();
            for s in scorers {
                let metric_err = |message: String| EvalError::Metric {
                    metric: s.name().to_string(),
                    message,
                };
                let scores = s.score(&entry.prompt, &refs).map_err(metric_err)?;
                if scores.len() != refs.len() {
                    return Err(metric_err(format!(
                        "returned {} scores for {} images",
                        scores.len(),
                        refs.len()
                    )));
                }
                for (rec, v) in rec_row.iter_mut().zip(scores) {
                    if !v.is_finite() {
                        return Err(metric_err(format!("non-finite score {v} for {}", rec.file)));
                    }
                    rec.scores.insert(s.name().to_string(), v);
                }
            }
            for (k, sm) in set_metrics.iter().enumerate() {
                let f = sm.features(&refs).map_err(|message| EvalError::Metric {
                    metric: sm.name().to_string(),
                    message,
                })?;
                features[k][a].extend(f);
            }
            records[a].push(rec_row);
            rows.push(row);
        }
        let row_refs: Vec<&[Image]> = rows.iter().map(Vec::as_slice).collect();
        let rel = format!("grids/p{p:04}.png");
        let grid_path = cfg.out_dir.join(&rel);
        let png = grid::grid_png(&row_refs).map_err(|e| io_err(&grid_path, e))?;
        crate::fsutil::atomic_write(&grid_path, &png).map_err(|e| io_err(&grid_path, e))?;
        grids.push(rel);
    }
    log(&format!(
        "images: {generated} generated, {reused} reused (of {total})"
    ));

    // Set metrics from the accumulated features.
    let mut set_values = Vec::new();
    for (k, sm) in set_metrics.iter().enumerate() {
        let err = |message| EvalError::Metric {
            metric: sm.name().to_string(),
            message,
        };
        for (a, arm) in cfg.arms.iter().enumerate() {
            if let Some(v) = sm.arm_value(&features[k][a]).map_err(err)? {
                set_values.push(report::SetValue {
                    metric: sm.name().into(),
                    arms: vec![arm.name.clone()],
                    value: v,
                    lower_is_better: sm.lower_is_better(),
                });
            }
        }
        for a in 0..cfg.arms.len() {
            for b in a + 1..cfg.arms.len() {
                if let Some(v) = sm
                    .pair_value(&features[k][a], &features[k][b])
                    .map_err(err)?
                {
                    set_values.push(report::SetValue {
                        metric: sm.name().into(),
                        arms: vec![cfg.arms[a].name.clone(), cfg.arms[b].name.clone()],
                        value: v,
                        lower_is_better: sm.lower_is_better(),
                    });
                }
            }
        }
    }
    let settings = report::Settings {
        images_per_prompt: n,
        seed: cfg.seed,
        seed_rule: "seed + prompt_index * images_per_prompt + image_index, the same in every arm"
            .into(),
        negative_prompt: cfg.negative_prompt.clone(),
        sampler: sampler.to_string(),
        steps,
        guidance,
        width,
        height,
        bootstrap_resamples: cfg.bootstrap_resamples,
        bootstrap_seed: cfg.bootstrap_seed,
        bootstrap_method: "bca".into(),
        confidence: cfg.confidence,
    };
    let metric_names: Vec<String> = scorers.iter().map(|s| s.name().to_string()).collect();
    let arms: Vec<report::ArmRecord> = cfg
        .arms
        .iter()
        .zip(arm_records)
        .map(|(a, r)| report::ArmRecord {
            name: a.name.clone(),
            adapters: r,
        })
        .collect();
    let report = report::build(
        report::Header {
            bundle: m.name.clone(),
            bundle_sha256: engine.bundle().hash().to_string(),
            settings,
            arms,
            metrics: metric_names,
            images_generated: generated,
            images_reused: reused,
        },
        &cfg.prompts,
        records,
        grids,
        set_values,
    )?;
    write_outputs(&cfg.out_dir, &report)?;
    Ok(report)
}

/// Writes `eval.json` and `report.html` (atomically) into `dir`.
pub fn write_outputs(dir: &Path, report: &EvalReport) -> Result<(), EvalError> {
    let json = serde_json::to_vec_pretty(report).expect("report serialises");
    let p = dir.join("eval.json");
    crate::fsutil::atomic_write(&p, &json).map_err(|e| io_err(&p, e))?;
    let html = html::render(dir, report);
    let p = dir.join("report.html");
    crate::fsutil::atomic_write(&p, html.as_bytes()).map_err(|e| io_err(&p, e))?;
    Ok(())
}

/// Reads an `eval.json` written by [`run`].
pub fn read_report(dir: &Path) -> Result<EvalReport, EvalError> {
    let p = dir.join("eval.json");
    let bytes = std::fs::read(&p)
        .map_err(|e| io_err(&p, format!("{e}; run `dpoimg eval` with --prompts first")))?;
    let r: EvalReport = serde_json::from_slice(&bytes)
        .map_err(|e| io_err(&p, format!("not a dpoimg eval.json: {e}")))?;
    if r.format != report::FORMAT || r.version != report::VERSION {
        return Err(io_err(
            &p,
            format!(
                "format {} v{} is not {} v{}",
                r.format,
                r.version,
                report::FORMAT,
                report::VERSION
            ),
        ));
    }
    Ok(r)
}
