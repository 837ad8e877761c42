//! ONNX Runtime: finding the shared library, the process-wide environment, and sessions with the
//! caller's device and threading choices.
//!
//! `ort` is used with `load-dynamic`: nothing is downloaded at build time and one binary runs with a
//! CPU or a CUDA build of ONNX Runtime, whichever [`locate`] finds.

mod locate;
mod session;

pub use locate::{locate_library, LibrarySource, LocatedLibrary};
pub(crate) use session::resolve_device;
pub use session::{open_session, Device, GraphOptimization, SessionOptions};

use std::path::PathBuf;
use std::sync::OnceLock;

/// Errors of the ONNX Runtime layer.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found; looked in: {tried}. Fix: run `scripts/install-ort.sh` \
         (fetches the `onnxruntime` wheel from PyPI into .ort/lib), or set DPOIMG_ORT_LIB to a libonnxruntime.so"
    )]
    LibraryNotFound { tried: String },
    #[error("could not load ONNX Runtime from {path}: {message}. Fix: point DPOIMG_ORT_LIB at a working libonnxruntime.so (version >= 1.31)")]
    LibraryLoad { path: PathBuf, message: String },
    #[error("ONNX Runtime was already initialised from {loaded}; cannot switch to {requested} in the same process")]
    AlreadyLoaded { loaded: PathBuf, requested: PathBuf },
    #[error(
        "CUDA was requested (--device cuda) but {reason}. Fix: install the GPU build \
         (`scripts/install-ort.sh --gpu`, which takes `onnxruntime-gpu` from PyPI) on a machine with an NVIDIA driver, \
         or use --device cpu/auto"
    )]
    CudaUnavailable { reason: String },
    #[error("opening ONNX model {path}: {message}")]
    Session { path: PathBuf, message: String },
}

/// The process-wide ONNX Runtime: the loaded library and its environment.
#[derive(Clone)]
pub struct Runtime {
    env: ort::environment::Environment,
    library: LocatedLibrary,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("library", &self.library)
            .finish()
    }
}

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
static LOADED_FROM: OnceLock<PathBuf> = OnceLock::new();

impl Runtime {
    /// Loads ONNX Runtime once per process (a second call returns the same runtime).
    ///
    /// `ort` keeps one library per process, so the first successful location wins; later calls
    /// with an explicit, different path get [`RuntimeError::AlreadyLoaded`].
    pub fn get(explicit: Option<&std::path::Path>) -> Result<Runtime, RuntimeError> {
        if let (Some(p), Some(loaded)) = (explicit, LOADED_FROM.get()) {
            if p != loaded {
                return Err(RuntimeError::AlreadyLoaded {
                    loaded: loaded.clone(),
                    requested: p.to_path_buf(),
                });
            }
        }
        let result = RUNTIME.get_or_init(|| Self::load(explicit).map_err(|e| e.to_string()));
        match result {
            Ok(rt) => Ok(rt.clone()),
            Err(msg) => Err(RuntimeError::LibraryLoad {
                path: explicit.map(|p| p.to_path_buf()).unwrap_or_default(),
                message: msg.clone(),
            }),
        }
    }

    fn load(explicit: Option<&std::path::Path>) -> Result<Runtime, RuntimeError> {
        let library = match explicit {
            Some(p) => LocatedLibrary {
                path: p.to_path_buf(),
                source: LibrarySource::Explicit,
            },
            None => locate_library()?,
        };
        // `init_from` returns an error for a bad path; the lazy `ort::init()` route would panic.
        let builder = ort::init_from(&library.path).map_err(|e| RuntimeError::LibraryLoad {
            path: library.path.clone(),
            message: e.to_string(),
        })?;
        let env = builder
            .with_name("dpoimg")
            .build()
            .map_err(|e| RuntimeError::LibraryLoad {
                path: library.path.clone(),
                message: e.to_string(),
            })?;
        let _ = LOADED_FROM.set(library.path.clone());
        tracing::info!(path = %library.path.display(), source = ?library.source, "ONNX Runtime loaded");
        Ok(Runtime { env, library })
    }

    /// Where the library came from.
    pub fn library(&self) -> &LocatedLibrary {
        &self.library
    }

    pub(crate) fn env(&self) -> &ort::environment::Environment {
        &self.env
    }

    /// Whether the loaded library has the CUDA execution provider compiled in.
    pub fn cuda_provider_present(&self) -> bool {
        use ort::ep::ExecutionProvider;
        ort::ep::CUDA::is_available().unwrap_or(false)
    }
}
