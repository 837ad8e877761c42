//! `dpoimg world`: the world's prompts, renderer, checker and annotators on the command line, so
//! that `tools/` scripts (Python training code) use this implementation instead of their own.
//!
//! ```text
//! dpoimg world prompts [--count N] [--seed S] [--split train|validation|test|all] [--two-prob P] [--json]
//! dpoimg world render (--prompt TEXT... | --prompts FILE) [--per-prompt K] [--seed S] [--size 32] [--supersample 4] -o DIR
//! dpoimg world check (--prompt TEXT IMAGE... | --index DIR/index.json)
//! dpoimg world annotate --index DIR/index.json -o DATASET [--temperature 0.1] [--raters 8] [--rater-spread 0.5] [--seed 0]
//! dpoimg world sample --bundle DIR (--prompts FILE | --split S --count N [--prompt-seed S]) --per-prompt K [--seed S] -o DIR
//! ```
//!
//! `sample` ([`super::sample`]) writes a model's images in `render`'s layout (index entries
//! without `layout`).
//!
//! `render` writes `DIR/{prompt:05}-{k}.png` and `DIR/index.json`
//! (`{"version": 1, "images": [{"file", "prompt", "split", "seed", "layout": {...}}]}`, files
//! relative to DIR); image k of prompt i uses seed `seed + i·K + k`. Any tool can write an
//! index of the same shape (only `file` and `prompt` are read) for its own samples, and then
//! `check` scores them and `annotate` turns them into an ImageRewardDB dataset. `check` prints one
//! JSON object: per image the verdicts, graded score and what was read, and a summary with the
//! all-correct rate and per-attribute accuracy.

