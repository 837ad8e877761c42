//! Cancellation that works from any thread: a flag checked between steps, plus ONNX Runtime's
//! `terminate` for a model run already in flight.

use ort::session::RunOptions;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Cheap to clone; all clones cancel the same work.
#[derive(Clone, Default)]
pub struct CancelToken {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    in_flight: Mutex<Vec<Arc<RunOptions>>>,
}

impl std::fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelToken")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests cancellation; the work stops at the next step boundary or inside the current run.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::SeqCst);
        for ro in self.lock().iter() {
            let _ = ro.terminate();
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<RunOptions>>> {
        // A panic elsewhere cannot leave the list inconsistent: recover the guard.
        self.inner
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Registers run options so that `cancel` can terminate the run using them.
    pub(crate) fn attach(&self, ro: &Arc<RunOptions>) {
        self.lock().push(Arc::clone(ro));
        if self.is_cancelled() {
            let _ = ro.terminate();
        }
    }

    pub(crate) fn detach(&self, ro: &Arc<RunOptions>) {
        self.lock().retain(|r| !Arc::ptr_eq(r, ro));
    }
}
