//! Preference data for Diffusion-DPO: one pair abstraction ([`PreferencePair`]: a prompt, the
//! preferred and the rejected image) read from the three layouts people have on disk.
//!
//! - **ImageRewardDB** ([`imagereward`]): a folder with `metadata-{split}.parquet` and the images
//!   either as loose files at each row's `image_path` or inside `images/{split}/{split}_{N}.zip`.
//!   Pairs are derived as ImageReward's own `rank_pair_dataset.py` does: every pair of images of
//!   the same `prompt_id` with different `rank`, the smaller rank preferred, ties skipped.
//! - **Pick-a-Pic** ([`pickapic`]): a parquet file with `caption`, `jpg_0`, `jpg_1` (JPEG bytes) and
//!   `label_0` (1 → `jpg_0` preferred, 0 → `jpg_1` preferred, 0.5 → tie, dropped as Diffusion-DPO's
//!   `train.py` drops it).
//! - **JSONL** ([`jsonl`]): `{"prompt", "chosen", "rejected"}` records, image paths relative to
//!   the JSONL file.
//!
//! [`load_pairs`] detects the layout ([`detect_format`]) and returns the pairs with a
//! [`LoadReport`] counting rows read, pairs made and everything skipped, per reason. A broken row
//! is an error naming the file, row and field ([`OnBadRow::Error`], the default: silently training
//! on less data than intended is worse than stopping) or a counted skip ([`OnBadRow::Skip`]).
//! Images are not decoded while loading (a real dataset is tens of GB): [`ImageSource::load`]
//! decodes one on demand, and [`ImageSource::encoded`] gives the sha256 the encode-once latent
//! cache keys on. [`LoadOptions::check_images`] decodes every image once up front instead, so that
//! broken images are found (and, with `Skip`, counted) before training starts.
//!
//! Dependencies, chosen for build time (2-core CI): `parquet` without Arrow (record API; snappy
//! and zstd codecs only), `zip` with only the deflate reader, and the `png`, `zune-jpeg` and
//! `image-webp` decoders directly instead of the `image` crate, which would add `moxcms`/`pxfm`
//! for colour management these loaders do not do. Measured on a shared 2-core machine (debug
//! profile, dependencies at opt-level 2): the crates new to dpoimg's tree cost about 220 CPU-seconds
//! once (libzstd's C build about a third of it, `parquet` a quarter); `image` 0.25 with png, jpeg
//! and webp would have added about 150 CPU-seconds more. Incremental builds are unaffected.

mod error;
mod image;
pub mod imagereward;
pub mod jsonl;
mod parquet_rows;
pub mod pickapic;
mod resample;
mod zipstore;

pub use error::DataError;
pub use image::{
    cover_size, decode_rgb8, resize_crop, to_unit_chw, EncodedImage, ImageSize, ImageSource,
    RgbImage, MAX_ENCODED_BYTES, MAX_PIXELS,
};
pub use resample::Resample;
pub use zipstore::SharedZip;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

/// One preference: for `prompt`, `chosen` was preferred over `rejected`.
#[derive(Debug, Clone)]
pub struct PreferencePair {
    pub prompt: String,
    pub chosen: ImageSource,
    pub rejected: ImageSource,
    /// Where the pair came from, for messages: file plus row(s) or line, and the row's id.
    pub source: String,
}

/// The on-disk layouts [`load_pairs`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DatasetFormat {
    ImageRewardDb,
    PickAPic,
    Jsonl,
}

impl fmt::Display for DatasetFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DatasetFormat::ImageRewardDb => "ImageRewardDB",
            DatasetFormat::PickAPic => "Pick-a-Pic parquet",
            DatasetFormat::Jsonl => "JSONL",
        })
    }
}

/// What to do with a row that cannot become a pair (null or missing field, bad value, invalid
/// JSON, missing image, and with [`LoadOptions::check_images`] an undecodable image).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnBadRow {
    /// Stop with an error naming the file, row and field.
    #[default]
    Error,
    /// Skip the row and count it in the [`LoadReport`] under its [`SkipReason`].
    Skip,
}

/// Why a row or candidate pair was not turned into a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    /// A candidate pair with no preference: equal ImageRewardDB ranks, or Pick-a-Pic
    /// `label_0 = 0.5`. Counted in pairs. Always skipped; not an error.
    Tie,
    /// Rows excluded by the prompt filters. Not an error.
    Filtered,
    /// Rows with a required field null or absent.
    MissingField,
    /// Rows with a field of the wrong JSON type or an invalid value (e.g. `label_0 = 2`).
    BadValue,
    /// JSONL lines that are not a JSON object.
    BadJson,
    /// Rows whose image file or zip member does not exist.
    MissingImage,
    /// Rows whose image does not decode (only found with [`LoadOptions::check_images`]).
    BadImage,
}

impl SkipReason {
    fn describe(self) -> &'static str {
        match self {
            SkipReason::Tie => "tie pairs (equal rank / label_0 = 0.5)",
            SkipReason::Filtered => "rows excluded by the prompt filters",
            SkipReason::MissingField => "rows with a null or missing field",
            SkipReason::BadValue => "rows with an invalid value",
            SkipReason::BadJson => "lines that are not a JSON object",
            SkipReason::MissingImage => "rows whose image is missing",
            SkipReason::BadImage => "rows whose image does not decode",
        }
    }
}

