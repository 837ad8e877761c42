//! The generation queue: admission with a hard bound (a full queue is refused at once, never
//! waited on), and one worker thread that runs the engine. Before each run the worker waits a
//! short window, then takes the oldest request plus every queued request with the same
//! [`BatchKey`] (size, steps, sampler, eta, guidance, adapters) up to `max_batch` images, and runs
//! them as one batched UNet call per step ([`Engine::generate_batch`]). Each request keeps its
//! own seed, so batching never changes an image.

use crate::metrics::Metrics;
use base64::Engine as _;
use dpoimg::engine::BatchKey;
use dpoimg::provenance::{encode_png, Origin, Provenance};
use dpoimg::{CancelToken, Engine, EngineError, GenerateRequest, Generated, Stage};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// How images come back.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ResponseKind {
    /// PNG bytes, base64, in the `done` event.
    #[default]
    Base64,
    /// A path in the daemon's output directory.
    Path,
}

/// One admitted request.
pub struct Task {
    pub id: u64,
    pub req: GenerateRequest,
    pub key: BatchKey,
    pub origin: Origin,
    pub response: ResponseKind,
    pub events: UnboundedSender<serde_json::Value>,
    pub cancel: CancelToken,
    pub admitted: Instant,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Task>,
    /// Cancel tokens of the tasks being run, for shutdown.
    running: Vec<CancelToken>,
    closed: bool,
}

pub struct Scheduler {
    state: Mutex<State>,
    wake: Condvar,
    pub capacity: usize,
    pub max_batch: usize,
    pub window: Duration,
    pub output_dir: PathBuf,
    pub metrics: Arc<Metrics>,
}

/// Why a task was not admitted.
pub enum Refusal {
    Full(usize),
    ShuttingDown,
}

