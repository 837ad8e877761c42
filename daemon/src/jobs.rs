//! Fine-tune jobs: `POST /v1/jobs` queues a Diffusion-DPO run (`kind: "dpo"`,
//! `dpoimg::finetune::run_dpo`) or a DPOK run (`kind: "dpok"`, `dpoimg::finetune::run_dpok`), one
//! at a time (an evaluation, `kind: "eval"`, runs `dpoimg eval` the same way) on its own thread while generation keeps being served. Each job lives in
//! `STATE_DIR/jobs/ID/`: `job.json` (written atomically at every state change), `events.ndjson`
//! (the trainer's events, appended) and `run/` (the trainer's run directory with checkpoints).
//! A job found `queued` or `running` at start-up is run again; the trainer resumes from the run
//! directory's newest checkpoint, so a crash costs at most `checkpoint_every` steps.

use crate::adapters::{DefaultAdapter, Registry};
use crate::error::ApiError;
use axum::http::StatusCode;
use dpoimg::finetune::{DpoConfig, DpokConfig, Event, FinetuneError};
use dpoimg::{CancelToken, Engine};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// Registers the finished adapter under `name` (copied into the adapter directory) and, when
/// `default` is set, makes it the default adapter with `strength`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Activate {
    pub name: String,
    #[serde(default)]
    pub default: bool,
    #[serde(default = "one")]
    pub strength: f32,
}

fn one() -> f32 {
    1.0
}

/// `POST /v1/jobs` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub kind: String,
    /// `DpoConfig` (kind `dpo`) or `DpokConfig` (kind `dpok`) fields; `output` and `resume` are
    /// the daemon's.
    #[serde(default)]
    pub config: serde_json::Value,
    pub activate_on_success: Option<Activate>,
}

/// A job's resolved trainer settings. Untagged in `job.json`: the two configs deny unknown
/// fields and each has fields the other lacks (`data` / `reward`), so a stored config reads back
/// as the kind it was written as.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JobConfig {
    Dpo(DpoConfig),
    Dpok(DpokConfig),
    Eval(EvalJob),
}

/// An evaluation job: the arguments of `dpoimg eval` (its flags, same names and meaning), except
/// `--output`, which the daemon sets to the job's `eval/` directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalJob {
    pub args: Vec<String>,
}

#[derive(clap::Parser)]
#[command(name = "eval", no_binary_name = true)]
struct EvalJobArgs {
    #[command(flatten)]
    args: dpoimg::eval::cli::EvalArgs,
}

impl EvalJob {
    /// Parses the arguments as `dpoimg eval` does, with the daemon's bundle as the default.
    fn parse(&self, bundle: &Path, out: &Path) -> Result<dpoimg::eval::cli::EvalArgs, String> {
        use clap::Parser;
        if let Some(a) = self
            .args
            .iter()
            .find(|a| *a == "-o" || a.starts_with("--output"))
        {
            return Err(format!(
                "`{a}` is set by the daemon (the job's eval/ directory); leave it out"
            ));
        }
        let mut parsed = EvalJobArgs::try_parse_from(&self.args)
            .map_err(|e| format!("`config.args` (dpoimg eval flags): {}", e.render()))?
            .args;
        parsed.output = out.to_path_buf();
        if parsed.bundle.is_none() {
            parsed.bundle = Some(bundle.to_path_buf());
        }
        Ok(parsed)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub kind: String,
    pub state: JobState,
    pub config: JobConfig,
    pub activate_on_success: Option<Activate>,
    /// Runs of this job (1 + restarts that resumed it).
    pub attempts: u32,
    pub step: usize,
    pub error: Option<String>,
    pub outcome: Option<dpoimg::finetune::Outcome>,
    pub activated: Option<String>,
    /// An eval job's `eval.json` once it succeeded.
    #[serde(default)]
    pub result: Option<PathBuf>,
}

pub struct Jobs {
    dir: PathBuf,
    bundle: PathBuf,
    engine: Arc<Engine>,
    adapters: Arc<Registry>,
    inner: Mutex<Inner>,
    wake: Condvar,
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<String>,
    running: Option<(String, CancelToken)>,
    closed: bool,
    next: u64,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("{}: {e}", path.display()))
}

