//! Finding `libonnxruntime` without downloading anything at run time.
//!
//! Order: `DPOIMG_ORT_LIB`, `ORT_DYLIB_PATH`, next to the loaded libdpoimg (`scripts/install.sh`
//! puts `libonnxruntime` beside `libdpoimg` in `PREFIX/lib`, while a C, Go or Swift host's
//! executable lives elsewhere), next to the executable (and its `lib/`), the project-local
//! `.ort/lib` that `scripts/install-ort.sh` fills (path recorded at build time), then an installed
//! Python `onnxruntime`/`onnxruntime-gpu` package.

use super::RuntimeError;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How the library was found (printed by `dpoimg info` and in logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LibrarySource {
    Explicit,
    EnvDpoimg,
    EnvOrt,
    NextToLibrary,
    NextToExecutable,
    ProjectLocal,
    PythonPackage,
}

#[derive(Debug, Clone)]
pub struct LocatedLibrary {
    pub path: PathBuf,
    pub source: LibrarySource,
}

/// File names tried in a directory, the unversioned name first.
fn candidates_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.join(lib_name())];
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut versioned: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{}.", lib_name())))
            })
            .collect();
        versioned.sort();
        versioned.reverse();
        out.extend(versioned);
    }
    out
}

fn lib_name() -> &'static str {
    if cfg!(target_os = "macos") {
        "libonnxruntime.dylib"
    } else if cfg!(windows) {
        "onnxruntime.dll"
    } else {
        "libonnxruntime.so"
    }
}

/// Asks an installed Python for the `onnxruntime` package's `capi` directory.
fn python_package_dir() -> Option<PathBuf> {
    for py in ["python3", "python"] {
        let out = Command::new(py)
            .args([
                "-c",
                "import importlib.util,os;s=importlib.util.find_spec('onnxruntime');\
                 print(os.path.join(os.path.dirname(s.origin),'capi') if s else '')",
            ])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !text.is_empty() {
            return Some(PathBuf::from(text));
        }
    }
    None
}

/// Finds the ONNX Runtime shared library, or says every place it looked.
pub fn locate_library() -> Result<LocatedLibrary, RuntimeError> {
    let mut tried = Vec::new();
    for (var, source) in [
        ("DPOIMG_ORT_LIB", LibrarySource::EnvDpoimg),
        ("ORT_DYLIB_PATH", LibrarySource::EnvOrt),
    ] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            let p = PathBuf::from(v);
            if p.is_file() {
                return Ok(LocatedLibrary { path: p, source });
            }
            // An explicit variable that points nowhere is a mistake worth stopping on.
            return Err(RuntimeError::LibraryLoad {
                message: format!("{var} points to a file that does not exist"),
                path: p,
            });
        }
        tried.push(format!("${var} (unset)"));
    }
    let mut dirs: Vec<(PathBuf, LibrarySource)> = Vec::new();
    if let Some(own) = own_directory() {
        dirs.push((own, LibrarySource::NextToLibrary));
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push((exe_dir.clone(), LibrarySource::NextToExecutable));
        dirs.push((exe_dir.join("lib"), LibrarySource::NextToExecutable));
        if let Some(up) = exe_dir.parent() {
            dirs.push((up.join("lib"), LibrarySource::NextToExecutable));
        }
    }
    dirs.push((
        PathBuf::from(env!("DPOIMG_BUILD_ORT_DIR")),
        LibrarySource::ProjectLocal,
    ));
    for (dir, source) in dirs {
        for c in candidates_in(&dir) {
            if c.is_file() {
                return Ok(LocatedLibrary { path: c, source });
            }
        }
        tried.push(dir.display().to_string());
    }
    match python_package_dir() {
        Some(dir) => {
            for c in candidates_in(&dir) {
                if c.is_file() {
                    return Ok(LocatedLibrary {
                        path: c,
                        source: LibrarySource::PythonPackage,
                    });
                }
            }
            tried.push(format!("python onnxruntime package at {}", dir.display()));
        }
        None => tried.push("python onnxruntime package (not installed)".into()),
    }
    Err(RuntimeError::LibraryNotFound {
        tried: tried.join(", "),
    })
}

/// The directory of the object this code was loaded from: libdpoimg.so for a shared-library host,
/// the executable itself when dpoimg is linked statically (then it equals the executable's).
#[cfg(unix)]
fn own_directory() -> Option<PathBuf> {
    use std::ffi::{c_char, c_int, c_void, CStr};
    use std::os::unix::ffi::OsStrExt;

    #[repr(C)]
    struct DlInfo {
        dli_fname: *const c_char,
        dli_fbase: *mut c_void,
        dli_sname: *const c_char,
        dli_saddr: *mut c_void,
    }
    extern "C" {
        fn dladdr(addr: *const c_void, info: *mut DlInfo) -> c_int;
    }
    let mut info = DlInfo {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    let addr = own_directory as *const c_void;
    // SAFETY: dladdr only reads the address and fills `info`; dli_fname, when set, is a
    // NUL-terminated string owned by the dynamic loader for as long as the object is loaded.
    let name = unsafe {
        if dladdr(addr, &mut info) == 0 || info.dli_fname.is_null() {
            return None;
        }
        CStr::from_ptr(info.dli_fname)
    };
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(name.to_bytes()));
    let path = path.canonicalize().unwrap_or(path);
    path.parent().map(PathBuf::from)
}

#[cfg(not(unix))]
fn own_directory() -> Option<PathBuf> {
    None
}