use super::annotate::{write_imagereward, AnnotatorModel, PromptGroup};
use super::check::{check, Attribute, CheckResult, Reading};
use super::render::{encode_png, render_prompt, Layout, RenderOptions};
use super::scene::{PromptSampler, Scene, Split};
use super::WorldError;
use crate::data::RgbImage;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum WorldCommand {
    /// Print distinct prompts of the world's grammar (deterministic for a seed).
    ///
    /// Grammar: `a [small|large] COLOUR SHAPE [in the center | at the POSITION] [on a BG
    /// background]` or `a COLOUR SHAPE (left of|right of|above|below) a COLOUR SHAPE [on a BG
    /// background]`; COLOUR: red green blue yellow purple cyan; SHAPE: circle square triangle;
    /// POSITION: top left, top, top right, left, right, bottom left, bottom, bottom right; BG: a
    /// colour or white, black, gray, different from the objects'. Two objects differ in colour.
    Prompts {
        #[arg(long, default_value_t = 100)]
        count: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// train, validation, test or all.
        #[arg(long, default_value = "all")]
        split: String,
        /// Probability of a two-object prompt.
        #[arg(long, default_value_t = 0.2)]
        two_prob: f64,
        /// One JSON object per line (prompt, split, kind) instead of plain text.
        #[arg(long)]
        json: bool,
    },
    /// Render images of prompts to PNG files plus index.json.
    Render {
        /// A prompt (repeatable).
        #[arg(long = "prompt")]
        prompt: Vec<String>,
        /// A file with one prompt per line (blank lines and `#` lines skipped).
        #[arg(long)]
        prompts: Option<PathBuf>,
        /// Images per prompt.
        #[arg(long, default_value_t = 1)]
        per_prompt: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Width and height in pixels.
        #[arg(long, default_value_t = 32)]
        size: u32,
        /// Samples per pixel along each axis (anti-aliasing).
        #[arg(long, default_value_t = 4)]
        supersample: u32,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Check images against prompts with the attribute checker (JSON output).
    Check {
        /// The prompt of the IMAGE arguments.
        #[arg(long)]
        prompt: Option<String>,
        /// An index.json (as `render` writes) naming files and their prompts.
        #[arg(long)]
        index: Option<PathBuf>,
        images: Vec<PathBuf>,
    },
    /// Rank each prompt's images with simulated annotators and write an ImageRewardDB folder.
    Annotate {
        /// index.json naming the images (4 to 9 per prompt).
        #[arg(long)]
        index: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long, default_value_t = 0.1)]
        temperature: f64,
        #[arg(long, default_value_t = 8)]
        raters: usize,
        #[arg(long, default_value_t = 0.5)]
        rater_spread: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Generate K images per world prompt with a bundle into PNG files plus index.json (as
    /// `render` writes), for `check --index` and `annotate --index`.
    Sample(super::sample::SampleArgs),
}

fn out_err(e: std::io::Error) -> WorldError {
    WorldError::io("write", Path::new("<stdout>"), e)
}

/// Runs a `dpoimg world` subcommand, writing its report to `out`.
pub fn run(cmd: &WorldCommand, out: &mut dyn Write) -> Result<(), WorldError> {
    run_cancellable(cmd, out, &crate::cancel::CancelToken::new())
}

/// [`run`], with a token that stops `sample` between denoising steps (the other subcommands
/// are quick and ignore it).
pub fn run_cancellable(
    cmd: &WorldCommand,
    out: &mut dyn Write,
    cancel: &crate::cancel::CancelToken,
) -> Result<(), WorldError> {
    match cmd {
        WorldCommand::Sample(args) => super::sample::run(args, out, cancel),
        WorldCommand::Prompts {
            count,
            seed,
            split,
            two_prob,
            json,
        } => {
            let split = parse_split(split)?;
            let sampler = PromptSampler {
                seed: *seed,
                two_prob: *two_prob,
                ..Default::default()
            };
            for s in sampler.distinct(split, *count)? {
                let text = s.to_string();
                if *json {
                    let kind = if matches!(s, Scene::One { .. }) {
                        "one"
                    } else {
                        "two"
                    };
                    let v = json!({"prompt": text, "split": Split::of_prompt(&text).name(), "kind": kind});
                    writeln!(out, "{v}").map_err(out_err)?;
                } else {
                    writeln!(out, "{text}").map_err(out_err)?;
                }
            }
            Ok(())
        }
        WorldCommand::Render {
            prompt,
            prompts,
            per_prompt,
            seed,
            size,
            supersample,
            output,
        } => {
            let mut list = prompt.clone();
            if let Some(f) = prompts {
                let text = std::fs::read_to_string(f).map_err(|e| WorldError::io("read", f, e))?;
                list.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_string),
                );
            }
            if list.is_empty() {
                return Err(WorldError::Option {
                    name: "prompts".into(),
                    value: "none".into(),
                    problem: "give --prompt TEXT or --prompts FILE".into(),
                });
            }
            if *per_prompt == 0 || *per_prompt > 1000 {
                return Err(WorldError::Option {
                    name: "per-prompt".into(),
                    value: per_prompt.to_string(),
                    problem: "use 1 to 1000 images per prompt".into(),
                });
            }
            let opts = RenderOptions {
                size: *size,
                supersample: *supersample,
            };
            opts.validate()?;
            let scenes: Vec<Scene> = list
                .iter()
                .map(|p| Scene::parse(p))
                .collect::<Result<_, _>>()?;
            std::fs::create_dir_all(output)
                .map_err(|e| WorldError::io("create folder", output, e))?;
            let mut entries = Vec::new();
            for (i, (text, scene)) in list.iter().zip(&scenes).enumerate() {
                for k in 0..*per_prompt {
                    let s = seed.wrapping_add((i * per_prompt + k) as u64);
                    let (layout, img) = render_prompt(scene, s, &opts)?;
                    let file = format!("{i:05}-{k}.png");
                    let path = output.join(&file);
                    crate::fsutil::atomic_write(&path, &encode_png(&img)?)
                        .map_err(|e| WorldError::io("write image", &path, e))?;
                    entries.push(json!({
                        "file": file, "prompt": text, "split": Split::of_prompt(text).name(),
                        "seed": s, "layout": layout_json(&layout),
                    }));
                }
            }
            let index = output.join("index.json");
            let body = serde_json::to_vec_pretty(&json!({"version": 1, "images": entries}))
                .map_err(|e| WorldError::Json {
                    what: "encode".into(),
                    path: index.clone(),
                    message: e.to_string(),
                })?;
            crate::fsutil::atomic_write(&index, &body)
                .map_err(|e| WorldError::io("write", &index, e))?;
            writeln!(
                out,
                "wrote {} images and {}",
                entries.len(),
                index.display()
            )
            .map_err(out_err)
        }
        WorldCommand::Check {
            prompt,
            index,
            images,
        } => {
            let items: Vec<(PathBuf, String)> = match (prompt, index) {
                (Some(p), None) if !images.is_empty() => {
                    images.iter().map(|i| (i.clone(), p.clone())).collect()
                }
                (None, Some(ix)) if images.is_empty() => read_index(ix)?,
                _ => {
                    return Err(WorldError::Option {
                        name: "arguments".into(),
                        value: "check".into(),
                        problem: "give either --prompt TEXT IMAGE... or --index FILE (not both)"
                            .into(),
                    })
                }
            };
            let mut rows = Vec::new();
            let mut judged: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
            let (mut all, mut score_sum) = (0usize, 0.0);
            for (path, text) in &items {
                let scene = Scene::parse(text)?;
                let img = load(path)?;
                let r = check(&scene, &img).map_err(|e| WorldError::Image {
                    what: path.display().to_string(),
                    problem: e.to_string(),
                })?;
                for (a, ok) in &r.attributes {
                    let e = judged.entry(a.name()).or_insert((0, 0));
                    e.0 += 1;
                    e.1 += *ok as usize;
                }
                all += r.all_correct as usize;
                score_sum += r.score;
                rows.push(result_json(path, text, &r));
            }
            let n = items.len().max(1) as f64;
            let per_attr: serde_json::Map<String, Value> = judged
                .iter()
                .map(|(k, (j, c))| {
                    (
                        k.to_string(),
                        json!({"judged": j, "accuracy": *c as f64 / *j as f64}),
                    )
                })
                .collect();
            let v = json!({
                "images": rows,
                "summary": {"images": items.len(), "all_correct": all as f64 / n,
                            "mean_score": score_sum / n, "attributes": per_attr},
            });
            writeln!(out, "{v}").map_err(out_err)
        }
        WorldCommand::Annotate {
            index,
            output,
            temperature,
            raters,
            rater_spread,
            seed,
        } => {
            let items = read_index(index)?;
            let mut groups: Vec<PromptGroup> = Vec::new();
            let mut at: BTreeMap<String, usize> = BTreeMap::new();
            for (path, text) in &items {
                let key = Scene::parse(text)?.to_string();
                let g = *at.entry(key).or_insert_with(|| {
                    groups.push(PromptGroup {
                        prompt: text.clone(),
                        images: Vec::new(),
                        text_chunks: Vec::new(),
                    });
                    groups.len() - 1
                });
                let (image, text) = load_with_text(path)?;
                groups[g].images.push(image);
                groups[g].text_chunks.push(text);
            }
            let model = AnnotatorModel {
                temperature: *temperature,
                raters: *raters,
                rater_spread: *rater_spread,
                seed: *seed,
                ..Default::default()
            };
            let summary = write_imagereward(output, &groups, &model)?;
            let splits: serde_json::Map<String, Value> = summary
                .splits
                .iter()
                .map(|(s, c)| {
                    (
                        s.name().to_string(),
                        json!({"prompts": c.prompts, "rows": c.rows, "pairs": c.pairs, "ties": c.ties}),
                    )
                })
                .collect();
            let v = json!({"root": output.display().to_string(), "splits": splits,
                           "rater_temperatures": summary.rater_temperatures});
            writeln!(out, "{v}").map_err(out_err)
        }
    }
}

