//! JSONL preference pairs: one `{"prompt": .., "chosen": .., "rejected": ..}` object per line,
//! image paths relative to the JSONL file's folder (absolute paths are used as they are). Blank
//! lines are not records; other fields are ignored. Lines are numbered from 1, as editors do.

use super::error::DataError;
use super::image::ImageSource;
use super::{Collector, DatasetFormat, LoadOptions, LoadReport, PreferencePair, SkipReason};
use std::io::{BufRead, BufReader};
use std::path::Path;

/// Reads every record of a JSONL file.
pub fn load(
    path: &Path,
    opts: &LoadOptions,
) -> Result<(Vec<PreferencePair>, LoadReport), DataError> {
    opts.reject_split(DatasetFormat::Jsonl)?;
    opts.reject_ids_filter(DatasetFormat::Jsonl)?;
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, "open", e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut c = Collector::new(opts, DatasetFormat::Jsonl, path);
    let name = path.display().to_string();
    let bad_row = |line: usize, field: &str, problem: String, fix: &str| DataError::BadRow {
        path: path.to_path_buf(),
        row: format!("line {line}"),
        field: field.to_string(),
        problem,
        fix: fix.to_string(),
    };
    let record_fix =
        r#"write one object per line: {"prompt": "...", "chosen": "a.png", "rejected": "b.png"}"#;
    // Split on bytes so that invalid UTF-8 is a bad line, not an I/O error that ends the file.
    for (n, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line_no = n + 1;
        let line = line.map_err(|e| DataError::io(path, "read", e))?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        c.report.rows_read += 1;
        let value: serde_json::Value = match serde_json::from_slice(&line) {
            Ok(v) => v,
            Err(e) => {
                c.bad(
                    SkipReason::BadJson,
                    bad_row(
                        line_no,
                        "(record)",
                        format!("invalid JSON: {e}"),
                        record_fix,
                    ),
                )?;
                continue;
            }
        };
        let Some(obj) = value.as_object() else {
            c.bad(
                SkipReason::BadJson,
                bad_row(
                    line_no,
                    "(record)",
                    "is not a JSON object".into(),
                    record_fix,
                ),
            )?;
            continue;
        };
        let mut fields = Vec::with_capacity(3);
        let mut bad = None;
        for field in ["prompt", "chosen", "rejected"] {
            match obj.get(field) {
                Some(serde_json::Value::String(s)) => fields.push(s.clone()),
                None | Some(serde_json::Value::Null) => {
                    bad = Some((
                        SkipReason::MissingField,
                        bad_row(line_no, field, "is missing or null".into(), record_fix),
                    ));
                    break;
                }
                Some(other) => {
                    bad = Some((
                        SkipReason::BadValue,
                        bad_row(
                            line_no,
                            field,
                            format!("is {other}, not a string"),
                            record_fix,
                        ),
                    ));
                    break;
                }
            }
        }
        if let Some((reason, err)) = bad {
            c.bad(reason, err)?;
            continue;
        }
        let [prompt, chosen, rejected]: [String; 3] = match fields.try_into() {
            Ok(a) => a,
            Err(_) => continue,
        };
        if !opts.accepts(&prompt, None) {
            c.skip(SkipReason::Filtered);
            continue;
        }
        let mut images = Vec::with_capacity(2);
        for (field, rel) in [("chosen", &chosen), ("rejected", &rejected)] {
            let full = base.join(rel);
            if rel.is_empty() || !full.is_file() {
                bad = Some((
                    SkipReason::MissingImage,
                    DataError::MissingImage {
                        referenced_by: format!("{name} line {line_no}, field `{field}`"),
                        image: rel.clone(),
                        looked: full.display().to_string(),
                    },
                ));
                break;
            }
            let img = ImageSource::File(full);
            if let Err(e) = c.check_image(&img) {
                bad = Some((SkipReason::BadImage, e));
                break;
            }
            images.push(img);
        }
        if let Some((reason, err)) = bad {
            c.bad(reason, err)?;
            continue;
        }
        let mut images = images.into_iter();
        let (Some(chosen), Some(rejected)) = (images.next(), images.next()) else {
            continue;
        };
        c.push(PreferencePair {
            prompt,
            chosen,
            rejected,
            source: format!("{name} line {line_no}"),
        });
    }
    c.finish()
}