/// Decrements the queue depth when a task leaves the system, whichever way it leaves.
struct Admitted(Arc<Metrics>);
impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.queue_depth.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Scheduler {
    pub fn new(
        capacity: usize,
        max_batch: usize,
        window: Duration,
        output_dir: PathBuf,
        metrics: Arc<Metrics>,
    ) -> Scheduler {
        Scheduler {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            capacity,
            max_batch,
            window,
            output_dir,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a task or refuses it at once.
    pub fn submit(&self, task: Task) -> Result<(), Refusal> {
        let mut s = self.lock();
        if s.closed {
            return Err(Refusal::ShuttingDown);
        }
        // Depth counts waiting and running requests; the check and the increment happen under
        // the same lock, so concurrent submits cannot overshoot.
        let depth = self.metrics.queue_depth.load(Ordering::SeqCst);
        if depth >= self.capacity {
            self.metrics.rejected_full();
            return Err(Refusal::Full(depth));
        }
        self.metrics.queue_depth.fetch_add(1, Ordering::SeqCst);
        s.queue.push_back(task);
        drop(s);
        self.wake.notify_one();
        Ok(())
    }

    /// Refuses new tasks from now on; queued ones still run (graceful shutdown).
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }

    /// Cancels everything queued or running (the end of the shutdown grace period).
    pub fn cancel_all(&self) {
        let s = self.lock();
        for t in &s.queue {
            t.cancel.cancel();
        }
        for c in &s.running {
            c.cancel();
        }
    }

    /// True once closed and drained.
    pub fn idle_and_closed(&self) -> bool {
        let s = self.lock();
        s.closed && s.queue.is_empty() && s.running.is_empty()
    }

    /// The worker loop; returns when closed and drained.
    pub fn run_worker(&self, engine: &Engine) {
        loop {
            let batch = {
                let mut s = self.lock();
                while s.queue.is_empty() && !s.closed {
                    s = self.wake.wait(s).unwrap_or_else(|p| p.into_inner());
                }
                if s.queue.is_empty() {
                    return;
                }
                // Give concurrent clients a moment to arrive (only when batching is possible).
                if self.max_batch > 1 && !self.window.is_zero() && s.queue.len() < self.max_batch {
                    drop(s);
                    std::thread::sleep(self.window);
                    s = self.lock();
                }
                let first = s.queue.pop_front().expect("non-empty");
                let mut images = first.req.count as usize;
                let mut batch = vec![first];
                let mut i = 0;
                while i < s.queue.len() {
                    let t = &s.queue[i];
                    if t.key == batch[0].key
                        && images + t.req.count as usize <= self.max_batch
                        && t.req.init_latents.is_none()
                    {
                        images += t.req.count as usize;
                        batch.push(s.queue.remove(i).expect("index in range"));
                    } else {
                        i += 1;
                    }
                }
                s.running = batch.iter().map(|t| t.cancel.clone()).collect();
                batch
            };
            self.run_batch(engine, batch);
            self.lock().running.clear();
        }
    }

    fn run_batch(&self, engine: &Engine, tasks: Vec<Task>) {
        // A client that left while queued: nothing to run for it.
        let (tasks, gone): (Vec<Task>, Vec<Task>) = tasks
            .into_iter()
            .partition(|t| !t.events.is_closed() && !t.cancel.is_cancelled());
        for _ in &gone {
            self.metrics.ended(true);
            drop(Admitted(Arc::clone(&self.metrics)));
        }
        drop(gone);
        // Each task leaves the queue just before its final event is sent, so a client that
        // reads `done` and sends its next request never finds its own old slot still taken.
        let mut admitted: Vec<Option<Admitted>> = tasks
            .iter()
            .map(|_| Some(Admitted(Arc::clone(&self.metrics))))
            .collect();
        if tasks.is_empty() {
            return;
        }
        self.metrics.batch(tasks.len());
        let reqs: Vec<GenerateRequest> = tasks.iter().map(|t| t.req.clone()).collect();
        let cancels: Vec<CancelToken> = tasks.iter().map(|t| t.cancel.clone()).collect();
        let batched = tasks.len();
        let mut on_progress = |i: usize, p: dpoimg::Progress| {
            let stage = match p.stage {
                Stage::EncodingPrompt => "encoding",
                Stage::Denoising => "denoising",
                Stage::Decoding => "decoding",
            };
            // A closed channel means the client disconnected: returning false cancels it.
            tasks[i]
                .events
                .send(serde_json::json!({
                    "event": "progress", "done": false, "stage": stage,
                    "step": p.step, "total_steps": p.total_steps,
                }))
                .is_ok()
        };
        let results = if batched == 1 {
            vec![engine.generate(&reqs[0], &mut |p| on_progress(0, p), &cancels[0])]
        } else {
            match engine.generate_batch(&reqs, &mut on_progress, &cancels) {
                Ok(r) => r,
                Err(e) => tasks.iter().map(|_| Err(clone_err(&e))).collect(),
            }
        };
        for (k, (t, r)) in tasks.iter().zip(results).enumerate() {
            let ev = match r.map_err(crate::error::ApiError::from) {
                Ok(g) => match self.finish(t, &g, batched) {
                    Ok(ev) => {
                        self.metrics
                            .generation_done(t.admitted.elapsed().as_secs_f64(), g.images.len());
                        ev
                    }
                    Err(e) => {
                        self.metrics.ended(false);
                        error_event(&e)
                    }
                },
                Err(e) => {
                    self.metrics.ended(e.code == "cancelled");
                    error_event(&e)
                }
            };
            admitted[k].take();
            let _ = t.events.send(ev);
        }
    }

    /// The `done` event: PNGs with provenance, inline or written to the output directory.
    fn finish(
        &self,
        t: &Task,
        g: &Generated,
        batched: usize,
    ) -> Result<serde_json::Value, crate::error::ApiError> {
        let mut images = Vec::new();
        for (i, img) in g.images.iter().enumerate() {
            let prov = Provenance::new(g, &t.origin, i);
            let png = encode_png(img, Some(&prov))
                .map_err(|e| crate::error::ApiError::internal(format!("PNG encoding: {e}")))?;
            images.push(match t.response {
                ResponseKind::Base64 => serde_json::json!({
                    "png_base64": base64::engine::general_purpose::STANDARD.encode(&png),
                }),
                ResponseKind::Path => {
                    let path = self
                        .output_dir
                        .join(format!("dpoimgd-{}-{}-{i}.png", t.id, t.req.seed));
                    dpoimg::fsutil::atomic_write(&path, &png).map_err(|e| {
                        crate::error::ApiError::internal(format!("writing {}: {e}", path.display()))
                    })?;
                    serde_json::json!({"path": path})
                }
            });
        }
        Ok(serde_json::json!({
            "event": "done", "done": true,
            "images": images,
            "width": g.width, "height": g.height, "steps": g.steps,
            "sampler": g.sampler.to_string(), "guidance": g.guidance, "seed": t.req.seed,
            "batched_with": batched - 1,
            "seconds": t.admitted.elapsed().as_secs_f64(),
        }))
    }
}

pub fn error_event(e: &crate::error::ApiError) -> serde_json::Value {
    serde_json::json!({"event": "error", "done": true, "code": e.code, "message": e.message})
}

/// Engine errors are not Clone; a failed batch reports the same text to each of its requests.
fn clone_err(e: &EngineError) -> EngineError {
    match e {
        EngineError::Cancelled => EngineError::Cancelled,
        EngineError::InvalidRequest { field, message } => EngineError::InvalidRequest {
            field,
            message: message.clone(),
        },
        other => EngineError::Model {
            file: PathBuf::new(),
            message: other.to_string(),
        },
    }
}
