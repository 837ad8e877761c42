//! Cancel handles: stop a generation (and, later, any long job) from another thread.

use super::panic::{boundary, boundary_or};
use super::ptr::{free_handle, handle, new_handle, out, Kind};
use super::status::dpoimg_status;
use crate::cancel::CancelToken;

/// A cancellation flag shared between the thread doing the work and any thread that wants to stop
/// it (opaque). One-shot: once requested it stays requested, and every call given it returns
/// DPOIMG_ERR_CANCELLED; create a new handle for the next request.
#[allow(non_camel_case_types)]
pub struct dpoimg_cancel {
    _opaque: [u8; 0],
}

impl Kind for dpoimg_cancel {
    type Inner = CancelToken;
    const TAG: u64 = 0x6470_6f69_6d67_4341; // "dpoimgCA"
    const NAME: &'static str = "dpoimg_cancel";
}

/// Creates a cancel handle in `*out_cancel`; free it with `dpoimg_cancel_free`.
/// Thread-safety: any thread.
///
/// # Safety
/// `out_cancel` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_cancel_new(out_cancel: *mut *mut dpoimg_cancel) -> dpoimg_status {
    boundary(|| {
        let o = out(out_cancel, "out_cancel")?;
        o.write(new_handle::<dpoimg_cancel>(CancelToken::new()));
        Ok(())
    })
}

/// Requests cancellation. The work stops at its next step boundary, or inside the model run in
/// progress, and its call returns DPOIMG_ERR_CANCELLED. Idempotent.
///
/// Thread-safety: any thread, concurrently with the call being cancelled (that is its purpose).
///
/// # Safety
/// `cancel` is a live cancel handle.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_cancel_request(cancel: *const dpoimg_cancel) -> dpoimg_status {
    boundary(|| {
        handle(cancel)?.cancel();
        Ok(())
    })
}

/// Whether cancellation was requested (false for NULL). Thread-safety: any thread.
///
/// # Safety
/// `cancel` is NULL or a live cancel handle.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_cancel_is_requested(cancel: *const dpoimg_cancel) -> bool {
    boundary_or(false, || handle(cancel).is_ok_and(|c| c.is_cancelled()))
}

/// Frees a cancel handle. NULL is a no-op. A call that was given the handle has copied what it
/// needs. Thread-safety: no thread may call `dpoimg_cancel_request` on it during or after the
/// free.
///
/// # Safety
/// `cancel` is NULL or a live cancel handle, freed once.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_cancel_free(cancel: *mut dpoimg_cancel) {
    boundary_or((), || free_handle(cancel))
}
