//! Pick-a-Pic-style parquet (`yuvalkirstain/pickapic_v2` shards): one row per comparison with
//! `caption`, `jpg_0`, `jpg_1` (encoded image bytes) and `label_0`. As in Diffusion-DPO's
//! `train.py`: `label_0 = 1` → `jpg_0` preferred, `0` → `jpg_1` preferred, `0.5` (no decision)
//! dropped. Any other value is a bad row. `ranking_id`, when present, names rows in messages.

use super::error::DataError;
use super::image::ImageSource;
use super::parquet_rows::{self, Kind, Table};
use super::{Collector, DatasetFormat, LoadOptions, LoadReport, PreferencePair, SkipReason};
use std::path::Path;

/// Reads every decided comparison of a Pick-a-Pic parquet file.
pub fn load(
    path: &Path,
    opts: &LoadOptions,
) -> Result<(Vec<PreferencePair>, LoadReport), DataError> {
    opts.reject_split(DatasetFormat::PickAPic)?;
    opts.reject_ids_filter(DatasetFormat::PickAPic)?;
    let table = Table::open(path)?;
    let fix = "Pick-a-Pic files need caption, jpg_0, jpg_1 and label_0 (yuvalkirstain/pickapic_v2 layout)";
    for (col, kind) in [
        ("caption", Kind::Text),
        ("jpg_0", Kind::Binary),
        ("jpg_1", Kind::Binary),
        ("label_0", Kind::Float),
    ] {
        table.require(col, kind, fix)?;
    }
    let with_id = table.require("ranking_id", Kind::Integer, "").is_ok();
    let mut columns = vec!["caption", "jpg_0", "jpg_1", "label_0"];
    if with_id {
        columns.push("ranking_id");
    }

    let mut c = Collector::new(opts, DatasetFormat::PickAPic, path);
    let name = path.display().to_string();
    let bad_row = |row: &str, field: &str, problem: String, fix: &str| DataError::BadRow {
        path: path.to_path_buf(),
        row: row.to_string(),
        field: field.to_string(),
        problem,
        fix: fix.to_string(),
    };
    table.for_each_row(&columns, |i, row| {
        c.report.rows_read += 1;
        let id = match parquet_rows::get(row, "ranking_id").map(parquet_rows::integer) {
            Some(Ok(rid)) => format!("row {i} (ranking_id {rid})"),
            _ => format!("row {i}"),
        };
        let caption = match parquet_rows::get(row, "caption").map(parquet_rows::text) {
            Some(Ok(s)) => s,
            Some(Err(problem)) => {
                return c.bad(
                    SkipReason::BadValue,
                    bad_row(&id, "caption", problem, "write captions as UTF-8 strings"),
                )
            }
            None => {
                return c.bad(
                    SkipReason::MissingField,
                    bad_row(
                        &id,
                        "caption",
                        "is null".into(),
                        "fill in the caption or drop the row",
                    ),
                )
            }
        };
        if !opts.accepts(&caption, None) {
            c.skip(SkipReason::Filtered);
            return Ok(());
        }
        let label = match parquet_rows::get(row, "label_0").map(parquet_rows::float) {
            Some(Ok(v)) => v,
            Some(Err(problem)) => {
                return c.bad(
                    SkipReason::BadValue,
                    bad_row(&id, "label_0", problem, "label_0 is 1, 0 or 0.5"),
                )
            }
            None => {
                return c.bad(
                    SkipReason::MissingField,
                    bad_row(&id, "label_0", "is null".into(), "label_0 is 1, 0 or 0.5"),
                )
            }
        };
        let first_wins = if label == 1.0 {
            true
        } else if label == 0.0 {
            false
        } else if label == 0.5 {
            c.skip(SkipReason::Tie);
            return Ok(());
        } else {
            return c.bad(
                SkipReason::BadValue,
                bad_row(
                    &id,
                    "label_0",
                    format!("{label} is not 1 (jpg_0 preferred), 0 (jpg_1 preferred) or 0.5 (tie)"),
                    "label_0 is 1, 0 or 0.5",
                ),
            );
        };
        let mut images: [Option<ImageSource>; 2] = [None, None];
        for (k, col) in ["jpg_0", "jpg_1"].into_iter().enumerate() {
            let data = match parquet_rows::get(row, col).map(parquet_rows::binary) {
                Some(Ok(Some(d))) if !d.is_empty() => d,
                Some(Err(problem)) => {
                    return c.bad(
                        SkipReason::BadValue,
                        bad_row(&id, col, problem, "store the encoded image bytes"),
                    )
                }
                _ => {
                    return c.bad(
                        SkipReason::MissingField,
                        bad_row(
                            &id,
                            col,
                            "has no image bytes (null or empty)".into(),
                            "store the encoded image bytes or drop the row",
                        ),
                    )
                }
            };
            let img = ImageSource::Bytes {
                data,
                origin: format!("{name} {id} {col}"),
            };
            if let Err(e) = c.check_image(&img) {
                return c.bad(SkipReason::BadImage, e);
            }
            images[k] = Some(img);
        }
        let [Some(jpg_0), Some(jpg_1)] = images else {
            return Ok(());
        };
        let (chosen, rejected) = if first_wins {
            (jpg_0, jpg_1)
        } else {
            (jpg_1, jpg_0)
        };
        c.push(PreferencePair {
            prompt: caption,
            chosen,
            rejected,
            source: format!("{name} {id}"),
        });
        Ok(())
    })?;
    c.finish()
}
