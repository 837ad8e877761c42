//! The panic boundary every entry point runs inside.
//!
//! A Rust panic must never unwind into C: since Rust 1.81 that aborts the host process, and before
//! it was undefined behaviour. Each exported body therefore runs in [`boundary`] (status-returning
//! calls) or [`boundary_or`] (getters and free functions), which catch the panic, record its
//! message as the thread's last error and answer `DPOIMG_ERR_PANIC` or a harmless default. The
//! crate must keep `panic = "unwind"` for this to work (a `panic = "abort"` build would turn every
//! internal bug into a host crash).

use super::status::{dpoimg_status, set_thread_error, Error, DPOIMG_ERR_PANIC, DPOIMG_OK};
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs a status-returning body: `Ok` → `DPOIMG_OK`; an error or a panic → its status, with the
/// message kept as this thread's last error.
pub(crate) fn boundary(f: impl FnOnce() -> Result<(), Error>) -> dpoimg_status {
    match catch(f) {
        Ok(()) => DPOIMG_OK,
        Err(e) => set_thread_error(&e),
    }
}

/// Runs a body that cannot report a status (a getter, a free function); a panic yields `default`
/// and the message is kept as this thread's last error.
pub(crate) fn boundary_or<T>(default: T, f: impl FnOnce() -> T) -> T {
    // AssertUnwindSafe: after a panic nothing the closure touched is used again by this call, and
    // shared state (locks) recovers from poisoning explicitly.
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(payload) => {
            set_thread_error(&panic_error(payload));
            default
        }
    }
}

/// Runs `f`, turning a panic into an `Error` (used where a handle also records the error).
pub(crate) fn catch<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| Err(panic_error(payload)))
}

fn panic_error(payload: Box<dyn Any + Send>) -> Error {
    let what = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    };
    // The payload is dropped here, inside the boundary's caller, never in C.
    drop(payload);
    Error::new(
        DPOIMG_ERR_PANIC,
        format!("internal error (panic caught at the API boundary): {what}"),
    )
}