pub(super) fn parse_split(s: &str) -> Result<Option<Split>, WorldError> {
    if s == "all" {
        return Ok(None);
    }
    Split::from_name(s)
        .map(Some)
        .ok_or_else(|| WorldError::Option {
            name: "split".into(),
            value: s.into(),
            problem: "use train, validation, test or all".into(),
        })
}

fn load(path: &Path) -> Result<RgbImage, WorldError> {
    read_image(path).map(|(image, _)| image)
}

/// An image and its PNG text chunks (a sampled image's provenance), which `annotate` copies into
/// the dataset. A JPEG or WebP file has none (as `score` reads them).
fn load_with_text(path: &Path) -> Result<(RgbImage, Vec<(String, String)>), WorldError> {
    let (image, bytes) = read_image(path)?;
    let text = crate::provenance::read_png_text(&bytes).unwrap_or_default();
    Ok((image, text))
}

/// A decoded image file and its bytes.
fn read_image(path: &Path) -> Result<(RgbImage, Vec<u8>), WorldError> {
    let bytes = std::fs::read(path).map_err(|e| WorldError::io("read image", path, e))?;
    let image = crate::data::decode_rgb8(&bytes).map_err(|problem| WorldError::Image {
        what: path.display().to_string(),
        problem,
    })?;
    Ok((image, bytes))
}

