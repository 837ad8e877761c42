//! Simulated annotators and the ImageRewardDB writer.
//!
//! **Model of rater disagreement.** A pool of `raters` raters; rater r has a temperature
//! `T_r = temperature · exp(rater_spread · z_r)`, `z_r ~ N(0, 1)` (some raters are careful, some
//! sloppy). Each prompt is ranked by one rater of the pool, picked by a hash of the prompt (as in
//! ImageRewardDB, where one annotator ranks all images of a prompt). The rater perceives image i
//! with checker score `s_i` as `u_i = s_i / T_r + g_i`, `g_i` standard Gumbel, and orders images
//! by `u`: a Plackett–Luce ranking whose pairwise marginals are Bradley–Terry,
//! `P(i above j) = σ((s_i − s_j) / T_r)` (tested). Neighbours in that order whose checker scores
//! differ by at most `tie_margin` share a rank — a rater does not separate two equally good
//! images — so equal-score images become ImageRewardDB ties, which the loader skips.
//!
//! **Layout written** (the real THUDM/ImageRewardDB one, read by [`crate::data::imagereward`]):
//! `metadata-{train,validation,test}.parquet` with one row per image — `image_path`,
//! `prompt_id`, `prompt`, `classification`, `image_amount_in_total`, `rank` (1 = best), plus two
//! columns ImageRewardDB does not have, `checker_score` and `rater`, for analysis — and the
//! images as PNG files at `images/{split}/{split}_{part}/{prompt_id}-{k}.png` (500 prompts per
//! part folder), each carrying its source image's PNG text chunks (a sampled image's provenance:
//! prompt, seed, sampler, steps, guidance, bundle hash). Splits are by prompt
//! ([`Split::of_prompt`]).

use super::check::check;
use super::render::encode_png_with_text;
use super::rng::WorldRng;
use super::scene::{Scene, Split};
use super::WorldError;
use crate::data::RgbImage;
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Parameters of the simulated annotators (module docs).
#[derive(Debug, Clone)]
pub struct AnnotatorModel {
    /// Typical temperature, in checker-score units: 0.1 means a 0.1 score gap is preferred
    /// σ(1) = 73 % of the time.
    pub temperature: f64,
    /// Raters in the pool.
    pub raters: usize,
    /// Log-normal spread of the raters' temperatures.
    pub rater_spread: f64,
    /// Adjacent images whose scores differ by at most this tie.
    pub tie_margin: f64,
    pub seed: u64,
}

impl Default for AnnotatorModel {
    fn default() -> Self {
        AnnotatorModel {
            temperature: 0.1,
            raters: 8,
            rater_spread: 0.5,
            tie_margin: 1e-9,
            seed: 0,
        }
    }
}

const RATER_STREAM: u64 = 3;
const RANK_STREAM: u64 = 4;

fn prompt_key(prompt: &str) -> u64 {
    let d = crate::hash::sha256_hex(prompt.as_bytes());
    u64::from_str_radix(&d[..16], 16).unwrap_or(0)
}

impl AnnotatorModel {
    pub fn validate(&self) -> Result<(), WorldError> {
        let bad = |name: &str, value: String, problem: &str| WorldError::Option {
            name: name.into(),
            value,
            problem: problem.into(),
        };
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(bad(
                "temperature",
                self.temperature.to_string(),
                "must be a positive number (0.1 = a 0.1 score gap is preferred 73 % of the time)",
            ));
        }
        if self.raters == 0 || self.raters > 10_000 {
            return Err(bad(
                "raters",
                self.raters.to_string(),
                "use 1 to 10000 raters",
            ));
        }
        if !(self.rater_spread.is_finite() && (0.0..=5.0).contains(&self.rater_spread)) {
            return Err(bad(
                "rater_spread",
                self.rater_spread.to_string(),
                "must be in 0..=5",
            ));
        }
        if !(self.tie_margin.is_finite() && (0.0..1.0).contains(&self.tie_margin)) {
            return Err(bad(
                "tie_margin",
                self.tie_margin.to_string(),
                "must be in 0..1",
            ));
        }
        Ok(())
    }

    /// Each rater's temperature.
    pub fn rater_temperatures(&self) -> Vec<f64> {
        let mut r = WorldRng::for_item(self.seed, RATER_STREAM, 0);
        (0..self.raters)
            .map(|_| self.temperature * (self.rater_spread * r.normal()).exp())
            .collect()
    }

    /// Ranks (1 = best, ties share a rank) of images with checker `scores` for `prompt`, by the
    /// rater the prompt is assigned to; returns (rater, ranks). `draw` selects an independent
    /// repetition (0 for datasets; tests draw many).
    pub fn rank(&self, prompt: &str, scores: &[f64], draw: u64) -> (usize, Vec<i64>) {
        let temps = self.rater_temperatures();
        let key = prompt_key(prompt);
        let mut r = WorldRng::for_item(self.seed ^ key, RANK_STREAM, draw);
        let rater = r.below(temps.len());
        let t = temps[rater];
        let u: Vec<f64> = scores.iter().map(|s| s / t + r.gumbel()).collect();
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| u[b].total_cmp(&u[a]).then(a.cmp(&b)));
        let mut ranks = vec![0i64; scores.len()];
        let mut rank = 0i64;
        for (k, &i) in order.iter().enumerate() {
            if k == 0 || (scores[i] - scores[order[k - 1]]).abs() > self.tie_margin {
                rank += 1;
            }
            ranks[i] = rank;
        }
        (rater, ranks)
    }
}

