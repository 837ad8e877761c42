//! Adapters by name: `NAME` means `ADAPTER_DIR/NAME.safetensors` and nothing else. Names are
//! restricted to `[A-Za-z0-9._-]` (no separators, no leading dot), and the canonicalised file must
//! still lie inside the canonicalised adapter directory (`Path::starts_with`, never a string
//! prefix), so neither `..`, absolute paths nor a symlink pointing out of the directory reach a
//! file. Loading reads the file again, which is the hot swap: the engine composes adapters per
//! request and its sessions are never rebuilt.

use crate::error::ApiError;
use axum::http::StatusCode;
use dpoimg::lora::LoraAdapter;
use dpoimg::Engine;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const EXTENSION: &str = "safetensors";
const MAX_NAME: usize = 128;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DefaultAdapter {
    pub name: String,
    pub strength: f32,
}

pub struct Registry {
    dir: PathBuf,
    loaded: Mutex<BTreeMap<String, Arc<LoraAdapter>>>,
    default: Mutex<Option<DefaultAdapter>>,
}

fn refused(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "adapter_name_refused", message)
}

impl Registry {
    pub fn new(dir: PathBuf) -> Registry {
        Registry {
            dir,
            loaded: Mutex::new(BTreeMap::new()),
            default: Mutex::new(None),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file a name stands for, after every confinement check.
    pub fn confine(&self, name: &str) -> Result<PathBuf, ApiError> {
        let ok_chars = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if name.is_empty() || name.len() > MAX_NAME || !ok_chars || name.starts_with('.') {
            return Err(refused(format!(
                "adapter name {name:?} is not allowed: use the file name without `.{EXTENSION}` \
                 of a file in the adapter directory ({MAX_NAME} characters of A-Z a-z 0-9 . _ -, \
                 not starting with a dot; no paths)"
            )));
        }
        let dir = self.dir.canonicalize().map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "adapter_dir_missing",
                format!(
                    "adapter directory {}: {e}; create it or pass --adapter-dir",
                    self.dir.display()
                ),
            )
        })?;
        let file = dir.join(format!("{name}.{EXTENSION}"));
        let real = file.canonicalize().map_err(|_| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "adapter_not_found",
                format!(
                    "no adapter {name:?}: {} does not exist (GET /v1/adapters lists the available ones)",
                    file.display()
                ),
            )
        })?;
        if !real.starts_with(&dir) {
            return Err(refused(format!(
                "adapter {name:?} resolves to {}, outside the adapter directory {}; symlinks out of it are not followed",
                real.display(),
                dir.display()
            )));
        }
        if !real.is_file() {
            return Err(refused(format!("adapter {name:?} is not a regular file")));
        }
        Ok(real)
    }

    /// Reads (or re-reads) an adapter and makes it the one served under its name.
    pub fn load(&self, engine: &Engine, name: &str) -> Result<Arc<LoraAdapter>, ApiError> {
        let path = self.confine(name)?;
        let a = engine.load_adapter(&path).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "adapter_invalid",
                e.to_string(),
            )
        })?;
        self.lock_loaded().insert(name.to_string(), Arc::clone(&a));
        Ok(a)
    }

    /// The loaded adapter, loading it on first use.
    pub fn get(&self, engine: &Engine, name: &str) -> Result<Arc<LoraAdapter>, ApiError> {
        if let Some(a) = self.lock_loaded().get(name) {
            return Ok(Arc::clone(a));
        }
        self.load(engine, name)
    }

    pub fn unload(&self, name: &str) -> Result<(), ApiError> {
        if self.lock_loaded().remove(name).is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "adapter_not_loaded",
                format!("adapter {name:?} is not loaded"),
            ));
        }
        let mut d = self.lock_default();
        if d.as_ref().is_some_and(|d| d.name == name) {
            *d = None;
        }
        Ok(())
    }

    pub fn set_default(&self, engine: &Engine, v: Option<DefaultAdapter>) -> Result<(), ApiError> {
        if let Some(d) = &v {
            if !d.strength.is_finite() || d.strength.abs() > dpoimg::limits::MAX_STRENGTH {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    format!(
                        "strength {} must be finite with |s| <= {}",
                        d.strength,
                        dpoimg::limits::MAX_STRENGTH
                    ),
                ));
            }
            self.get(engine, &d.name)?;
        }
        *self.lock_default() = v;
        Ok(())
    }

    pub fn default_adapter(&self) -> Option<DefaultAdapter> {
        self.lock_default().clone()
    }

    /// Loaded adapters (name, sha256) and the files available in the directory.
    pub fn list(&self) -> serde_json::Value {
        let loaded: Vec<_> = self
            .lock_loaded()
            .iter()
            .map(|(n, a)| serde_json::json!({"name": n, "sha256": a.hash}))
            .collect();
        let mut available: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let p = e.path();
                        (p.extension().and_then(|x| x.to_str()) == Some(EXTENSION))
                            .then(|| p.file_stem()?.to_str().map(str::to_string))
                            .flatten()
                    })
                    .filter(|n| self.confine(n).is_ok())
                    .collect()
            })
            .unwrap_or_default();
        available.sort();
        serde_json::json!({
            "dir": self.dir,
            "loaded": loaded,
            "available": available,
            "default": self.default_adapter(),
        })
    }

    fn lock_loaded(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<LoraAdapter>>> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn lock_default(&self) -> std::sync::MutexGuard<'_, Option<DefaultAdapter>> {
        self.default.lock().unwrap_or_else(|p| p.into_inner())
    }
}