impl Jobs {
    /// Opens the job directory and re-queues unfinished jobs (oldest first).
    pub fn open(
        state_dir: &Path,
        bundle: PathBuf,
        engine: Arc<Engine>,
        adapters: Arc<Registry>,
    ) -> std::io::Result<Arc<Jobs>> {
        let dir = state_dir.join("jobs");
        std::fs::create_dir_all(&dir)?;
        let mut inner = Inner::default();
        let mut ids: Vec<String> = std::fs::read_dir(&dir)?
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| n.starts_with("job-"))
            .collect();
        ids.sort();
        let jobs = Arc::new(Jobs {
            dir,
            bundle,
            engine,
            adapters,
            inner: Mutex::new(Inner::default()),
            wake: Condvar::new(),
        });
        for id in ids {
            if let Some(n) = id.strip_prefix("job-").and_then(|n| n.parse::<u64>().ok()) {
                inner.next = inner.next.max(n);
            }
            match jobs.read(&id) {
                Ok(j) if !j.state.is_terminal() => {
                    tracing::info!(job = %id, state = ?j.state, "resuming an unfinished job");
                    inner.queue.push_back(id);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(job = %id, "unreadable job: {e}"),
            }
        }
        *jobs.lock() = inner;
        Ok(jobs)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn job_dir(&self, id: &str) -> Result<PathBuf, ApiError> {
        let ok = id
            .strip_prefix("job-")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        let d = self.dir.join(id);
        if !ok || !d.is_dir() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "job_not_found",
                format!("no job {id:?} (GET /v1/jobs lists them)"),
            ));
        }
        Ok(d)
    }

    pub fn read(&self, id: &str) -> Result<Job, ApiError> {
        let p = self.job_dir(id)?.join("job.json");
        let bytes = std::fs::read(&p).map_err(|e| io_err(&p, e))?;
        serde_json::from_slice(&bytes).map_err(|e| io_err(&p, e))
    }

    fn write(&self, job: &Job) -> Result<(), ApiError> {
        let p = self.dir.join(&job.id).join("job.json");
        let bytes = serde_json::to_vec_pretty(job).expect("job serialises");
        dpoimg::fsutil::atomic_write(&p, &bytes).map_err(|e| io_err(&p, e))
    }

    pub fn events_path(&self, id: &str) -> Result<PathBuf, ApiError> {
        Ok(self.job_dir(id)?.join("events.ndjson"))
    }

    pub fn list(&self) -> Vec<Job> {
        let mut ids: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids.iter().filter_map(|id| self.read(id).ok()).collect()
    }

    /// Validates and persists a new job, then queues it.
    pub fn submit(&self, req: JobRequest) -> Result<Job, ApiError> {
        if !["dpo", "dpok", "eval"].contains(&req.kind.as_str()) {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!(
                    "job kind {:?} is not supported; use \"dpo\", \"dpok\" or \"eval\"",
                    req.kind
                ),
            ));
        }
        let mut cfg_value = if req.config.is_null() {
            serde_json::json!({})
        } else {
            req.config
        };
        let obj = cfg_value.as_object_mut().ok_or_else(|| {
            ApiError::bad_request(
                "invalid_json",
                "`config` must be an object of DpoConfig (dpo) or DpokConfig (dpok) fields",
            )
        })?;
        for k in ["output", "resume"] {
            if obj.contains_key(k) {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    format!(
                        "`config.{k}` is set by the daemon (the job's run directory); leave it out"
                    ),
                ));
            }
        }
        let bundle = std::fs::canonicalize(&self.bundle).unwrap_or_else(|_| self.bundle.clone());
        obj.entry("bundle")
            .or_insert_with(|| serde_json::json!(bundle));
        let bad =
            |e: serde_json::Error| ApiError::bad_request("invalid_json", format!("`config`: {e}"));
        if req.kind == "eval" {
            // `bundle` was defaulted above for the trainers; eval takes it as a flag.
            obj.remove("bundle");
        }
        let mut config = match req.kind.as_str() {
            "dpok" => JobConfig::Dpok(serde_json::from_value(cfg_value).map_err(bad)?),
            "eval" => JobConfig::Eval(serde_json::from_value(cfg_value).map_err(bad)?),
            _ => JobConfig::Dpo(serde_json::from_value(cfg_value).map_err(bad)?),
        };
        if let Some(a) = &req.activate_on_success {
            // Same rules as every adapter name; the file need not exist yet.
            let probe = a
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if a.name.is_empty() || a.name.starts_with('.') || !probe || a.name.len() > 128 {
                return Err(ApiError::bad_request(
                    "adapter_name_refused",
                    format!("activate_on_success name {:?}: use A-Z a-z 0-9 . _ - (no paths, no leading dot)", a.name),
                ));
            }
        }
        let id = {
            let mut g = self.lock();
            if g.closed {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting_down",
                    "the daemon is shutting down",
                ));
            }
            g.next += 1;
            format!("job-{:06}", g.next)
        };
        let dir = self.dir.join(&id);
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let checked = match &mut config {
            JobConfig::Dpo(c) => {
                c.output = dir.join("run");
                c.resume = true;
                c.validate()
            }
            JobConfig::Dpok(c) => {
                c.output = dir.join("run");
                c.resume = true;
                c.validate()
            }
            JobConfig::Eval(e) => match e.parse(&bundle, &dir.join("eval")) {
                Ok(_) => Ok(()),
                Err(msg) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(ApiError::bad_request("invalid_request", msg));
                }
            },
        };
        if let Err(e) = checked {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(ApiError::bad_request("invalid_request", e.to_string()));
        }
        let job = Job {
            id: id.clone(),
            kind: req.kind,
            state: JobState::Queued,
            config,
            activate_on_success: req.activate_on_success,
            attempts: 0,
            step: 0,
            error: None,
            outcome: None,
            activated: None,
            result: None,
        };
        self.write(&job)?;
        self.lock().queue.push_back(id);
        self.wake.notify_one();
        Ok(job)
    }

    /// Cancels a queued or running job.
    pub fn cancel(&self, id: &str) -> Result<Job, ApiError> {
        let mut job = self.read(id)?;
        if job.state.is_terminal() {
            return Ok(job);
        }
        let mut g = self.lock();
        if let Some((rid, tok)) = &g.running {
            if rid == id {
                tok.cancel();
                drop(g);
                // The runner writes the final state when the trainer stops.
                return Ok(job);
            }
        }
        g.queue.retain(|q| q != id);
        drop(g);
        job.state = JobState::Cancelled;
        self.write(&job)?;
        Ok(job)
    }

    /// Stops taking jobs; the running one is cancelled (it checkpoints and resumes next start).
    pub fn close(&self) {
        let mut g = self.lock();
        g.closed = true;
        if let Some((_, t)) = &g.running {
            t.cancel();
        }
        drop(g);
        self.wake.notify_all();
    }

    pub fn run_worker(&self) {
        loop {
            let (id, cancel) = {
                let mut g = self.lock();
                while g.queue.is_empty() && !g.closed {
                    g = self.wake.wait(g).unwrap_or_else(|p| p.into_inner());
                }
                if g.closed {
                    return;
                }
                let id = g.queue.pop_front().expect("non-empty");
                let tok = CancelToken::new();
                g.running = Some((id.clone(), tok.clone()));
                (id, tok)
            };
            if let Err(e) = self.run_one(&id, &cancel) {
                tracing::error!(job = %id, "{e}");
            }
            self.lock().running = None;
        }
    }

    fn run_one(&self, id: &str, cancel: &CancelToken) -> Result<(), ApiError> {
        let mut job = self.read(id)?;
        job.state = JobState::Running;
        job.attempts += 1;
        self.write(&job)?;
        let ev_path = self.events_path(id)?;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&ev_path)
            .map_err(|e| io_err(&ev_path, e))?;
        let mut append = |v: &serde_json::Value, sync: bool| {
            let mut line = serde_json::to_vec(v).expect("event serialises");
            line.push(b'\n');
            let _ = log.write_all(&line);
            if sync {
                let _ = log.sync_data();
            }
        };
        append(
            &serde_json::json!({"event": "job_started", "attempt": job.attempts}),
            true,
        );
        let mut last_step = job.step;
        let mut on_event = |e: &Event| {
            let sync = matches!(e, Event::Checkpoint { .. } | Event::Finished(_));
            match e {
                Event::Step(m) => last_step = m.step,
                Event::DpokStep(m) => last_step = m.step,
                _ => {}
            }
            append(&serde_json::to_value(e).expect("event serialises"), sync);
        };
        let result = match &job.config {
            JobConfig::Dpo(c) => dpoimg::finetune::run_dpo(c, &mut on_event, cancel),
            JobConfig::Dpok(c) => dpoimg::finetune::run_dpok(c, &mut on_event, cancel),
            JobConfig::Eval(e) => {
                // Eval resumes by reusing the images already in its output directory.
                let out = self.job_dir(id)?.join("eval");
                // Err(None): cancelled; Err(Some(message)): failed.
                let outcome: Result<(), Option<String>> =
                    e.parse(&self.bundle, &out).map_err(Some).and_then(|args| {
                        dpoimg::eval::cli::run(&args, self.bundle.clone(), cancel).map_err(|e| {
                            match e {
                                dpoimg::eval::EvalError::Cancelled => None,
                                e => Some(e.to_string()),
                            }
                        })
                    });
                match outcome {
                    Ok(()) => {
                        job.state = JobState::Succeeded;
                        job.result = Some(out.join("eval.json"));
                    }
                    Err(None) if self.lock().closed => {
                        append(&serde_json::json!({"event": "job_interrupted"}), true);
                        return Ok(());
                    }
                    Err(None) => job.state = JobState::Cancelled,
                    Err(Some(m)) => {
                        job.state = JobState::Failed;
                        job.error = Some(m);
                    }
                }
                append(
                    &serde_json::json!({"event": "job_state", "done": true, "state": job.state,
                                        "error": job.error, "result": job.result}),
                    true,
                );
                return self.write(&job);
            }
        };
        job.step = last_step;
        match result {
            Ok(outcome) => {
                job.outcome = Some(outcome.clone());
                job.state = JobState::Succeeded;
                if let Some(a) = job.activate_on_success.clone() {
                    match self.activate(&a, &outcome.adapter) {
                        Ok(()) => job.activated = Some(a.name.clone()),
                        Err(e) => {
                            job.state = JobState::Failed;
                            job.error = Some(format!("activating the adapter: {}", e.message));
                        }
                    }
                }
            }
            Err(FinetuneError::Cancelled) if self.lock().closed => {
                // Shutdown, not the user: leave it `running` so the next start resumes it.
                append(&serde_json::json!({"event": "job_interrupted"}), true);
                return Ok(());
            }
            Err(FinetuneError::Cancelled) => job.state = JobState::Cancelled,
            Err(e) => {
                job.state = JobState::Failed;
                job.error = Some(e.to_string());
            }
        }
        append(
            &serde_json::json!({"event": "job_state", "done": true, "state": job.state,
                                "error": job.error, "activated": job.activated}),
            true,
        );
        self.write(&job)
    }

    fn activate(&self, a: &Activate, adapter: &Path) -> Result<(), ApiError> {
        let bytes = std::fs::read(adapter).map_err(|e| io_err(adapter, e))?;
        let dest = self
            .adapters
            .dir()
            .join(format!("{}.{}", a.name, crate::adapters::EXTENSION));
        dpoimg::fsutil::atomic_write(&dest, &bytes).map_err(|e| io_err(&dest, e))?;
        self.adapters.load(&self.engine, &a.name)?;
        if a.default {
            self.adapters.set_default(
                &self.engine,
                Some(DefaultAdapter {
                    name: a.name.clone(),
                    strength: a.strength,
                }),
            )?;
        }
        tracing::info!(adapter = %a.name, "job adapter activated");
        Ok(())
    }
}