/// A prompt and the images generated for it (4 to 9, like ImageRewardDB).
#[derive(Debug, Clone)]
pub struct PromptGroup {
    pub prompt: String,
    pub images: Vec<RgbImage>,
    /// PNG text chunks of each image (empty, or one list per image), written into the dataset's
    /// copy, so a preference set keeps how its images were sampled (guidance, steps, seed,
    /// bundle hash) where `dpoimg info IMAGE` reads it.
    pub text_chunks: Vec<Vec<(String, String)>>,
}

/// One written image row.
#[derive(Debug, Clone)]
pub struct WrittenRow {
    pub split: Split,
    pub prompt_id: String,
    pub prompt: String,
    pub image_path: String,
    pub rank: i64,
    pub checker_score: f64,
    pub all_correct: bool,
    pub rater: usize,
}

/// Counts per split.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SplitCounts {
    pub prompts: usize,
    pub rows: usize,
    /// Image pairs of one prompt with different ranks (what the loader turns into pairs).
    pub pairs: usize,
    /// Image pairs of one prompt with equal ranks.
    pub ties: usize,
}

/// What [`write_imagereward`] wrote.
#[derive(Debug, Clone)]
pub struct DatasetSummary {
    pub root: PathBuf,
    pub splits: BTreeMap<Split, SplitCounts>,
    pub rows: Vec<WrittenRow>,
    pub rater_temperatures: Vec<f64>,
}

/// Fewest and most images per prompt (ImageRewardDB's range).
pub const IMAGES_PER_PROMPT: std::ops::RangeInclusive<usize> = 4..=9;
const PROMPTS_PER_PART: usize = 500;

/// Scores every image with the checker, ranks each group with the simulated annotators and
/// writes the ImageRewardDB layout into `root`, which must not exist or be empty.
pub fn write_imagereward(
    root: &Path,
    groups: &[PromptGroup],
    model: &AnnotatorModel,
) -> Result<DatasetSummary, WorldError> {
    model.validate()?;
    if root.exists() {
        let mut entries = std::fs::read_dir(root).map_err(|e| WorldError::io("list", root, e))?;
        if entries.next().is_some() {
            return Err(WorldError::Dataset {
                problem: format!("{} exists and is not empty", root.display()),
                fix: "write into a new folder (old images would mix with the new ones)".into(),
            });
        }
    }
    // Validate everything before writing anything.
    let mut seen = HashSet::new();
    let mut scenes = Vec::with_capacity(groups.len());
    for (g, group) in groups.iter().enumerate() {
        let scene = Scene::parse(&group.prompt)?;
        if !seen.insert(scene.to_string()) {
            return Err(WorldError::Dataset {
                problem: format!("prompt `{}` (group {g}) appears twice", group.prompt),
                fix: "put all images of one prompt into one group".into(),
            });
        }
        if !IMAGES_PER_PROMPT.contains(&group.images.len()) {
            return Err(WorldError::Dataset {
                problem: format!(
                    "prompt `{}` has {} images",
                    group.prompt,
                    group.images.len()
                ),
                fix: "give every prompt 4 to 9 images, as ImageRewardDB does".into(),
            });
        }
        if !group.text_chunks.is_empty() && group.text_chunks.len() != group.images.len() {
            return Err(WorldError::Dataset {
                problem: format!(
                    "prompt `{}` has {} images but {} lists of text chunks",
                    group.prompt,
                    group.images.len(),
                    group.text_chunks.len()
                ),
                fix: "give one list of text chunks per image, or none".into(),
            });
        }
        scenes.push(scene);
    }
    let temps = model.rater_temperatures();
    let mut splits: BTreeMap<Split, SplitCounts> = Split::ALL
        .iter()
        .map(|&s| (s, SplitCounts::default()))
        .collect();
    let mut rows = Vec::new();
    for (g, (group, scene)) in groups.iter().zip(&scenes).enumerate() {
        let split = Split::of_prompt(&group.prompt);
        let mut results = Vec::with_capacity(group.images.len());
        for (k, img) in group.images.iter().enumerate() {
            results.push(check(scene, img).map_err(|e| WorldError::Dataset {
                problem: format!("image {k} of prompt `{}`: {e}", group.prompt),
                fix: "pass 8-bit RGB images".into(),
            })?);
        }
        let scores: Vec<f64> = results.iter().map(|r| r.score).collect();
        let (rater, ranks) = model.rank(&group.prompt, &scores, 0);
        let counts = splits.get_mut(&split).expect("all splits present");
        let part = counts.prompts / PROMPTS_PER_PART + 1;
        counts.prompts += 1;
        counts.rows += ranks.len();
        for a in 0..ranks.len() {
            for b in a + 1..ranks.len() {
                if ranks[a] == ranks[b] {
                    counts.ties += 1;
                } else {
                    counts.pairs += 1;
                }
            }
        }
        let prompt_id = format!("{g:06}");
        let s = split.name();
        for (k, img) in group.images.iter().enumerate() {
            let image_path = format!("images/{s}/{s}_{part}/{prompt_id}-{k}.png");
            let path = root.join(&image_path);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| WorldError::io("create folder", dir, e))?;
            }
            let text = group.text_chunks.get(k).map(Vec::as_slice).unwrap_or(&[]);
            crate::fsutil::atomic_write(&path, &encode_png_with_text(img, text)?)
                .map_err(|e| WorldError::io("write image", &path, e))?;
            rows.push(WrittenRow {
                split,
                prompt_id: prompt_id.clone(),
                prompt: group.prompt.clone(),
                image_path,
                rank: ranks[k],
                checker_score: scores[k],
                all_correct: results[k].all_correct,
                rater,
            });
        }
    }
    std::fs::create_dir_all(root).map_err(|e| WorldError::io("create folder", root, e))?;
    for split in Split::ALL {
        let part: Vec<&WrittenRow> = rows.iter().filter(|r| r.split == split).collect();
        let path = root.join(format!("metadata-{}.parquet", split.name()));
        let bytes = metadata_parquet(&part).map_err(|e| WorldError::Parquet {
            path: path.clone(),
            message: e.to_string(),
        })?;
        crate::fsutil::atomic_write(&path, &bytes)
            .map_err(|e| WorldError::io("write", &path, e))?;
    }
    Ok(DatasetSummary {
        root: root.to_path_buf(),
        splits,
        rows,
        rater_temperatures: temps,
    })
}

