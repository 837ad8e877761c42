//! The one error type of the preference-data layer. Every variant names the file (and, for row
//! problems, the row or line and the field) and says how to fix it, because the person reading the
//! message usually has a multi-gigabyte dataset and no debugger.

use std::path::PathBuf;

/// Errors reading preference data or decoding its images.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: does not exist. Fix: pass an ImageRewardDB folder, a Pick-a-Pic .parquet or a .jsonl file")]
    NotFound { path: PathBuf },

    #[error("{path}: not a preference dataset dpoimg can read ({reason}). Fix: pass an ImageRewardDB folder (with metadata-{{split}}.parquet), a Pick-a-Pic-style .parquet (columns caption, jpg_0, jpg_1, label_0) or a .jsonl file of {{\"prompt\", \"chosen\", \"rejected\"}} records")]
    UnknownFormat { path: PathBuf, reason: String },

    #[error("{path}: cannot {action}: {message}")]
    Io {
        path: PathBuf,
        action: &'static str,
        message: String,
    },

    #[error("{path}: not a readable parquet file: {message}. Fix: re-download or re-export the file (snappy, zstd or uncompressed)")]
    Parquet { path: PathBuf, message: String },

    #[error("{path}: column `{column}` is missing (the file has: {found}). Fix: {fix}")]
    MissingColumn {
        path: PathBuf,
        column: String,
        found: String,
        fix: String,
    },

    #[error("{path}: column `{column}` has type {found}, expected {expected}. Fix: rewrite the column with that type (e.g. pyarrow `table.cast`)")]
    ColumnType {
        path: PathBuf,
        column: String,
        found: String,
        expected: String,
    },

    #[error("{path} {row}, field `{field}`: {problem}. Fix: {fix}, or load with OnBadRow::Skip to count and skip such rows")]
    BadRow {
        path: PathBuf,
        /// "row 3" (0-based, as pandas counts) or "line 4" (1-based, as editors count).
        row: String,
        field: String,
        problem: String,
        fix: String,
    },

    #[error("{referenced_by}: image `{image}` not found (looked for {looked}). Fix: restore the file, or load with OnBadRow::Skip to skip the rows that use it")]
    MissingImage {
        referenced_by: String,
        image: String,
        looked: String,
    },

    #[error("{path}: not a readable zip archive: {message}. Fix: re-download the archive")]
    Zip { path: PathBuf, message: String },

    #[error("{image}: cannot decode the image: {problem}. Fix: re-encode it as PNG, JPEG or WebP, or load with check_images and OnBadRow::Skip to skip such pairs")]
    Image { image: String, problem: String },

    #[error("{path}: there is no split `{split}` (no {file}); available: {available}. Fix: pass one of the available splits")]
    Split {
        path: PathBuf,
        split: String,
        file: String,
        available: String,
    },

    #[error("{message}")]
    Options { message: String },

    #[error("{path}: no preference pairs ({report}). Fix: check the file and the prompt filters")]
    Empty { path: PathBuf, report: String },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, action: &'static str, e: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            action,
            message: e.to_string(),
        }
    }
}
