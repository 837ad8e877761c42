//! Status codes and the last-error message.
//!
//! Every fallible entry point returns a [`dpoimg_status`]: `DPOIMG_OK` (0) or a negative code from
//! dpoimg's own range, so it never collides with `errno` values a host may also be handling. The
//! human-readable message of the last failure is kept per thread (always) and per engine (for calls
//! on an engine), because a status alone cannot say *which* field or file was wrong.

use crate::engine::EngineError;
use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::sync::Mutex;

/// Result of every fallible call: `DPOIMG_OK` or one of the negative `DPOIMG_ERR_*` codes.
/// Codes are never renumbered or reused; treat an unknown negative value as a generic error.
#[allow(non_camel_case_types)]
pub type dpoimg_status = i32;

/// Success.
pub const DPOIMG_OK: dpoimg_status = 0;
/// The API was used against its contract: a required pointer was NULL, a handle of the wrong
/// kind (or already freed) was passed, or a call was made where it is not allowed (for example
/// setting the log callback from inside the log callback). A bug in the caller, not bad input.
pub const DPOIMG_ERR_MISUSE: dpoimg_status = -1;
/// A value is out of range or malformed: text that is not UTF-8, a size or count beyond the
/// limits, an unknown sampler or device name, a width that is not a multiple of the bundle's.
pub const DPOIMG_ERR_INVALID_ARGUMENT: dpoimg_status = -2;
/// An options struct's `version` is one this library does not know (newer than the library,
/// or zero because the struct was never initialised with its `*_options_init`).
pub const DPOIMG_ERR_VERSION: dpoimg_status = -3;
/// The work was cancelled: through a `dpoimg_cancel` handle (also one cancelled before the
/// call), or because a progress callback returned false.
pub const DPOIMG_ERR_CANCELLED: dpoimg_status = -4;
/// A named thing (a loaded adapter) does not exist.
pub const DPOIMG_ERR_NOT_FOUND: dpoimg_status = -5;
/// A named thing (a loaded adapter) exists already.
pub const DPOIMG_ERR_EXISTS: dpoimg_status = -6;
/// The model bundle is missing, malformed, or fails its hash or shape checks.
pub const DPOIMG_ERR_BUNDLE: dpoimg_status = -7;
/// ONNX Runtime could not be found or loaded, a session could not be created, or the requested
/// device (CUDA) is unavailable.
pub const DPOIMG_ERR_RUNTIME: dpoimg_status = -8;
/// An adapter file is unreadable, malformed, or does not fit the bundle.
pub const DPOIMG_ERR_ADAPTER: dpoimg_status = -9;
/// A model failed while running (ONNX Runtime error, unexpected output shape).
pub const DPOIMG_ERR_MODEL: dpoimg_status = -10;
/// Reading or writing a file, or encoding an image, failed.
pub const DPOIMG_ERR_IO: dpoimg_status = -11;
/// A bug inside dpoimg was caught at the API boundary (a Rust panic). The library stays usable;
/// please report the message.
pub const DPOIMG_ERR_PANIC: dpoimg_status = -12;

/// An error on its way to the C caller: a status and the message kept as last error.
#[derive(Debug, Clone)]
pub(crate) struct Error {
    pub(crate) status: dpoimg_status,
    pub(crate) message: String,
}

impl Error {
    pub(crate) fn new(status: dpoimg_status, message: impl Into<String>) -> Self {
        Error {
            status,
            message: message.into(),
        }
    }
    pub(crate) fn misuse(message: impl Into<String>) -> Self {
        Self::new(DPOIMG_ERR_MISUSE, message)
    }
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(DPOIMG_ERR_INVALID_ARGUMENT, message)
    }
}

