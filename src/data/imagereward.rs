//! ImageRewardDB (`THUDM/ImageRewardDB`): `metadata-{split}.parquet` with one row per image
//! (`image_path`, `prompt_id`, `prompt`, `rank`, ratings...), images as loose files at
//! `image_path` (e.g. `images/train/train_1/<uuid>.webp`) or inside the split archives
//! `images/{split}/{split}_{N}.zip`, read in place.
//!
//! Pairs follow ImageReward's `train/src/rank_pair_dataset.py`: per `prompt_id`, every two images
//! i < j (in file order) with different `rank`, the smaller rank preferred; equal ranks are ties
//! and skipped. Only `image_path`, `prompt_id`, `prompt` and `rank` are read; the ratings and
//! `classification` are not needed to form pairs.

use super::error::DataError;
use super::image::ImageSource;
use super::parquet_rows::{self, Kind, Table};
use super::zipstore::SharedZip;
use super::{Collector, DatasetFormat, LoadOptions, LoadReport, PreferencePair, SkipReason};
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// The splits present in an ImageRewardDB folder (from its `metadata-{split}.parquet` files),
/// sorted.
pub fn available_splits(root: &Path) -> Result<Vec<String>, DataError> {
    let entries = std::fs::read_dir(root).map_err(|e| DataError::io(root, "list the folder", e))?;
    let mut splits: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter_map(|n| {
            n.strip_prefix("metadata-")
                .and_then(|s| s.strip_suffix(".parquet"))
                .map(str::to_string)
        })
        .filter(|s| !s.is_empty())
        .collect();
    splits.sort();
    Ok(splits)
}

/// `train` for `.../metadata-train.parquet`.
pub fn split_of_metadata_file(path: &Path) -> Result<String, DataError> {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("metadata-"))
        .and_then(|n| n.strip_suffix(".parquet"))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| DataError::UnknownFormat {
            path: path.to_path_buf(),
            reason: "an ImageRewardDB metadata file must be named metadata-{split}.parquet".into(),
        })
}

/// One usable image row.
struct Item {
    row: usize,
    prompt: String,
    rank: i64,
    image: ImageSource,
}

/// Finds each row's image: the loose file, else the member of `<image's folder>.zip`.
struct Resolver {
    root: PathBuf,
    zips: HashMap<PathBuf, Arc<SharedZip>>,
}

enum Resolved {
    Found(ImageSource),
    Missing { looked: String },
}

impl Resolver {
    fn resolve(&mut self, image_path: &str) -> Result<Resolved, DataError> {
        let rel = Path::new(image_path);
        let loose = self.root.join(rel);
        if loose.is_file() {
            return Ok(Resolved::Found(ImageSource::File(loose)));
        }
        let (Some(folder), Some(name)) = (rel.parent(), rel.file_name().and_then(|n| n.to_str()))
        else {
            return Ok(Resolved::Missing {
                looked: loose.display().to_string(),
            });
        };
        let Some(part) = folder.file_name().and_then(|n| n.to_str()) else {
            return Ok(Resolved::Missing {
                looked: loose.display().to_string(),
            });
        };
        let zip_path = self.root.join(folder.with_file_name(format!("{part}.zip")));
        if !zip_path.is_file() {
            return Ok(Resolved::Missing {
                looked: format!("{} and the archive {}", loose.display(), zip_path.display()),
            });
        }
        let archive = match self.zips.get(&zip_path) {
            Some(z) => z.clone(),
            None => {
                let z = Arc::new(SharedZip::open(&zip_path)?);
                self.zips.insert(zip_path.clone(), z.clone());
                z
            }
        };
        // The archive holds the folder's files, with or without the folder name in front.
        let candidates = [
            format!("{part}/{name}"),
            name.to_string(),
            image_path.to_string(),
        ];
        for member in candidates.iter() {
            if archive.contains(member) {
                return Ok(Resolved::Found(ImageSource::ZipMember {
                    archive,
                    member: member.clone(),
                }));
            }
        }
        Ok(Resolved::Missing {
            looked: format!(
                "{} and member {} of {}",
                loose.display(),
                candidates[0],
                zip_path.display()
            ),
        })
    }
}

