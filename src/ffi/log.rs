//! Log messages to a C callback.
//!
//! dpoimg logs through `tracing`. The first `dpoimg_log_set_callback` installs a process-wide
//! subscriber that formats each event (and ONNX Runtime's own messages, which `ort` forwards to
//! `tracing`) and hands it to the callback. Until then nothing is logged anywhere: a library must
//! not write to the host's stderr uninvited.

use super::panic::boundary;
use super::status::{dpoimg_status, to_cstring, Error};
use std::cell::Cell;
use std::ffi::{c_char, c_void};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{OnceLock, RwLock};
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// Severity of a log message; a callback receives messages at or above its `max_level`
/// (numerically at or below it).
#[allow(non_camel_case_types)]
pub type dpoimg_log_level = i32;
/// Nothing is logged.
pub const DPOIMG_LOG_OFF: dpoimg_log_level = 0;
pub const DPOIMG_LOG_ERROR: dpoimg_log_level = 1;
pub const DPOIMG_LOG_WARN: dpoimg_log_level = 2;
pub const DPOIMG_LOG_INFO: dpoimg_log_level = 3;
pub const DPOIMG_LOG_DEBUG: dpoimg_log_level = 4;
pub const DPOIMG_LOG_TRACE: dpoimg_log_level = 5;

/// Log callback: `userdata` first; `level` is a `DPOIMG_LOG_*` value; `message` is NUL-terminated
/// UTF-8 valid only during the call. Called from any thread, possibly several at once (ONNX
/// Runtime's threads included): it must be thread-safe, and it must not call
/// `dpoimg_log_set_callback`.
#[allow(non_camel_case_types)]
pub type dpoimg_log_fn = Option<
    unsafe extern "C" fn(userdata: *mut c_void, level: dpoimg_log_level, message: *const c_char),
>;

#[derive(Clone, Copy)]
struct Sink {
    f: unsafe extern "C" fn(*mut c_void, dpoimg_log_level, *const c_char),
    userdata: *mut c_void,
}

// SAFETY: the caller promises the callback and its userdata may be used from any thread.
unsafe impl Send for Sink {}
unsafe impl Sync for Sink {}

/// The current callback. Deliveries hold the read lock while calling it, so replacing it (write
/// lock) waits for calls in flight: after `dpoimg_log_set_callback` returns, the old userdata is
/// never touched again and may be freed.
static SINK: RwLock<Option<Sink>> = RwLock::new(None);
static MAX_LEVEL: AtomicI32 = AtomicI32::new(DPOIMG_LOG_OFF);
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

thread_local! {
    /// Set while this thread runs the callback: its own logging is dropped, and re-entering
    /// `dpoimg_log_set_callback` (which would deadlock on the lock) is refused.
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

fn level_number(level: &Level) -> dpoimg_log_level {
    match *level {
        Level::ERROR => DPOIMG_LOG_ERROR,
        Level::WARN => DPOIMG_LOG_WARN,
        Level::INFO => DPOIMG_LOG_INFO,
        Level::DEBUG => DPOIMG_LOG_DEBUG,
        Level::TRACE => DPOIMG_LOG_TRACE,
    }
}

fn level_filter(n: dpoimg_log_level) -> LevelFilter {
    match n {
        i32::MIN..=0 => LevelFilter::OFF,
        1 => LevelFilter::ERROR,
        2 => LevelFilter::WARN,
        3 => LevelFilter::INFO,
        4 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// Formats an event as `target: message key=value ...`.
#[derive(Default)]
struct Message {
    text: String,
    fields: String,
}

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.text.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.text, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

struct CallbackLayer;

impl<S: Subscriber> Layer<S> for CallbackLayer {
    fn enabled(&self, metadata: &Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        level_number(metadata.level()) <= MAX_LEVEL.load(Ordering::Relaxed)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(level_filter(MAX_LEVEL.load(Ordering::Relaxed)))
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if IN_CALLBACK.with(Cell::get) {
            return;
        }
        let sink = SINK.read().unwrap_or_else(|p| p.into_inner());
        let Some(sink) = *sink else { return };
        let mut m = Message::default();
        event.record(&mut m);
        let text = to_cstring(&format!(
            "{}: {}{}",
            event.metadata().target(),
            m.text,
            m.fields
        ));
        IN_CALLBACK.with(|c| c.set(true));
        // SAFETY: the caller registered `f` for exactly this signature; the message outlives the
        // call. A C callback cannot unwind into Rust.
        unsafe {
            (sink.f)(
                sink.userdata,
                level_number(event.metadata().level()),
                text.as_ptr(),
            )
        };
        IN_CALLBACK.with(|c| c.set(false));
    }
}

fn install() -> Result<(), Error> {
    INSTALLED
        .get_or_init(|| {
            let subscriber = tracing_subscriber::registry().with(CallbackLayer);
            tracing::subscriber::set_global_default(subscriber).map_err(|e| {
                format!(
                    "cannot route logs to the callback: the process already has a tracing \
                     subscriber ({e})"
                )
            })
        })
        .clone()
        .map_err(|m| Error::new(super::status::DPOIMG_ERR_EXISTS, m))
}

/// Sends dpoimg's log messages at `max_level` and more severe (`DPOIMG_LOG_*`) to `callback`, with
/// `userdata` passed back first. A NULL callback or `DPOIMG_LOG_OFF` stops logging. Process-wide:
/// log messages are not tied to one engine (ONNX Runtime's among them).
///
/// When this returns, the previous callback is no longer running and will not be called again, so
/// its userdata may be freed. Errors: DPOIMG_ERR_MISUSE (called from inside the callback),
/// DPOIMG_ERR_EXISTS (the host process already installed its own `tracing` subscriber).
/// Thread-safety: any thread.
///
/// # Safety
/// `callback` is NULL or a function of the documented signature, usable with `userdata` from any
/// thread until it is replaced.
#[no_mangle]
pub unsafe extern "C" fn dpoimg_log_set_callback(
    callback: dpoimg_log_fn,
    userdata: *mut c_void,
    max_level: dpoimg_log_level,
) -> dpoimg_status {
    boundary(|| {
        if IN_CALLBACK.with(Cell::get) {
            return Err(Error::misuse(
                "dpoimg_log_set_callback called from inside the log callback",
            ));
        }
        let sink = callback.map(|f| Sink { f, userdata });
        let level = if sink.is_some() {
            max_level.clamp(DPOIMG_LOG_OFF, DPOIMG_LOG_TRACE)
        } else {
            DPOIMG_LOG_OFF
        };
        if sink.is_some() {
            install()?;
        }
        *SINK.write().unwrap_or_else(|p| p.into_inner()) = sink;
        MAX_LEVEL.store(level, Ordering::Relaxed);
        // Callsites cache whether they are enabled; make them ask again.
        tracing::callsite::rebuild_interest_cache();
        Ok(())
    })
}