impl From<EngineError> for Error {
    fn from(e: EngineError) -> Self {
        let status = match &e {
            EngineError::Bundle(_) => DPOIMG_ERR_BUNDLE,
            EngineError::Runtime(_) => DPOIMG_ERR_RUNTIME,
            EngineError::Lora(_) => DPOIMG_ERR_ADAPTER,
            EngineError::InvalidRequest { .. } => DPOIMG_ERR_INVALID_ARGUMENT,
            // Tokenizer and scheduler failures come from the bundle's files or the request's
            // settings; neither is a model run failing.
            EngineError::Tokenize(_) => DPOIMG_ERR_BUNDLE,
            EngineError::Scheduler(_) => DPOIMG_ERR_INVALID_ARGUMENT,
            EngineError::Model { .. } => DPOIMG_ERR_MODEL,
            EngineError::Cancelled => DPOIMG_ERR_CANCELLED,
        };
        Error::new(status, e.to_string())
    }
}

/// Turns a message into a C string; interior NULs (from file names, say) become U+FFFD so the
/// message is never silently cut.
pub(crate) fn to_cstring(message: &str) -> CString {
    CString::new(message.replace('\0', "\u{FFFD}")).expect("no NUL left")
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `e` as this thread's last error and returns its status.
pub(crate) fn set_thread_error(e: &Error) -> dpoimg_status {
    LAST_ERROR.with(|m| *m.borrow_mut() = to_cstring(&e.message));
    e.status
}

/// The last error of one handle. Copied out under the lock, never lent, so that a thread reading
/// it cannot race another thread replacing it.
#[derive(Debug, Default)]
pub(crate) struct ErrorSlot(Mutex<String>);

impl ErrorSlot {
    pub(crate) fn set(&self, message: &str) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = message.to_string();
    }
    pub(crate) fn get(&self) -> String {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The message of the last failed call on this thread, or "" if none failed yet.
///
/// Thread-safety: per thread; the pointer stays valid until the next failing `dpoimg_*` call on
/// the same thread. Ownership: the library's; do not free.
#[no_mangle]
pub extern "C" fn dpoimg_last_error() -> *const c_char {
    std::panic::catch_unwind(|| LAST_ERROR.with(|m| m.borrow().as_ptr())).unwrap_or(c"".as_ptr())
}

/// A stable, static name for a status ("DPOIMG_OK", "DPOIMG_ERR_MISUSE"...), or
/// "DPOIMG_ERR_UNKNOWN" for a value this library does not define.
///
/// Thread-safety: any thread. Ownership: static storage; do not free.
#[no_mangle]
pub extern "C" fn dpoimg_status_name(status: dpoimg_status) -> *const c_char {
    status_name(status).as_ptr()
}

pub(crate) fn status_name(status: dpoimg_status) -> &'static CStr {
    match status {
        DPOIMG_OK => c"DPOIMG_OK",
        DPOIMG_ERR_MISUSE => c"DPOIMG_ERR_MISUSE",
        DPOIMG_ERR_INVALID_ARGUMENT => c"DPOIMG_ERR_INVALID_ARGUMENT",
        DPOIMG_ERR_VERSION => c"DPOIMG_ERR_VERSION",
        DPOIMG_ERR_CANCELLED => c"DPOIMG_ERR_CANCELLED",
        DPOIMG_ERR_NOT_FOUND => c"DPOIMG_ERR_NOT_FOUND",
        DPOIMG_ERR_EXISTS => c"DPOIMG_ERR_EXISTS",
        DPOIMG_ERR_BUNDLE => c"DPOIMG_ERR_BUNDLE",
        DPOIMG_ERR_RUNTIME => c"DPOIMG_ERR_RUNTIME",
        DPOIMG_ERR_ADAPTER => c"DPOIMG_ERR_ADAPTER",
        DPOIMG_ERR_MODEL => c"DPOIMG_ERR_MODEL",
        DPOIMG_ERR_IO => c"DPOIMG_ERR_IO",
        DPOIMG_ERR_PANIC => c"DPOIMG_ERR_PANIC",
        _ => c"DPOIMG_ERR_UNKNOWN",
    }
}