/// (image path, prompt) pairs of an index.json; files relative to its folder.
pub fn read_index(path: &Path) -> Result<Vec<(PathBuf, String)>, WorldError> {
    let bad = |message: String| WorldError::Json {
        what: "index".into(),
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| WorldError::io("read", path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let images = v
        .get("images")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("expected {\"images\": [{\"file\", \"prompt\"}, ...]}".into()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    images
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let file = e.get("file").and_then(Value::as_str);
            let prompt = e.get("prompt").and_then(Value::as_str);
            match (file, prompt) {
                (Some(f), Some(p)) => Ok((dir.join(f), p.to_string())),
                _ => Err(bad(format!(
                    "images[{i}] needs string fields `file` and `prompt`"
                ))),
            }
        })
        .collect()
}

/// A layout as JSON (colour, shape, centre and side of each object in 32-unit canvas units).
pub fn layout_json(l: &Layout) -> Value {
    let objects: Vec<Value> = l
        .objects
        .iter()
        .map(|o| {
            json!({"color": o.object.color.name(), "shape": o.object.shape.name(),
                   "cx": o.cx, "cy": o.cy, "side": o.side})
        })
        .collect();
    json!({
        "background": l.background.name(),
        "size": l.size.map(|s| s.name()),
        "position": l.position.map(|p| p.name()),
        "objects": objects,
    })
}

fn reading_json(r: &Reading) -> Value {
    let objects: Vec<Value> = r
        .objects
        .iter()
        .map(|o| {
            json!({"color": o.color.name(), "shape": o.shape.name(), "size": o.size.name(),
                   "position": o.position.name(), "cx": o.cx, "cy": o.cy, "width": o.width,
                   "height": o.height, "pixels": o.pixels, "fill": o.fill,
                   "skew": o.skew})
        })
        .collect();
    json!({"background": r.background.name(), "objects": objects})
}

fn result_json(path: &Path, prompt: &str, r: &CheckResult) -> Value {
    let attrs: serde_json::Map<String, Value> = Attribute::ALL
        .iter()
        .filter_map(|a| r.get(*a).map(|ok| (a.name().to_string(), Value::Bool(ok))))
        .collect();
    json!({"file": path.display().to_string(), "prompt": prompt, "all_correct": r.all_correct,
           "score": r.score, "attributes": attrs, "reading": reading_json(&r.reading)})
}
