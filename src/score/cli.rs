//! `dpoimg score`: ImageReward scores of image files, as a table or JSON.
//!
//! ```text
//! dpoimg score --reward DIR PROMPT IMAGE...          # one prompt, several images
//! dpoimg score --reward DIR --prompts FILE IMAGE_DIR  # FILE: `file<TAB>prompt` lines
//! dpoimg score --reward DIR IMAGE_DIR                 # prompts from dpoimg PNG provenance
//! ```
//!
//! The prompts file is UTF-8 TSV: one `file<TAB>prompt` per line, `file` relative to IMAGE_DIR,
//! the prompt the rest of the line (it may contain tabs); blank lines and lines starting with `#`
//! are skipped. Every image file in IMAGE_DIR (`.png`, `.jpg`, `.jpeg`, `.webp`) must have a line
//! and every line a file: a mismatch is an error listing the files, never a silent skip.

use super::{load_image, RewardModel, RgbRef, ScoreError, ScoreOptions};
use crate::engine::RuntimeFlags;
use clap::builder::TypedValueParser as _;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Arguments of `dpoimg score`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScoreArgs {
    /// Reward bundle directory (reward.json; tools/export_imagereward.py makes one). Required
    /// locally; with `dpoimg --socket` the daemon's `--reward` bundle scores, and this, if given,
    /// must be that same bundle.
    #[arg(
        long,
        value_parser = clap::builder::OsStringValueParser::new().map(PathBuf::from),
        default_value = "",
        hide_default_value = true
    )]
    pub reward: PathBuf,
    /// `file<TAB>prompt` lines for the images of IMAGE_DIR.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// PROMPT IMAGE..., or IMAGE_DIR (with --prompts, or PNGs with dpoimg provenance).
    #[arg(required = true)]
    pub args: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Images per ONNX Runtime run.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[command(flatten)]
    pub rt: RuntimeFlags,
}

/// One scored image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScoredImage {
    pub image: PathBuf,
    pub prompt: String,
    pub score: f32,
}

const IMAGE_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];