fn is_plain_relative(p: &str) -> bool {
    !p.is_empty()
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// Reads the `opts.split` (default `train`) pairs of the ImageRewardDB folder `root`.
pub fn load(
    root: &Path,
    opts: &LoadOptions,
) -> Result<(Vec<PreferencePair>, LoadReport), DataError> {
    let split = opts.split.clone().unwrap_or_else(|| "train".to_string());
    let file_name = format!("metadata-{split}.parquet");
    let path = root.join(&file_name);
    let simple = split
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !simple || !path.is_file() {
        return Err(DataError::Split {
            path: root.to_path_buf(),
            split,
            file: file_name,
            available: available_splits(root)?.join(", "),
        });
    }
    let table = Table::open(&path)?;
    let fix = "ImageRewardDB metadata needs image_path, prompt_id, prompt and rank (THUDM/ImageRewardDB layout)";
    for (col, kind) in [
        ("image_path", Kind::Text),
        ("prompt_id", Kind::Text),
        ("prompt", Kind::Text),
        ("rank", Kind::Integer),
    ] {
        table.require(col, kind, fix)?;
    }

    let mut c = Collector::new(opts, DatasetFormat::ImageRewardDb, root);
    c.report.path = path.clone();
    let mut resolver = Resolver {
        root: root.to_path_buf(),
        zips: HashMap::new(),
    };
    // prompt_id → rows, in order of first appearance.
    let mut groups: Vec<(String, Vec<Item>)> = Vec::new();
    let mut group_of: HashMap<String, usize> = HashMap::new();
    let file = path.clone();
    let bad_row = |row: usize, field: &str, problem: String, fix: &str| DataError::BadRow {
        path: file.clone(),
        row: format!("row {row}"),
        field: field.to_string(),
        problem,
        fix: fix.to_string(),
    };
    table.for_each_row(&["image_path", "prompt_id", "prompt", "rank"], |i, row| {
        c.report.rows_read += 1;
        let mut texts = Vec::with_capacity(3);
        for field in ["prompt_id", "prompt", "image_path"] {
            match parquet_rows::get(row, field).map(parquet_rows::text) {
                Some(Ok(s)) => texts.push(s),
                Some(Err(problem)) => {
                    return c.bad(
                        SkipReason::BadValue,
                        bad_row(i, field, problem, "write the value as a string"),
                    )
                }
                None => {
                    return c.bad(
                        SkipReason::MissingField,
                        bad_row(
                            i,
                            field,
                            "is null".into(),
                            "fill in the value or drop the row",
                        ),
                    )
                }
            }
        }
        let image_path = texts.pop().unwrap_or_default();
        let prompt = texts.pop().unwrap_or_default();
        let prompt_id = texts.pop().unwrap_or_default();
        if !opts.accepts(&prompt, Some(&prompt_id)) {
            c.skip(SkipReason::Filtered);
            return Ok(());
        }
        let rank = match parquet_rows::get(row, "rank").map(parquet_rows::integer) {
            Some(Ok(r)) => r,
            Some(Err(problem)) => {
                return c.bad(
                    SkipReason::BadValue,
                    bad_row(i, "rank", problem, "ranks are whole numbers, 1 = best"),
                )
            }
            None => {
                return c.bad(
                    SkipReason::MissingField,
                    bad_row(
                        i,
                        "rank",
                        "is null".into(),
                        "fill in the rank or drop the row",
                    ),
                )
            }
        };
        if !is_plain_relative(&image_path) {
            return c.bad(
                SkipReason::BadValue,
                bad_row(
                    i,
                    "image_path",
                    format!("`{image_path}` is not a relative path inside the dataset folder"),
                    "use paths like images/train/train_1/<name>.webp",
                ),
            );
        }
        let image = match resolver.resolve(&image_path)? {
            Resolved::Found(img) => img,
            Resolved::Missing { looked } => {
                let err = DataError::MissingImage {
                    referenced_by: format!("{} row {i} (prompt_id {prompt_id})", file.display()),
                    image: image_path,
                    looked,
                };
                return c.bad(SkipReason::MissingImage, err);
            }
        };
        if let Err(e) = c.check_image(&image) {
            return c.bad(SkipReason::BadImage, e);
        }
        let g = *group_of.entry(prompt_id.clone()).or_insert_with(|| {
            groups.push((prompt_id.clone(), Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(Item {
            row: i,
            prompt,
            rank,
            image,
        });
        Ok(())
    })?;

    let name = path.display().to_string();
    for (prompt_id, items) in &groups {
        for (a, first) in items.iter().enumerate() {
            for second in &items[a + 1..] {
                if first.rank == second.rank {
                    c.skip(SkipReason::Tie);
                    continue;
                }
                let (w, l) = if first.rank < second.rank {
                    (first, second)
                } else {
                    (second, first)
                };
                c.push(PreferencePair {
                    prompt: w.prompt.clone(),
                    chosen: w.image.clone(),
                    rejected: l.image.clone(),
                    source: format!(
                        "{name} rows {} (rank {}) > {} (rank {}), prompt_id {prompt_id}",
                        w.row, w.rank, l.row, l.rank
                    ),
                });
            }
        }
    }
    c.finish()
}