const SCHEMA: &str = "message schema {
    REQUIRED BYTE_ARRAY image_path (UTF8);
    REQUIRED BYTE_ARRAY prompt_id (UTF8);
    REQUIRED BYTE_ARRAY prompt (UTF8);
    REQUIRED BYTE_ARRAY classification (UTF8);
    REQUIRED INT64 image_amount_in_total;
    REQUIRED INT64 rank;
    REQUIRED DOUBLE checker_score;
    REQUIRED INT32 rater;
}";

/// One metadata file (snappy, one row group), through the parquet crate's column writer.
fn metadata_parquet(rows: &[&WrittenRow]) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let schema = Arc::new(parquet::schema::parser::parse_message_type(SCHEMA)?);
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build(),
    );
    let mut totals: BTreeMap<&str, i64> = BTreeMap::new();
    for r in rows {
        *totals.entry(r.prompt_id.as_str()).or_insert(0) += 1;
    }
    let text = |f: &dyn Fn(&WrittenRow) -> String| -> Vec<ByteArray> {
        rows.iter()
            .map(|r| ByteArray::from(f(r).into_bytes()))
            .collect()
    };
    let columns_text = [
        text(&|r| r.image_path.clone()),
        text(&|r| r.prompt_id.clone()),
        text(&|r| r.prompt.clone()),
        text(&|_| "shapes world".to_string()),
    ];
    let amounts: Vec<i64> = rows.iter().map(|r| totals[r.prompt_id.as_str()]).collect();
    let ranks: Vec<i64> = rows.iter().map(|r| r.rank).collect();
    let scores: Vec<f64> = rows.iter().map(|r| r.checker_score).collect();
    let raters: Vec<i32> = rows.iter().map(|r| r.rater as i32).collect();

    let mut out = Vec::new();
    let mut w = SerializedFileWriter::new(&mut out, schema, props)?;
    if !rows.is_empty() {
        let mut rg = w.next_row_group()?;
        for values in &columns_text {
            let mut col = rg.next_column()?.expect("schema column");
            col.typed::<ByteArrayType>()
                .write_batch(values, None, None)?;
            col.close()?;
        }
        for values in [&amounts, &ranks] {
            let mut col = rg.next_column()?.expect("schema column");
            col.typed::<Int64Type>().write_batch(values, None, None)?;
            col.close()?;
        }
        let mut col = rg.next_column()?.expect("schema column");
        col.typed::<DoubleType>().write_batch(&scores, None, None)?;
        col.close()?;
        let mut col = rg.next_column()?.expect("schema column");
        col.typed::<Int32Type>().write_batch(&raters, None, None)?;
        col.close()?;
        rg.close()?;
    }
    w.close()?;
    Ok(out)
}
