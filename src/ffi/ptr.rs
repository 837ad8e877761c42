//! Checked conversions of the raw pointers C hands us: NULL checks, UTF-8 validation, bounded
//! slices and handle tags. Every entry point goes through these, so a NULL or malformed argument is
//! a status and a message instead of a crash.

use super::status::Error;
use std::ffi::{c_char, CStr};

/// A NUL-terminated UTF-8 string that may be NULL (`None`).
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that outlives `'a`.
pub(crate) unsafe fn opt_str<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, Error> {
    if p.is_null() {
        return Ok(None);
    }
    CStr::from_ptr(p)
        .to_str()
        .map(Some)
        .map_err(|e| Error::invalid(format!("`{what}` is not valid UTF-8: {e}")))
}

/// A NUL-terminated UTF-8 string that must not be NULL.
///
/// # Safety
/// As [`opt_str`].
pub(crate) unsafe fn req_str<'a>(p: *const c_char, what: &str) -> Result<&'a str, Error> {
    opt_str(p, what)?.ok_or_else(|| Error::misuse(format!("`{what}` is NULL")))
}

/// An out-parameter that must not be NULL. Nothing is written to it here: callers write only on
/// success.
pub(crate) fn out<T>(p: *mut T, what: &str) -> Result<*mut T, Error> {
    if p.is_null() {
        Err(Error::misuse(format!("out-parameter `{what}` is NULL")))
    } else {
        Ok(p)
    }
}

/// A `(pointer, count)` array: count 0 accepts any pointer (even NULL); otherwise the pointer must
/// be non-NULL and `count` at most `max`, checked before a slice is formed so that a wild count
/// can never make an oversized slice.
///
/// # Safety
/// When `count > 0`, `p` points to `count` valid elements that outlive `'a`.
pub(crate) unsafe fn slice<'a, T>(
    p: *const T,
    count: usize,
    max: usize,
    what: &str,
) -> Result<&'a [T], Error> {
    if count == 0 {
        return Ok(&[]);
    }
    if count > max {
        return Err(Error::invalid(format!(
            "`{what}` count {count} is out of range 0..={max}"
        )));
    }
    if p.is_null() {
        return Err(Error::misuse(format!(
            "`{what}` is NULL with count {count}"
        )));
    }
    Ok(std::slice::from_raw_parts(p, count))
}

/// A handle kind: the opaque type C sees (`dpoimg_engine`...) and the Rust value behind it.
///
/// Handles are allocated as [`Tagged`] values: a tag at offset 0 (guaranteed by `repr(C)`), then
/// the value. Reading the first 8 bytes is valid for every handle this library hands out, so
/// passing one kind of handle for another (or, on a best-effort basis, one already freed) is
/// reported as misuse instead of corrupting memory.
pub(crate) trait Kind {
    type Inner;
    const TAG: u64;
    const NAME: &'static str;
}

#[repr(C)]
pub(crate) struct Tagged<T> {
    tag: u64,
    pub(crate) value: T,
}

impl<T> Tagged<T> {
    pub(crate) fn new<K: Kind<Inner = T>>(value: T) -> Self {
        Tagged { tag: K::TAG, value }
    }
}

impl<T> Drop for Tagged<T> {
    fn drop(&mut self) {
        // Best effort against use after free: a stale pointer no longer carries the tag.
        // SAFETY: a plain write to our own field; volatile so that it is not optimised away.
        unsafe { std::ptr::write_volatile(&mut self.tag, 0) };
    }
}

/// Moves `value` to the heap and returns it as the opaque handle type `K`.
pub(crate) fn new_handle<K: Kind>(value: K::Inner) -> *mut K {
    Box::into_raw(Box::new(Tagged::new::<K>(value))).cast::<K>()
}

/// Checks a tag without forming a reference to the whole value.
///
/// # Safety
/// `p` is non-NULL and points to at least 8 readable bytes (any handle of this library).
unsafe fn tag_ok<K: Kind>(p: *const K) -> bool {
    p.cast::<u64>().read_unaligned() == K::TAG
}

/// The value behind a handle that must not be NULL and must carry its kind's tag.
///
/// # Safety
/// `p` is NULL or a live handle from this library.
pub(crate) unsafe fn handle<'a, K: Kind>(p: *const K) -> Result<&'a K::Inner, Error> {
    if p.is_null() {
        return Err(Error::misuse(format!("`{}` handle is NULL", K::NAME)));
    }
    if !tag_ok(p) {
        return Err(Error::misuse(format!(
            "not a live `{}` handle (wrong kind of handle, or already freed)",
            K::NAME
        )));
    }
    Ok(&(*p.cast::<Tagged<K::Inner>>()).value)
}

/// The allocation behind a handle, for code that shares it (`Arc`) rather than boxing it.
pub(crate) fn as_tagged<K: Kind>(p: *const K) -> *const Tagged<K::Inner> {
    p.cast()
}

/// Frees a handle from [`new_handle`]; NULL is a no-op, and a wrong tag frees nothing (the
/// misuse is kept as this thread's last error).
///
/// # Safety
/// `p` is NULL or was returned by [`new_handle`] for `K` and is not used afterwards.
pub(crate) unsafe fn free_handle<K: Kind>(p: *mut K) {
    if p.is_null() {
        return;
    }
    if !tag_ok(p) {
        super::status::set_thread_error(&Error::misuse(format!(
            "free: not a live `{}` handle; nothing freed",
            K::NAME
        )));
        return;
    }
    drop(Box::from_raw(p.cast::<Tagged<K::Inner>>()));
}

/// Checks the tag of a handle shared through an `Arc` (adapters) before it is released.
///
/// # Safety
/// As [`handle`].
pub(crate) unsafe fn is_live<K: Kind>(p: *const K) -> bool {
    !p.is_null() && tag_ok(p)
}
