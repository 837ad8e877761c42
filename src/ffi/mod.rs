//! The C ABI of dpoimg (`libdpoimg.so` / `libdpoimg.a`, header `include/dpoimg.h`, generated from
//! this module by cbindgen in `build.rs`).
//!
//! Conventions, the same for every entry point (they are the header's contract, see its preamble):
//! - `dpoimg_` prefixes every symbol and `DPOIMG_` every constant; handles are opaque.
//! - Fallible calls return a [`status::dpoimg_status`]: `DPOIMG_OK` (0) or a negative code; the
//!   message is kept per thread (`dpoimg_last_error`) and per engine
//!   (`dpoimg_engine_last_error`). Out-parameters come last and are written only on success.
//! - Every pointer is NULL-checked, every string UTF-8-checked, every count bounded before use.
//! - Every body runs inside the panic boundary of [`panic`]; a bug is a `DPOIMG_ERR_PANIC`,
//!   never an abort of the host.
//! - Options structs start with a `version` and have `dpoimg_*_options_init(&o, VERSION)`; fields
//!   are only appended, old versions stay accepted.
//! - Callbacks take `void *userdata` first; a returned `bool` means "continue".
//! - Whatever the library allocates has a free function, and freeing NULL is a no-op.
//!
//! Scoring (`dpoimg_reward_*`, [`score`]) and fine-tuning (`dpoimg_finetune_run`, [`finetune`])
//! reuse these pieces: a versioned options
//! struct, a progress callback of the same shape, the same `dpoimg_cancel`.

// Declared in the order the header presents them.
pub mod adapter;
pub mod cancel;
pub mod engine;
pub mod finetune;
pub mod generate;
pub mod image;
pub mod log;
mod panic;
mod ptr;
pub mod score;
pub mod status;

pub use adapter::*;
pub use cancel::*;
pub use engine::*;
pub use finetune::*;
pub use generate::*;
pub use image::*;
pub use log::*;
pub use score::*;
pub use status::*;

use panic::boundary;
use std::ffi::c_char;

/// The library's version, "MAJOR.MINOR.PATCH" (equal to the header's `DPOIMG_VERSION_STRING` when
/// header and library match; compare them to detect a mismatched install).
///
/// Thread-safety: any thread. Ownership: static storage; do not free.
#[no_mangle]
pub extern "C" fn dpoimg_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The library's version as one number, MAJOR * 1000000 + MINOR * 1000 + PATCH (the header's
/// `DPOIMG_VERSION_NUMBER`).
///
/// Thread-safety: any thread.
#[no_mangle]
pub extern "C" fn dpoimg_version_number() -> u32 {
    version_number()
}

pub(crate) fn version_number() -> u32 {
    let part = |s: &str| s.parse::<u32>().unwrap_or(0);
    part(env!("CARGO_PKG_VERSION_MAJOR")) * 1_000_000
        + part(env!("CARGO_PKG_VERSION_MINOR")) * 1_000
        + part(env!("CARGO_PKG_VERSION_PATCH"))
}

/// Test hook: panics inside the API boundary with `message` (NULL = a fixed text), to prove that
/// a panic becomes DPOIMG_ERR_PANIC with the message as last error and leaves the library
/// usable. Always returns DPOIMG_ERR_PANIC. Not for production use. Thread-safety: any thread.
///
/// # Safety
/// `message` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_debug_panic(message: *const c_char) -> status::dpoimg_status {
    boundary(|| {
        let m = ptr::opt_str(message, "message")?.unwrap_or("dpoimg_debug_panic");
        panic!("{m}");
    })
}

/// snprintf-style copy: at most `len - 1` bytes and a NUL into `buf`; returns the full length.
///
/// # Safety
/// `buf` is NULL or has room for `len` bytes.
pub(crate) unsafe fn copy_to_buffer(message: &str, buf: *mut c_char, len: usize) -> usize {
    let bytes = message.as_bytes();
    if !buf.is_null() && len > 0 {
        let n = bytes.len().min(len - 1);
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), n);
        *buf.add(n) = 0;
    }
    bytes.len()
}