/// How loading went: rows read, pairs made, and what was skipped and why.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub format: DatasetFormat,
    /// The file (or folder) read.
    pub path: PathBuf,
    /// Records read: parquet rows, or non-blank JSONL lines.
    pub rows_read: usize,
    /// Pairs returned.
    pub pairs: usize,
    /// Skip counts per reason (rows, except [`SkipReason::Tie`], which counts candidate pairs).
    pub skipped: BTreeMap<SkipReason, usize>,
    /// The first few skip messages (full error text naming row and field), for logs.
    pub examples: Vec<String>,
}

/// How many skip messages a report keeps.
pub const REPORT_EXAMPLES: usize = 10;

impl LoadReport {
    fn new(format: DatasetFormat, path: &Path) -> Self {
        LoadReport {
            format,
            path: path.to_path_buf(),
            rows_read: 0,
            pairs: 0,
            skipped: BTreeMap::new(),
            examples: Vec::new(),
        }
    }

    /// The count for one reason (0 when none).
    pub fn skipped(&self, reason: SkipReason) -> usize {
        self.skipped.get(&reason).copied().unwrap_or(0)
    }

    fn skip(&mut self, reason: SkipReason, message: Option<String>) {
        *self.skipped.entry(reason).or_insert(0) += 1;
        if let Some(m) = message {
            if self.examples.len() < REPORT_EXAMPLES {
                self.examples.push(m);
            }
        }
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {} rows read, {} pairs",
            self.format,
            self.path.display(),
            self.rows_read,
            self.pairs
        )?;
        if !self.skipped.is_empty() {
            let parts: Vec<String> = self
                .skipped
                .iter()
                .map(|(r, n)| format!("{n} {}", r.describe()))
                .collect();
            write!(f, "; skipped {}", parts.join(", "))?;
        }
        Ok(())
    }
}

/// Restricts which prompts are loaded. Several filters must all accept a prompt.
#[derive(Debug, Clone)]
pub enum PromptFilter {
    /// The prompt contains this text, ignoring case (prompts are typed by people with arbitrary
    /// capitalisation; use [`PromptFilter::Regex`] for exact matching).
    Contains(String),
    /// The prompt matches this regular expression (`regex` crate syntax, unanchored).
    Regex(regex::Regex),
    /// ImageRewardDB only: the row's `prompt_id` is in the set.
    Ids(BTreeSet<String>),
}

impl PromptFilter {
    pub fn contains(text: &str) -> Self {
        PromptFilter::Contains(text.to_lowercase())
    }

    pub fn regex(pattern: &str) -> Result<Self, DataError> {
        regex::Regex::new(pattern)
            .map(PromptFilter::Regex)
            .map_err(|e| DataError::Options {
                message: format!("prompt filter regex `{pattern}` is invalid: {e}"),
            })
    }

    pub fn ids<I: IntoIterator<Item = S>, S: Into<String>>(ids: I) -> Self {
        PromptFilter::Ids(ids.into_iter().map(Into::into).collect())
    }

    fn accepts(&self, prompt: &str, prompt_id: Option<&str>) -> bool {
        match self {
            PromptFilter::Contains(t) => prompt.to_lowercase().contains(t.as_str()),
            PromptFilter::Regex(r) => r.is_match(prompt),
            PromptFilter::Ids(ids) => prompt_id.is_some_and(|id| ids.contains(id)),
        }
    }
}

/// Options of [`load_pairs`] and the per-format loaders.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// ImageRewardDB split (`train`, `validation`, `test`); `None` means `train`. An error for
    /// the other formats, which have no splits.
    pub split: Option<String>,
    /// All must accept a prompt for its rows to be loaded.
    pub prompt_filters: Vec<PromptFilter>,
    pub on_bad_row: OnBadRow,
    /// Decode every image once while loading (costs one decode per image).
    pub check_images: bool,
}

impl LoadOptions {
    fn accepts(&self, prompt: &str, prompt_id: Option<&str>) -> bool {
        self.prompt_filters
            .iter()
            .all(|f| f.accepts(prompt, prompt_id))
    }

    fn reject_ids_filter(&self, format: DatasetFormat) -> Result<(), DataError> {
        if self
            .prompt_filters
            .iter()
            .any(|f| matches!(f, PromptFilter::Ids(_)))
        {
            return Err(DataError::Options {
                message: format!(
                    "a prompt-id filter applies only to ImageRewardDB (a {format} has no prompt ids). Fix: filter by prompt text or regex instead"
                ),
            });
        }
        Ok(())
    }

    fn reject_split(&self, format: DatasetFormat) -> Result<(), DataError> {
        if let Some(s) = &self.split {
            return Err(DataError::Options {
                message: format!(
                    "--split {s} applies only to ImageRewardDB folders; a {format} has no splits. Fix: drop the split option"
                ),
            });
        }
        Ok(())
    }
}

