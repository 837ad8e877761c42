//! Model bundle v1: a directory with `bundle.json`, ONNX models, the tokenizer and the UNet's
//! weights. Reading validates everything a later step would trip over, and names the file and the
//! field at fault.

mod manifest;
mod onnx_scan;

pub use manifest::{Defaults, LoraModule, LoraSpec, Manifest, TextEncoderSpec, UnetSpec, VaeSpec};

use crate::hash::sha256_file;
use std::path::{Component, Path, PathBuf};

/// The file name every bundle has at its root.
pub const MANIFEST_FILE: &str = "bundle.json";

/// Errors reading or validating a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{dir}: not a dpoimg bundle (no {MANIFEST_FILE}). Fix: pass --bundle with a directory made by tools/export_bundle.py")]
    NoManifest { dir: PathBuf },
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}: invalid JSON at line {line}, column {column}: {message}")]
    Json {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: field `{field}`: {message}")]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{path}: file `{file}` named by `{field}` is missing. Fix: re-export the bundle or restore the file")]
    MissingFile {
        path: PathBuf,
        field: String,
        file: String,
    },
    #[error("{file}: sha256 mismatch (bundle.json says {expected}, file has {actual}); the file is corrupt or was replaced. Fix: re-export the bundle")]
    HashMismatch {
        file: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{file}: path `{reference}` leaves the bundle directory; refused")]
    PathEscape { file: PathBuf, reference: String },
    #[error("{file}: not a readable ONNX model: {message}")]
    Onnx { file: PathBuf, message: String },
}

/// A validated bundle on disk.
#[derive(Debug, Clone)]
pub struct Bundle {
    dir: PathBuf,
    manifest: Manifest,
    hash: String,
}

/// How much checking [`Bundle::open`] does on file contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verify {
    /// sha256 of every file (reads every byte once).
    #[default]
    Full,
    /// Existence, confinement and ONNX external-data checks only.
    Quick,
}

impl Bundle {
    /// Reads `DIR/bundle.json` and checks versions, fields, paths and (with [`Verify::Full`]) hashes.
    pub fn open(dir: impl AsRef<Path>, verify: Verify) -> Result<Bundle, BundleError> {
        let dir = dir.as_ref();
        let manifest_path = dir.join(MANIFEST_FILE);
        if !manifest_path.is_file() {
            return Err(BundleError::NoManifest {
                dir: dir.to_path_buf(),
            });
        }
        let bytes = std::fs::read(&manifest_path).map_err(|e| BundleError::Io {
            path: manifest_path.clone(),
            message: e.to_string(),
        })?;
        let manifest = Manifest::parse(&manifest_path, &bytes)?;
        let dir = dir.canonicalize().map_err(|e| BundleError::Io {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?;
        let bundle = Bundle {
            hash: crate::hash::sha256_hex(&bytes),
            dir,
            manifest,
        };
        bundle.check_files(verify)?;
        Ok(bundle)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// sha256 of `bundle.json` (which itself pins every file's sha256): the bundle's identity in
    /// provenance records and adapter metadata.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Absolute path of a file the manifest names (already confined to the bundle directory).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn manifest_path(&self) -> PathBuf {
        self.dir.join(MANIFEST_FILE)
    }

    fn check_files(&self, verify: Verify) -> Result<(), BundleError> {
        let mp = self.manifest_path();
        for (field, rel) in self.manifest.referenced_files() {
            let p = confine(&self.dir, rel, &mp)?;
            if !p.is_file() {
                return Err(BundleError::MissingFile {
                    path: mp.clone(),
                    field: field.to_string(),
                    file: rel.to_string(),
                });
            }
            if !self.manifest.files.contains_key(rel) {
                return Err(BundleError::Field {
                    path: mp.clone(),
                    field: format!("files.\"{rel}\""),
                    message: format!("no sha256 recorded for `{rel}` (named by `{field}`)"),
                });
            }
            if rel.ends_with(".onnx") {
                for location in onnx_scan::external_data_locations(&p)? {
                    let model_dir = p.parent().unwrap_or(&self.dir);
                    let target = confine_in(&self.dir, model_dir, &location, &p)?;
                    if !target.is_file() {
                        return Err(BundleError::Onnx {
                            file: p.clone(),
                            message: format!("external data file `{location}` is missing"),
                        });
                    }
                }
            }
        }
        for (rel, expected) in &self.manifest.files {
            let p = confine(&self.dir, rel, &mp)?;
            if !p.is_file() {
                return Err(BundleError::MissingFile {
                    path: mp.clone(),
                    field: format!("files.\"{rel}\""),
                    file: rel.clone(),
                });
            }
            if verify == Verify::Full {
                let actual = sha256_file(&p).map_err(|e| BundleError::Io {
                    path: p.clone(),
                    message: e.to_string(),
                })?;
                if !actual.eq_ignore_ascii_case(expected) {
                    return Err(BundleError::HashMismatch {
                        file: p,
                        expected: expected.clone(),
                        actual,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Joins a manifest-relative path to the bundle directory, refusing absolute paths and any path
/// that resolves outside the directory.
fn confine(dir: &Path, rel: &str, manifest: &Path) -> Result<PathBuf, BundleError> {
    confine_in(dir, dir, rel, manifest)
}

/// Like [`confine`], relative to `base` (itself inside `root`). Compares canonical paths with
/// `Path::starts_with`, never string prefixes (symlinks are resolved).
fn confine_in(
    root: &Path,
    base: &Path,
    rel: &str,
    referrer: &Path,
) -> Result<PathBuf, BundleError> {
    let escape = || BundleError::PathEscape {
        file: referrer.to_path_buf(),
        reference: rel.to_string(),
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
    let joined = base.join(rp);
    // Canonicalise what exists; a missing file is judged by its lexical path (reported as missing later).
    let resolved = match joined.canonicalize() {
        Ok(p) => p,
        Err(_) => {
            if rp.components().any(|c| matches!(c, Component::ParentDir)) {
                return Err(escape());
            }
            joined
        }
    };
    if !resolved.starts_with(root) {
        return Err(escape());
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confine_refuses_escapes() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        std::fs::write(root.join("a.onnx"), b"x").unwrap();
        let m = root.join("bundle.json");
        assert!(confine(&root, "a.onnx", &m).is_ok());
        for bad in ["../a.onnx", "/etc/passwd", "sub/../../x", ""] {
            assert!(
                matches!(confine(&root, bad, &m), Err(BundleError::PathEscape { .. })),
                "{bad} must be refused"
            );
        }
    }
}