/// (image, prompt) pairs the arguments name, in a stable order.
pub fn collect_jobs(args: &ScoreArgs) -> Result<Vec<(PathBuf, String)>, ScoreError> {
    let input = |m: String| ScoreError::Input(m);
    if let Some(pf) = &args.prompts {
        let [dir] = args.args.as_slice() else {
            return Err(input(format!(
                "with --prompts, give exactly one IMAGE_DIR (got {} arguments: {:?})",
                args.args.len(),
                args.args
            )));
        };
        let dir = Path::new(dir);
        let listed = read_prompts_file(pf)?;
        let present = image_files(dir)?;
        let missing: Vec<&String> = listed.keys().filter(|f| !dir.join(f).is_file()).collect();
        if !missing.is_empty() {
            return Err(input(format!(
                "{}: {} listed image(s) missing from {}: {}. Fix: restore them or remove their lines",
                pf.display(),
                missing.len(),
                dir.display(),
                missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        let unlisted: Vec<String> = present
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .filter(|n| !listed.contains_key(n))
            .collect();
        if !unlisted.is_empty() {
            return Err(input(format!(
                "{} has {} image(s) with no prompt in {} ({} line(s) for {} image(s)): {}. Fix: add a `file<TAB>prompt` line for each",
                dir.display(),
                unlisted.len(),
                pf.display(),
                listed.len(),
                present.len(),
                unlisted.join(", ")
            )));
        }
        return Ok(listed.into_iter().map(|(f, p)| (dir.join(f), p)).collect());
    }
    match args.args.as_slice() {
        [single] if Path::new(single).is_dir() => {
            let dir = Path::new(single);
            let files = image_files(dir)?;
            if files.is_empty() {
                return Err(input(format!(
                    "{}: no .png/.jpg/.jpeg/.webp images",
                    dir.display()
                )));
            }
            files
                .into_iter()
                .map(|f| {
                    let prompt = provenance_prompt(&f)?;
                    Ok((f, prompt))
                })
                .collect()
        }
        [_prompt] => Err(input(
            "no images: give PROMPT IMAGE..., or --prompts FILE IMAGE_DIR".into(),
        )),
        [prompt, images @ ..] => Ok(images
            .iter()
            .map(|i| (PathBuf::from(i), prompt.clone()))
            .collect()),
        [] => Err(input("no arguments".into())),
    }
}

/// Parses the `file<TAB>prompt` file into file → prompt.
pub fn read_prompts_file(path: &Path) -> Result<BTreeMap<String, String>, ScoreError> {
    let text = std::fs::read_to_string(path).map_err(|e| ScoreError::ImageFile {
        path: path.to_path_buf(),
        message: format!("cannot read the prompts file: {e}"),
    })?;
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((file, prompt)) = line.split_once('\t') else {
            return Err(ScoreError::Input(format!(
                "{}:{}: expected `file<TAB>prompt`, found no tab",
                path.display(),
                n + 1
            )));
        };
        let file = file.trim();
        if file.is_empty() || Path::new(file).is_absolute() || file.contains("..") {
            return Err(ScoreError::Input(format!(
                "{}:{}: `{file}` must be a file name relative to the image directory",
                path.display(),
                n + 1
            )));
        }
        if out.insert(file.to_string(), prompt.to_string()).is_some() {
            return Err(ScoreError::Input(format!(
                "{}:{}: `{file}` is listed twice",
                path.display(),
                n + 1
            )));
        }
    }
    Ok(out)
}

fn image_files(dir: &Path) -> Result<Vec<PathBuf>, ScoreError> {
    let rd = std::fs::read_dir(dir).map_err(|e| ScoreError::ImageFile {
        path: dir.to_path_buf(),
        message: format!("cannot list the image directory: {e}"),
    })?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// The `prompt` text chunk dpoimg writes into its PNGs.
fn provenance_prompt(path: &Path) -> Result<String, ScoreError> {
    let bytes = std::fs::read(path).map_err(|e| ScoreError::ImageFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let chunks = crate::provenance::read_png_text(&bytes).unwrap_or_default();
    chunks
        .into_iter()
        .find(|(k, _)| k == "prompt")
        .map(|(_, v)| v)
        .ok_or_else(|| {
            ScoreError::Input(format!(
                "{}: no prompt (not a dpoimg PNG with provenance). Fix: pass --prompts FILE with `file<TAB>prompt` lines",
                path.display()
            ))
        })
}

/// Scores every (image, prompt) pair, batching the images of each prompt.
pub fn score_files(
    model: &RewardModel,
    jobs: &[(PathBuf, String)],
) -> Result<Vec<ScoredImage>, ScoreError> {
    // Decode everything first: a missing or unreadable file fails before any inference.
    let images = jobs
        .iter()
        .map(|(p, _)| load_image(p))
        .collect::<Result<Vec<_>, _>>()?;
    let prompts: Vec<&str> = jobs.iter().map(|(_, p)| p.as_str()).collect();
    let refs: Vec<RgbRef<'_>> = images.iter().map(RgbRef::from).collect();
    let scores = score_grouped(model, &prompts, &refs)?;
    Ok(jobs
        .iter()
        .zip(scores)
        .map(|((image, prompt), score)| ScoredImage {
            image: image.clone(),
            prompt: prompt.clone(),
            score,
        })
        .collect())
}

/// Scores `images[i]` for `prompts[i]`, running the images of each prompt together (in
/// `batch_size` chunks). `dpoimg score` and the daemon's `/v1/score` share this grouping, so both
/// run the same batches and print the same numbers.
pub fn score_grouped(
    model: &RewardModel,
    prompts: &[&str],
    images: &[RgbRef<'_>],
) -> Result<Vec<f32>, ScoreError> {
    if prompts.len() != images.len() {
        return Err(ScoreError::Input(format!(
            "{} prompts for {} images",
            prompts.len(),
            images.len()
        )));
    }
    let mut by_prompt: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, p) in prompts.iter().enumerate() {
        by_prompt.entry(p).or_default().push(i);
    }
    let mut scores = vec![0f32; prompts.len()];
    for (prompt, idx) in by_prompt {
        let refs: Vec<RgbRef<'_>> = idx.iter().map(|&i| images[i]).collect();
        for (k, s) in idx.iter().zip(model.score(prompt, &refs)?) {
            scores[*k] = s;
        }
    }
    Ok(scores)
}

/// Prints results as `dpoimg score` does (a table, or `--json`); `dpoimg --socket` prints the
/// daemon's scores through this too, so both outputs have one shape.
pub fn write_results(
    out: &mut dyn Write,
    reward_name: &str,
    reward_dir: &Path,
    results: &[ScoredImage],
    json: bool,
) -> Result<(), ScoreError> {
    let mean = results.iter().map(|r| r.score as f64).sum::<f64>() / results.len().max(1) as f64;
    let io = |e: std::io::Error| ScoreError::Input(format!("writing the output: {e}"));
    if json {
        let v = serde_json::json!({
            "reward": reward_name,
            "reward_dir": reward_dir,
            "count": results.len(),
            "mean": mean,
            "results": results,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v).expect("JSON")).map_err(io)?;
    } else {
        writeln!(out, "score\timage\tprompt").map_err(io)?;
        for r in results {
            writeln!(out, "{:.6}\t{}\t{}", r.score, r.image.display(), r.prompt).map_err(io)?;
        }
        writeln!(
            out,
            "# {} image(s), mean {mean:.6} ({reward_name})",
            results.len(),
        )
        .map_err(io)?;
    }
    Ok(())
}

/// Runs the command, printing to `out`.
pub fn run(args: &ScoreArgs, out: &mut dyn Write) -> Result<(), ScoreError> {
    if args.reward.as_os_str().is_empty() {
        return Err(ScoreError::Input(
            "no reward bundle: pass --reward DIR (a directory with reward.json; tools/export_imagereward.py makes one), or score through a daemon started with `dpoimgd --reward DIR` using --socket PATH".into(),
        ));
    }
    let jobs = collect_jobs(args)?;
    let options = ScoreOptions::from_flags(&args.rt, args.batch_size);
    options.check()?;
    let model = RewardModel::open(&args.reward, &options)?;
    let results = score_files(&model, &jobs)?;
    write_results(
        out,
        &model.manifest().name,
        model.dir(),
        &results,
        args.json,
    )
}
