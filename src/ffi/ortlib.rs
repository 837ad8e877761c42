//! Finding ONNX Runtime next to libdpoimg itself.
//!
//! `scripts/install.sh` puts `libonnxruntime` beside `libdpoimg` in `PREFIX/lib`. The library's own
//! search ([`crate::runtime::locate_library`]) looks next to the *executable*, which for a C, Go
//! or Swift host is somewhere else; so when the caller names no library and the environment
//! variables are unset, the C ABI looks in the directory that holds the loaded libdpoimg first.

use std::path::PathBuf;

#[cfg(target_os = "macos")]
const ORT_FILE: &str = "libonnxruntime.dylib";
#[cfg(not(target_os = "macos"))]
const ORT_FILE: &str = "libonnxruntime.so";

/// The ONNX Runtime to use when the caller gave none: `Some(path)` beside libdpoimg, or `None` to
/// let the library's usual search decide (environment variables, the executable's directory...).
pub(crate) fn default_library() -> Option<PathBuf> {
    for var in ["DPOIMG_ORT_LIB", "ORT_DYLIB_PATH"] {
        if std::env::var_os(var).is_some_and(|v| !v.is_empty()) {
            return None;
        }
    }
    let candidate = own_directory()?.join(ORT_FILE);
    candidate.is_file().then_some(candidate)
}

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
    // Any function of this crate identifies the object it was loaded from: libdpoimg.so for a
    // shared-library host, the executable itself when libdpoimg.a was linked in.
    let addr = default_library as *const c_void;
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