/// Shared bookkeeping of the loaders: the report, the bad-row policy, image checks.
struct Collector<'a> {
    opts: &'a LoadOptions,
    report: LoadReport,
    pairs: Vec<PreferencePair>,
    /// Images already decoded by `check_images`: describe() → error text if broken.
    checked: HashMap<String, Option<String>>,
}

impl<'a> Collector<'a> {
    fn new(opts: &'a LoadOptions, format: DatasetFormat, path: &Path) -> Self {
        Collector {
            opts,
            report: LoadReport::new(format, path),
            pairs: Vec::new(),
            checked: HashMap::new(),
        }
    }

    /// A bad row: an error, or a counted skip.
    fn bad(&mut self, reason: SkipReason, err: DataError) -> Result<(), DataError> {
        match self.opts.on_bad_row {
            OnBadRow::Error => Err(err),
            OnBadRow::Skip => {
                self.report.skip(reason, Some(err.to_string()));
                Ok(())
            }
        }
    }

    fn skip(&mut self, reason: SkipReason) {
        self.report.skip(reason, None);
    }

    /// With `check_images`, decodes `img` (once per distinct source); `Err` is the decode error.
    fn check_image(&mut self, img: &ImageSource) -> Result<(), DataError> {
        if !self.opts.check_images {
            return Ok(());
        }
        let key = img.describe();
        let verdict = match self.checked.get(&key) {
            Some(v) => v.clone(),
            None => {
                let v = match img.encoded().and_then(|e| e.decode_rgb8()) {
                    Ok(_) => None,
                    Err(DataError::Image { problem, .. }) => Some(problem),
                    Err(e) => Some(e.to_string()),
                };
                self.checked.insert(key.clone(), v.clone());
                v
            }
        };
        match verdict {
            None => Ok(()),
            Some(problem) => Err(DataError::Image {
                image: key,
                problem,
            }),
        }
    }

    fn push(&mut self, pair: PreferencePair) {
        self.pairs.push(pair);
    }

    fn finish(mut self) -> Result<(Vec<PreferencePair>, LoadReport), DataError> {
        self.report.pairs = self.pairs.len();
        if self.pairs.is_empty() {
            return Err(DataError::Empty {
                path: self.report.path.clone(),
                report: self.report.to_string(),
            });
        }
        Ok((self.pairs, self.report))
    }
}

/// Which layout `path` holds: a folder with `metadata-*.parquet` (or such a file itself) is
/// ImageRewardDB, a `.parquet` with `caption` and `jpg_0` columns is Pick-a-Pic, a `.jsonl` file
/// is JSONL. Anything else is [`DataError::UnknownFormat`] saying what was found.
pub fn detect_format(path: &Path) -> Result<DatasetFormat, DataError> {
    if !path.exists() {
        return Err(DataError::NotFound {
            path: path.to_path_buf(),
        });
    }
    let unknown = |reason: String| DataError::UnknownFormat {
        path: path.to_path_buf(),
        reason,
    };
    if path.is_dir() {
        if imagereward::available_splits(path)?.is_empty() {
            return Err(unknown("a folder without metadata-{split}.parquet".into()));
        }
        return Ok(DatasetFormat::ImageRewardDb);
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "jsonl" => Ok(DatasetFormat::Jsonl),
        "parquet" => {
            let table = parquet_rows::Table::open(path)?;
            if table.has("caption") && table.has("jpg_0") {
                Ok(DatasetFormat::PickAPic)
            } else if table.has("image_path") && table.has("prompt_id") && table.has("rank") {
                Ok(DatasetFormat::ImageRewardDb)
            } else {
                Err(unknown(format!(
                    "a parquet file with columns {}, neither Pick-a-Pic's caption/jpg_0/jpg_1/label_0 nor ImageRewardDB's image_path/prompt_id/rank",
                    table.column_names().join(", ")
                )))
            }
        }
        "" => Err(unknown("a file without an extension".into())),
        other => Err(unknown(format!("a .{other} file"))),
    }
}

/// Reads preference pairs from any supported layout (see [`detect_format`]). An ImageRewardDB
/// `metadata-{split}.parquet` file may be passed instead of its folder; its split is then taken
/// from the name.
pub fn load_pairs(
    path: &Path,
    opts: &LoadOptions,
) -> Result<(Vec<PreferencePair>, LoadReport), DataError> {
    match detect_format(path)? {
        DatasetFormat::ImageRewardDb if path.is_file() => {
            let split = imagereward::split_of_metadata_file(path)?;
            if let Some(s) = &opts.split {
                if *s != split {
                    return Err(DataError::Options {
                        message: format!(
                            "{} is the `{split}` split but the options ask for `{s}`. Fix: pass the folder, or drop the split option",
                            path.display()
                        ),
                    });
                }
            }
            let root = path.parent().unwrap_or(Path::new("."));
            let opts = LoadOptions {
                split: Some(split),
                ..opts.clone()
            };
            imagereward::load(root, &opts)
        }
        DatasetFormat::ImageRewardDb => imagereward::load(path, opts),
        DatasetFormat::PickAPic => pickapic::load(path, opts),
        DatasetFormat::Jsonl => jsonl::load(path, opts),
    }
}
