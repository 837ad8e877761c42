//! The file checks every side bundle (reward, CLIP, Inception) shares with the model bundle: every
//! path the manifest names stays inside the directory (canonical paths compared with
//! `Path::starts_with`, never string prefixes), exists, has a recorded sha256, and (unless the
//! caller opts out) hashes to it.

use crate::bundle::Verify;
use crate::hash::sha256_file;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// A file problem in a side bundle, naming the manifest, the field and the file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{manifest}: `{field}` names `{file}`, which leaves the directory; refused")]
    PathEscape {
        manifest: PathBuf,
        field: String,
        file: String,
    },
    #[error("{manifest}: file `{file}` named by `{field}` is missing. Fix: re-export the bundle or restore the file")]
    Missing {
        manifest: PathBuf,
        field: String,
        file: String,
    },
    #[error("{manifest}: no sha256 recorded in `files` for `{file}` (named by `{field}`). Fix: re-export the bundle")]
    NoHash {
        manifest: PathBuf,
        field: String,
        file: String,
    },
    #[error("{file}: sha256 mismatch (the manifest says {expected}, the file has {actual}); the file is corrupt or was replaced. Fix: re-export the bundle")]
    HashMismatch {
        file: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
}

/// Checks `referenced` (field, relative path) and every entry of `files` under `dir` (already
/// canonical). Returns nothing; paths are re-joined by the caller with [`confined`].
pub fn check_files(
    dir: &Path,
    manifest: &Path,
    referenced: &[(&str, &str)],
    files: &BTreeMap<String, String>,
    verify: Verify,
) -> Result<(), FileError> {
    for (field, rel) in referenced {
        let p = confined(dir, manifest, field, rel)?;
        if !p.is_file() {
            return Err(FileError::Missing {
                manifest: manifest.to_path_buf(),
                field: field.to_string(),
                file: rel.to_string(),
            });
        }
        if !files.contains_key(*rel) {
            return Err(FileError::NoHash {
                manifest: manifest.to_path_buf(),
                field: field.to_string(),
                file: rel.to_string(),
            });
        }
    }
    for (rel, expected) in files {
        let field = format!("files.\"{rel}\"");
        let p = confined(dir, manifest, &field, rel)?;
        if !p.is_file() {
            return Err(FileError::Missing {
                manifest: manifest.to_path_buf(),
                field,
                file: rel.clone(),
            });
        }
        if verify == Verify::Full {
            let actual = sha256_file(&p).map_err(|e| FileError::Io {
                path: p.clone(),
                message: e.to_string(),
            })?;
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(FileError::HashMismatch {
                    file: p,
                    expected: expected.clone(),
                    actual,
                });
            }
        }
    }
    Ok(())
}

/// `dir/rel`, refusing absolute paths, `..` that leaves `dir`, and symlinks that resolve outside.
pub fn confined(dir: &Path, manifest: &Path, field: &str, rel: &str) -> Result<PathBuf, FileError> {
    let escape = || FileError::PathEscape {
        manifest: manifest.to_path_buf(),
        field: field.to_string(),
        file: rel.to_string(),
    };
    let rp = Path::new(rel);
    if rel.is_empty()
        || rp.is_absolute()
        || rp
            .components()
            .any(|c| matches!(c, Component::Prefix(_) | Component::RootDir))
    {
        return Err(escape());
    }
    let joined = dir.join(rp);
    let resolved = match joined.canonicalize() {
        Ok(p) => p,
        Err(_) => {
            if rp.components().any(|c| matches!(c, Component::ParentDir)) {
                return Err(escape());
            }
            joined
        }
    };
    if !resolved.starts_with(dir) {
        return Err(escape());
    }
    Ok(resolved)
}

/// Reads a side bundle's manifest JSON and checks its envelope (`format`, `version`, `kind`) before
/// anything else, so passing the wrong kind of directory names what it is and what was expected.
pub(crate) fn read_envelope(
    dir: &Path,
    manifest_name: &str,
    format: &str,
    version: u64,
    kinds: &[&str],
) -> Result<(PathBuf, serde_json::Value), String> {
    let path = dir.join(manifest_name);
    if !path.is_file() {
        let what = if dir.join(crate::bundle::MANIFEST_FILE).is_file() {
            format!(
                " (it has {}: it is a dpoimg model bundle, not a {format} bundle)",
                crate::bundle::MANIFEST_FILE
            )
        } else if dir.join("reward.json").is_file() {
            " (it has reward.json: it is a reward bundle)".to_string()
        } else if dir.join("metric.json").is_file() {
            " (it has metric.json: it is a metric bundle)".to_string()
        } else if !dir.is_dir() {
            " (no such directory)".to_string()
        } else {
            String::new()
        };
        return Err(format!(
            "{}: not a {format} bundle: no {manifest_name}{what}",
            dir.display()
        ));
    }
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let raw: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "{}: invalid JSON at line {}, column {}: {e}",
            path.display(),
            e.line(),
            e.column()
        )
    })?;
    let got = raw.get("format").and_then(|v| v.as_str());
    if got != Some(format) {
        return Err(format!(
            "{}: field `format`: expected \"{format}\", found {got:?}",
            path.display()
        ));
    }
    match raw.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == version => {}
        other => {
            return Err(format!(
                "{}: field `version`: this build reads version {version}, found {other:?}. Fix: re-export with this release's tools or upgrade dpoimg",
                path.display()
            ))
        }
    }
    let kind = raw.get("kind").and_then(|v| v.as_str());
    if !kind.is_some_and(|k| kinds.contains(&k)) {
        return Err(format!(
            "{}: field `kind`: expected one of {kinds:?}, found {kind:?}",
            path.display()
        ));
    }
    Ok((path, raw))
}
