//! The engine handle: one bundle loaded once, shared by any number of threads.
//!
//! `dpoimg_engine` wraps the immutable [`Engine`] plus the one piece of mutable state the C API
//! adds, the table of loaded adapters (behind a lock), and the engine's last error.

use super::adapter::AdapterTable;
use super::panic::{boundary, boundary_or, catch};
use super::ptr::{free_handle, handle, new_handle, opt_str, out, req_str, Kind};
use super::status::{dpoimg_status, Error, ErrorSlot, DPOIMG_ERR_VERSION};
use crate::bundle::Verify;
use crate::engine::{Engine, EngineOptions};
use crate::runtime::{Device, SessionOptions};
use std::ffi::c_char;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// The version of [`dpoimg_engine_options`] this header describes.
pub const DPOIMG_ENGINE_OPTIONS_VERSION: u32 = 1;

/// How to open an engine. Initialise with `dpoimg_engine_options_init` (which sets `version` and
/// every default), then change fields. Fields are only ever appended in later versions, and the
/// library keeps accepting every older version.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct dpoimg_engine_options {
    /// `DPOIMG_ENGINE_OPTIONS_VERSION` as compiled by the caller.
    pub version: u32,
    /// Intra-op threads of ONNX Runtime; 0 = its default (one per physical core).
    pub intra_threads: u32,
    /// Inter-op threads; 0 = default.
    pub inter_threads: u32,
    /// true (default): check the sha256 of every bundle file while opening (reads every byte);
    /// false: existence, confinement and model-shape checks only (faster for large bundles).
    pub verify: bool,
    /// NUL-terminated UTF-8: "auto" (default, also for NULL), "cpu", "cuda" or "cuda:N".
    /// "cuda" fails with DPOIMG_ERR_RUNTIME rather than silently running on the CPU.
    pub device: *const c_char,
    /// NUL-terminated path of libonnxruntime, or NULL to search: $DPOIMG_ORT_LIB,
    /// $ORT_DYLIB_PATH, the directory of libdpoimg itself, next to the executable, an installed
    /// Python onnxruntime. ONNX Runtime is loaded once per process: the first engine decides.
    pub ort_library: *const c_char,
}

impl Default for dpoimg_engine_options {
    fn default() -> Self {
        dpoimg_engine_options {
            version: DPOIMG_ENGINE_OPTIONS_VERSION,
            intra_threads: 0,
            inter_threads: 0,
            verify: true,
            device: std::ptr::null(),
            ort_library: std::ptr::null(),
        }
    }
}

/// An open engine: a loaded, verified model bundle and its ONNX Runtime sessions. Immutable after
/// opening except for its table of loaded adapters, which is locked internally.
#[allow(non_camel_case_types)]
pub struct dpoimg_engine {
    _opaque: [u8; 0],
}

/// What a `dpoimg_engine` handle holds.
pub(crate) struct EngineHandle {
    /// Distinguishes engines for adapter handles (an address could be reused after a close).
    pub(crate) id: u64,
    pub(crate) engine: Engine,
    pub(crate) adapters: AdapterTable,
    last_error: ErrorSlot,
}

impl Kind for dpoimg_engine {
    type Inner = EngineHandle;
    const TAG: u64 = 0x6470_6f69_6d67_454e; // "dpoimgEN"
    const NAME: &'static str = "dpoimg_engine";
}

impl EngineHandle {
    /// Runs `f`; a failure (or panic) is also kept as this engine's last error.
    pub(crate) fn record<T>(&self, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
        catch(f).inspect_err(|e| self.last_error.set(&e.message))
    }
}

/// Fills `options` with the defaults of options version `version` (pass
/// `DPOIMG_ENGINE_OPTIONS_VERSION`).
///
/// Returns DPOIMG_ERR_MISUSE for NULL, DPOIMG_ERR_VERSION for a version this library does not know
/// (then `options` is untouched). Thread-safety: any thread.
///
/// # Safety
/// `options` is NULL or points to writable memory for a `dpoimg_engine_options` of `version`.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_engine_options_init(
    options: *mut dpoimg_engine_options,
    version: u32,
) -> dpoimg_status {
    boundary(|| {
        let o = out(options, "options")?;
        check_version(
            version,
            DPOIMG_ENGINE_OPTIONS_VERSION,
            "dpoimg_engine_options",
        )?;
        o.write(dpoimg_engine_options::default());
        Ok(())
    })
}

pub(crate) fn check_version(version: u32, known: u32, what: &str) -> Result<(), Error> {
    if version == 0 || version > known {
        return Err(Error::new(
            DPOIMG_ERR_VERSION,
            format!(
                "{what} version {version} is not supported (this library knows 1..={known}); \
                 initialise the struct with its *_options_init function"
            ),
        ));
    }
    Ok(())
}

/// Reads the caller's options: the version first, then only the fields that version has.
///
/// # Safety
/// `p` is NULL or points to a `dpoimg_engine_options` of the version it states.
pub(crate) unsafe fn read_options(p: *const dpoimg_engine_options) -> Result<EngineOptions, Error> {
    let o = if p.is_null() {
        dpoimg_engine_options::default()
    } else {
        let version = std::ptr::addr_of!((*p).version).read();
        check_version(
            version,
            DPOIMG_ENGINE_OPTIONS_VERSION,
            "dpoimg_engine_options",
        )?;
        p.read()
    };
    let device = match opt_str(o.device, "device")? {
        None => Device::Auto,
        Some(s) => s.parse::<Device>().map_err(Error::invalid)?,
    };
    let ort_library = match opt_str(o.ort_library, "ort_library")? {
        Some(s) if !s.is_empty() => Some(PathBuf::from(s)),
        // None: the runtime's search, which looks beside libdpoimg first (runtime::locate)
        _ => None,
    };
    Ok(EngineOptions {
        session: SessionOptions {
            device,
            intra_threads: o.intra_threads as usize,
            inter_threads: o.inter_threads as usize,
            ..SessionOptions::default()
        },
        verify: if o.verify {
            Verify::Full
        } else {
            Verify::Quick
        },
        ort_library,
    })
}

/// Opens the model bundle in directory `bundle_dir` (NUL-terminated UTF-8 path) and writes the new
/// engine to `*out_engine`.
///
/// `options` may be NULL for the defaults. Slow (loads and checks every model); call once and
/// share the engine. Errors: DPOIMG_ERR_MISUSE (NULL `bundle_dir` or `out_engine`),
/// DPOIMG_ERR_VERSION, DPOIMG_ERR_INVALID_ARGUMENT (bad UTF-8, unknown device),
/// DPOIMG_ERR_BUNDLE, DPOIMG_ERR_RUNTIME. Thread-safety: any thread. Ownership: the caller owns the
/// engine and frees it with `dpoimg_engine_close`.
///
/// # Safety
/// Pointers are NULL or valid as described; strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_engine_open(
    bundle_dir: *const c_char,
    options: *const dpoimg_engine_options,
    out_engine: *mut *mut dpoimg_engine,
) -> dpoimg_status {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    boundary(|| {
        let dir = req_str(bundle_dir, "bundle_dir")?;
        let out_engine = out(out_engine, "out_engine")?;
        let options = read_options(options)?;
        let engine = Engine::open(dir, &options)?;
        out_engine.write(new_handle::<dpoimg_engine>(EngineHandle {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            engine,
            adapters: AdapterTable::default(),
            last_error: ErrorSlot::default(),
        }));
        Ok(())
    })
}

/// Frees an engine and its table of loaded adapters. NULL is a no-op.
///
/// Thread-safety: no other call may be using `engine` (finish or cancel generations first).
/// Adapter handles, images and cancel handles obtained earlier stay valid and are freed on their
/// own.
///
/// # Safety
/// `engine` is NULL or an engine from `dpoimg_engine_open` not yet closed.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_engine_close(engine: *mut dpoimg_engine) {
    boundary_or((), || free_handle(engine))
}

/// Copies the engine's last error message (the most recent failure of a call on this engine, from
/// any thread) into `buf` as a NUL-terminated string, truncated to `buf_len - 1` bytes, and returns
/// the message's full length in bytes (like snprintf). `buf` may be NULL when `buf_len` is 0, to
/// ask for the length. Returns 0 for a NULL or invalid engine or when no call failed yet.
///
/// Prefer `dpoimg_last_error()` right after a failure: it is per thread, so concurrent calls on
/// one engine cannot overwrite it. Thread-safety: any thread.
///
/// # Safety
/// `engine` is NULL or a live engine; `buf` is NULL or has room for `buf_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_engine_last_error(
    engine: *const dpoimg_engine,
    buf: *mut c_char,
    buf_len: usize,
) -> usize {
    boundary_or(0, || {
        let message = match handle(engine) {
            Ok(e) => e.last_error.get(),
            Err(_) => String::new(),
        };
        super::copy_to_buffer(&message, buf, buf_len)
    })
}
