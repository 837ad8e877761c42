//! Blind rating: a page on an opt-in loopback TCP address (`--rating-addr 127.0.0.1:PORT`) that
//! shows pairs of images from two arms (the base model or adapters) side by side, with the sides
//! randomised and the arms hidden, and records which side a person prefers.
//!
//! A *session* is created on the Unix socket (`POST /v1/rating/sessions`): prompts × seeds × two
//! arms. The daemon generates every image through its own scheduler (so rating shares the queue
//! with applications and never bypasses its limits), writes them as a small evaluation
//! (`report.json` in the `dpoimg eval` format) and blinds them with the library's
//! [`dpoimg::eval::blind_export`] — the same seeded PCG64 side/ids as `dpoimg eval --blind-export`,
//! so a session's pairing is reproducible from its `blind_seed`. The page only ever sees
//! `blind/pairs.jsonl` (opaque ids, prompt, provenance-free PNGs); `key.json` stays in the state
//! directory.
//!
//! Votes are appended to `votes.jsonl` and fsynced before the page gets its 200, so a killed
//! daemon loses no acknowledged vote. `GET /v1/votes/export?session=ID` (Unix socket) un-blinds
//! them into a JSONL preference dataset (`prefs.jsonl` + `images/`, read by
//! `dpoimg-finetune dpo --data DIR/prefs.jsonl`) and a summary computed by
//! [`dpoimg::eval::apply_votes`] (wins, win rate, two-sided binomial p, Clopper–Pearson CI).
//!
//! The TCP side has no authentication (it is a local page), hence: loopback addresses only, a
//! `Host` header that must name a loopback host (DNS-rebinding), and votes only as
//! `application/json` (a cross-site form cannot send that without a CORS preflight, which this
//! server never grants).

use crate::adapters::Registry;
use crate::config::Config;
use crate::error::{ApiError, DaemonError};
use crate::scheduler::{Refusal, ResponseKind, Scheduler, Task};
use crate::server::AppState;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::Uri;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use dpoimg::eval::{BlindPair, EvalReport, ImageRecord, PromptResult};
use dpoimg::lora::AdapterRef;
use dpoimg::provenance::{AdapterRecord, Origin};
use dpoimg::{CancelToken, Engine, GenerateRequest};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The arm name that means "no adapter".
pub const BASE_ARM: &str = "base";
/// Most pairs (prompts × seeds) in one session.
pub const MAX_PAIRS: usize = 1000;
const PAGE: &str = include_str!("rating/page.html");
const SESSION_FILE: &str = "session.json";
const VOTES_FILE: &str = "votes.jsonl";

/// `POST /v1/rating/sessions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSpec {
    pub prompts: Vec<String>,
    /// Exactly two: `"base"` or adapter names from the adapter directory.
    pub arms: Vec<String>,
    /// One pair per prompt per seed (default `[0]`).
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Strength of the adapter arms (default 1).
    #[serde(default = "one")]
    pub strength: f32,
    #[serde(default)]
    pub negative_prompt: String,
    pub steps: Option<u32>,
    pub guidance: Option<f32>,
    pub sampler: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Seeds the side randomisation and the pair ids (default 0).
    #[serde(default)]
    pub blind_seed: u64,
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}
fn one() -> f32 {
    1.0
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase", tag = "state")]
pub enum Phase {
    Generating {
        images_done: usize,
        images_total: usize,
    },
    Ready,
    Failed {
        error: String,
    },
}

/// `session.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionFile {
    id: String,
    spec: SessionSpec,
    #[serde(flatten)]
    phase: Phase,
}

/// What a ready session serves.
struct Blinded {
    report: EvalReport,
    /// In the shuffled order of `pairs.jsonl`.
    pairs: Vec<BlindPair>,
    by_id: HashMap<String, usize>,
}

struct Votes {
    file: std::fs::File,
    voted: HashSet<String>,
}

pub struct Session {
    pub id: String,
    dir: PathBuf,
    spec: SessionSpec,
    phase: Mutex<Phase>,
    blinded: Mutex<Option<Arc<Blinded>>>,
    votes: Mutex<Votes>,
    /// Serialises exports of this session (each gets its own numbered directory).
    export_lock: tokio::sync::Mutex<()>,
}

/// The rating service: sessions under `STATE/rating/`, and the loopback address it is served on.
pub struct Rating {
    dir: PathBuf,
    pub addr: SocketAddr,
    engine: Arc<Engine>,
    scheduler: Arc<Scheduler>,
    adapters: Arc<Registry>,
    config: Config,
    sessions: Mutex<BTreeMap<String, Arc<Session>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("{}: {e}", path.display()))
}

fn not_ready(id: &str, phase: &Phase) -> ApiError {
    let what = match phase {
        Phase::Generating {
            images_done,
            images_total,
        } => format!("is still generating ({images_done} of {images_total} images); retry when its state is \"ready\""),
        Phase::Failed { error } => format!("failed: {error}; create a new session"),
        Phase::Ready => "is ready".into(),
    };
    ApiError::new(
        StatusCode::CONFLICT,
        "session_not_ready",
        format!("rating session {id} {what}"),
    )
}

/// Writes `bytes` atomically (the project's helper), mapping errors to a 500 naming the file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ApiError> {
    dpoimg::fsutil::atomic_write(path, bytes).map_err(|e| io_err(path, e))
}

impl Session {
    fn save(&self) -> Result<(), ApiError> {
        let f = SessionFile {
            id: self.id.clone(),
            spec: self.spec.clone(),
            phase: lock(&self.phase).clone(),
        };
        write_atomic(
            &self.dir.join(SESSION_FILE),
            &serde_json::to_vec_pretty(&f).expect("serialises"),
        )
    }

    fn set_phase(&self, p: Phase) {
        *lock(&self.phase) = p;
        if let Err(e) = self.save() {
            tracing::error!(session = %self.id, "saving the session: {e}");
        }
    }

    fn ready(&self) -> Result<Arc<Blinded>, ApiError> {
        if let Some(b) = lock(&self.blinded).as_ref() {
            return Ok(Arc::clone(b));
        }
        Err(not_ready(&self.id, &lock(&self.phase)))
    }

    /// The status shown on the Unix socket (arms included: that side is the owner's).
    fn status(&self, addr: SocketAddr) -> serde_json::Value {
        let phase = lock(&self.phase).clone();
        let votes = lock(&self.votes).voted.len();
        let pairs = self.spec.prompts.len() * self.spec.seeds.len();
        let mut v = serde_json::json!({
            "id": self.id,
            "arms": self.spec.arms,
            "pairs": pairs,
            "votes": votes,
            "url": format!("http://{addr}/s/{}", self.id),
            "dir": self.dir,
        });
        if let (Some(o), serde_json::Value::Object(p)) = (
            v.as_object_mut(),
            serde_json::to_value(&phase).expect("serialises"),
        ) {
            o.extend(p);
        }
        v
    }
}

/// Opens the votes file for appending; a torn last line (a crash in the middle of a write that
/// was never acknowledged) is cut off so the next vote starts on a line of its own.
fn open_votes(path: &Path) -> Result<Votes, ApiError> {
    let mut voted = HashSet::new();
    if let Ok(text) = std::fs::read(path) {
        let keep = text
            .iter()
            .rposition(|b| *b == b'\n')
            .map(|i| i + 1)
            .unwrap_or(0);
        if keep < text.len() {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| io_err(path, e))?;
            f.set_len(keep as u64).map_err(|e| io_err(path, e))?;
            f.sync_all().map_err(|e| io_err(path, e))?;
            tracing::warn!(file = %path.display(), "cut an unacknowledged partial vote line");
        }
        for line in text[..keep].split(|b| *b == b'\n') {
            if let Ok(v) = serde_json::from_slice::<VoteLine>(line) {
                voted.insert(v.id);
            }
        }
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    Ok(Votes { file, voted })
}

/// One line of `votes.jsonl` (what [`dpoimg::eval::apply_votes`] reads, plus the time).
#[derive(Debug, Serialize, Deserialize)]
struct VoteLine {
    id: String,
    choice: String,
    #[serde(default)]
    unix_ms: u64,
}

fn new_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let seed = format!(
        "{t}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    dpoimg::hash::sha256_hex(seed.as_bytes())[..16].to_string()
}

impl Rating {
    /// Binds the loopback listener and reloads the sessions under `STATE/rating`. Sessions that
    /// were still generating when the daemon stopped are generated again (deterministic: same
    /// seeds, same blind seed).
    pub async fn open(
        config: &Config,
        addr: SocketAddr,
        engine: Arc<Engine>,
        scheduler: Arc<Scheduler>,
        adapters: Arc<Registry>,
    ) -> Result<(Arc<Rating>, tokio::net::TcpListener), DaemonError> {
        if !addr.ip().is_loopback() {
            return Err(DaemonError::Config(loopback_message(addr)));
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| DaemonError::Config(format!("--rating-addr {addr}: {e}")))?;
        let bound = listener.local_addr().map_err(|e| {
            DaemonError::Config(format!(
                "--rating-addr {addr}: reading the bound address: {e}"
            ))
        })?;
        let dir = config.state_dir.join("rating");
        std::fs::create_dir_all(&dir).map_err(|e| DaemonError::Io {
            path: dir.clone(),
            message: format!("creating the rating directory: {e}"),
        })?;
        let r = Arc::new(Rating {
            dir: dir.clone(),
            addr: bound,
            engine,
            scheduler,
            adapters,
            config: config.clone(),
            sessions: Mutex::new(BTreeMap::new()),
        });
        let entries = std::fs::read_dir(&dir).map_err(|e| DaemonError::Io {
            path: dir.clone(),
            message: e.to_string(),
        })?;
        for entry in entries.flatten() {
            let sdir = entry.path();
            let Ok(bytes) = std::fs::read(sdir.join(SESSION_FILE)) else {
                continue;
            };
            let f: SessionFile = match serde_json::from_slice(&bytes) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(dir = %sdir.display(), "skipping a rating session: {e}");
                    continue;
                }
            };
            let votes = open_votes(&sdir.join(VOTES_FILE)).map_err(|e| DaemonError::Io {
                path: sdir.join(VOTES_FILE),
                message: e.message,
            })?;
            let s = Arc::new(Session {
                id: f.id.clone(),
                dir: sdir.clone(),
                spec: f.spec,
                phase: Mutex::new(f.phase.clone()),
                blinded: Mutex::new(None),
                votes: Mutex::new(votes),
                export_lock: tokio::sync::Mutex::new(()),
            });
            match f.phase {
                Phase::Ready => match load_blinded(&sdir) {
                    Ok(b) => *lock(&s.blinded) = Some(Arc::new(b)),
                    Err(e) => s.set_phase(Phase::Failed {
                        error: format!("reloading after a restart: {}", e.message),
                    }),
                },
                Phase::Generating { .. } => {
                    let (r2, s2) = (Arc::clone(&r), Arc::clone(&s));
                    tokio::spawn(async move { r2.prepare(s2).await });
                }
                Phase::Failed { .. } => {}
            }
            lock(&r.sessions).insert(f.id, s);
        }
        Ok((r, listener))
    }

    fn session(&self, id: &str) -> Result<Arc<Session>, ApiError> {
        lock(&self.sessions).get(id).cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_session",
                format!("no rating session {id:?} (GET /v1/rating/sessions lists them)"),
            )
        })
    }

    /// Checks a spec, stores it and starts generating in the background.
    async fn create(self: &Arc<Self>, spec: SessionSpec) -> Result<Arc<Session>, ApiError> {
        let bad = |m: String| ApiError::bad_request("invalid_session", m);
        if spec.prompts.is_empty() || spec.prompts.iter().any(|p| p.trim().is_empty()) {
            return Err(bad(
                "`prompts` must list at least one non-empty prompt".into()
            ));
        }
        if spec.seeds.is_empty() {
            return Err(bad("`seeds` must list at least one seed".into()));
        }
        let distinct: HashSet<&u64> = spec.seeds.iter().collect();
        if distinct.len() != spec.seeds.len() {
            return Err(bad(
                "`seeds` has a repeated seed; list each seed once".into()
            ));
        }
        if spec.arms.len() != 2 || spec.arms[0] == spec.arms[1] {
            return Err(bad(format!(
                "`arms` must name two different arms (\"{BASE_ARM}\" or adapter names), got {:?}",
                spec.arms
            )));
        }
        let n = spec.prompts.len() * spec.seeds.len();
        if n > MAX_PAIRS {
            return Err(bad(format!(
                "{n} pairs (prompts × seeds); at most {MAX_PAIRS} per session"
            )));
        }
        let c = &self.config;
        let too = |field: &str, v: u32, max: u32, flag: &str| {
            ApiError::bad_request(
                "limit_exceeded",
                format!("`{field}` {v} is over this daemon's limit {max} ({flag})"),
            )
        };
        if let Some(v) = spec.steps.filter(|v| *v > c.max_steps) {
            return Err(too("steps", v, c.max_steps, "--max-steps"));
        }
        for (f, v) in [("width", spec.width), ("height", spec.height)] {
            if let Some(v) = v.filter(|v| *v > c.max_side) {
                return Err(too(f, v, c.max_side, "--max-side"));
            }
        }
        if !spec.strength.is_finite() {
            return Err(bad("`strength` must be a finite number".into()));
        }
        // Every arm and setting is checked now, not after minutes of generation.
        let this = Arc::clone(self);
        let probe = spec.clone();
        tokio::task::spawn_blocking(move || {
            for arm in &probe.arms {
                let req = this.request(&probe, arm, &probe.prompts[0], probe.seeds[0])?;
                this.engine.batch_key(&req.0)?;
            }
            Ok::<(), ApiError>(())
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
        let id = new_id();
        let dir = self.dir.join(&id);
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let votes = open_votes(&dir.join(VOTES_FILE))?;
        let s = Arc::new(Session {
            id: id.clone(),
            dir,
            phase: Mutex::new(Phase::Generating {
                images_done: 0,
                images_total: 2 * n,
            }),
            spec,
            blinded: Mutex::new(None),
            votes: Mutex::new(votes),
            export_lock: tokio::sync::Mutex::new(()),
        });
        s.save()?;
        lock(&self.sessions).insert(id, Arc::clone(&s));
        let (r, s2) = (Arc::clone(self), Arc::clone(&s));
        tokio::spawn(async move { r.prepare(s2).await });
        Ok(s)
    }

    /// The request for one image of one arm, and its provenance origin.
    fn request(
        &self,
        spec: &SessionSpec,
        arm: &str,
        prompt: &str,
        seed: u64,
    ) -> Result<(GenerateRequest, Origin, Vec<serde_json::Value>), ApiError> {
        let mut req = GenerateRequest::new(prompt);
        req.negative_prompt = spec.negative_prompt.clone();
        req.seed = seed;
        req.steps = spec.steps;
        req.guidance = spec.guidance;
        req.width = spec.width;
        req.height = spec.height;
        req.sampler = match &spec.sampler {
            None => None,
            Some(v) => Some(v.parse().map_err(|e| {
                ApiError::bad_request("invalid_session", format!("`sampler` {v:?}: {e}"))
            })?),
        };
        let mut records = Vec::new();
        if arm != BASE_ARM {
            let a = self.adapters.get(&self.engine, arm)?;
            records.push(serde_json::json!({
                "path": self.adapters.confine(arm)?.display().to_string(),
                "name": arm,
                "strength": spec.strength,
                "sha256": a.hash,
            }));
            req.adapters.push(AdapterRef {
                adapter: a,
                strength: spec.strength,
            });
        }
        let bundle = self.engine.bundle();
        let origin = Origin {
            prompt: prompt.to_string(),
            negative_prompt: spec.negative_prompt.clone(),
            seed,
            adapters: req
                .adapters
                .iter()
                .map(|a| AdapterRecord {
                    name: a.adapter.name.clone(),
                    strength: a.strength,
                    sha256: a.adapter.hash.clone(),
                })
                .collect(),
            bundle: bundle.manifest().name.clone(),
            bundle_sha256: bundle.hash().to_string(),
            init_latents_file: None,
        };
        Ok((req, origin, records))
    }

    /// Generates one image through the scheduler, waiting (not failing) while its queue is full.
    async fn generate_one(
        &self,
        req: GenerateRequest,
        origin: Origin,
    ) -> Result<(Vec<u8>, serde_json::Value), ApiError> {
        let key = self.engine.batch_key(&req)?;
        loop {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let task = Task {
                id: 0,
                req: req.clone(),
                key: key.clone(),
                origin: origin.clone(),
                response: ResponseKind::Base64,
                events: tx,
                cancel: CancelToken::new(),
                admitted: Instant::now(),
            };
            match self.scheduler.submit(task) {
                Ok(()) => {}
                Err(Refusal::Full(_)) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(Refusal::ShuttingDown) => {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "shutting_down",
                        "the daemon is shutting down (the session is generated again at the next start)",
                    ))
                }
            }
            while let Some(ev) = rx.recv().await {
                match ev["event"].as_str() {
                    Some("done") => {
                        let b64 = ev["images"][0]["png_base64"].as_str().unwrap_or_default();
                        let png = base64::engine::general_purpose::STANDARD
                            .decode(b64)
                            .map_err(|e| ApiError::internal(format!("done event: {e}")))?;
                        return Ok((png, ev));
                    }
                    Some("error") => {
                        return Err(ApiError::internal(format!(
                            "generation failed: {}: {}",
                            ev["code"].as_str().unwrap_or(""),
                            ev["message"].as_str().unwrap_or("")
                        )))
                    }
                    _ => {}
                }
            }
            return Err(ApiError::internal(
                "the generation stream ended without a result",
            ));
        }
    }

    /// Generates every image, writes `report.json`, blinds, and marks the session ready.
    async fn prepare(self: Arc<Self>, s: Arc<Session>) {
        match self.prepare_inner(&s).await {
            Ok(b) => {
                *lock(&s.blinded) = Some(Arc::new(b));
                s.set_phase(Phase::Ready);
                tracing::info!(session = %s.id, "rating session ready");
            }
            Err(e) if e.code == "shutting_down" => {}
            Err(e) => {
                tracing::error!(session = %s.id, "rating session failed: {}", e.message);
                s.set_phase(Phase::Failed { error: e.message });
            }
        }
    }

    async fn prepare_inner(&self, s: &Session) -> Result<Blinded, ApiError> {
        let spec = &s.spec;
        let total = 2 * spec.prompts.len() * spec.seeds.len();
        let arms_dir = s.dir.join("arms");
        let mut done = 0;
        let mut prompts: Vec<PromptResult> = spec
            .prompts
            .iter()
            .enumerate()
            .map(|(index, p)| PromptResult {
                index,
                category: None,
                prompt: p.clone(),
                grid: String::new(),
                images: BTreeMap::new(),
                means: BTreeMap::new(),
            })
            .collect();
        let mut arms = Vec::new();
        let mut first_done: Option<serde_json::Value> = None;
        for (ai, arm) in spec.arms.iter().enumerate() {
            let mut record = Vec::new();
            for (pi, prompt) in spec.prompts.iter().enumerate() {
                for (si, &seed) in spec.seeds.iter().enumerate() {
                    let rel = format!("{ai}/{pi}-{si}.png");
                    let path = arms_dir.join(&rel);
                    // After a restart, images already written are reused (same request, same
                    // image: generation is deterministic per seed).
                    let png = match std::fs::read(&path) {
                        Ok(p) if first_done.is_some() => p,
                        _ => {
                            let (req, origin, rec) = self.request(spec, arm, prompt, seed)?;
                            record = rec;
                            let (png, ev) = self.generate_one(req, origin).await?;
                            first_done.get_or_insert(ev);
                            std::fs::create_dir_all(path.parent().expect("has a parent"))
                                .map_err(|e| io_err(&path, e))?;
                            write_atomic(&path, &png)?;
                            png
                        }
                    };
                    prompts[pi]
                        .images
                        .entry(arm.clone())
                        .or_default()
                        .push(ImageRecord {
                            file: rel,
                            seed,
                            sha256: dpoimg::hash::sha256_hex(&png),
                            scores: BTreeMap::new(),
                        });
                    done += 1;
                    s.set_phase_quiet(Phase::Generating {
                        images_done: done,
                        images_total: total,
                    });
                }
            }
            if record.is_empty() && arm != BASE_ARM {
                record = self.request(spec, arm, &spec.prompts[0], 0)?.2;
            }
            arms.push(serde_json::json!({"name": arm, "adapters": record}));
        }
        let ev = first_done.unwrap_or_default();
        let bundle = self.engine.bundle();
        // The eval module's settings and arm records are built through their JSON form (the
        // `eval.json` format is the documented interface; its Rust structs are internal).
        let report: EvalReport = serde_json::from_value(serde_json::json!({
            "format": "dpoimg-eval",
            "version": 1,
            "software": format!("dpoimgd {}", env!("CARGO_PKG_VERSION")),
            "bundle": bundle.manifest().name,
            "bundle_sha256": bundle.hash(),
            "settings": {
                "images_per_prompt": spec.seeds.len(),
                "seed": spec.seeds[0],
                "seed_rule": "listed seeds (dpoimgd rating session)",
                "negative_prompt": spec.negative_prompt,
                "sampler": ev["sampler"],
                "steps": ev["steps"],
                "guidance": ev["guidance"],
                "width": ev["width"],
                "height": ev["height"],
                "bootstrap_resamples": 0,
                "bootstrap_seed": 0,
                "bootstrap_method": "none",
                "confidence": 0.95,
            },
            "arms": arms,
            "metrics": [],
            "images_generated": total,
            "images_reused": 0,
            "prompts": prompts,
            "overall": {},
            "categories": {},
            "pairs": [],
            "set_metrics": [],
            "human": null,
        }))
        .map_err(|e| ApiError::internal(format!("building report.json: {e}")))?;
        write_atomic(
            &s.dir.join("report.json"),
            &serde_json::to_vec_pretty(&report).expect("serialises"),
        )?;
        let blind = s.dir.join("blind");
        if blind.exists() {
            std::fs::remove_dir_all(&blind).map_err(|e| io_err(&blind, e))?;
        }
        let (d, seed) = (s.dir.clone(), spec.blind_seed);
        let r2 = report.clone();
        tokio::task::spawn_blocking(move || {
            dpoimg::eval::blind_export(
                &d.join("arms"),
                &r2,
                &d.join("blind"),
                &d.join("key.json"),
                seed,
            )
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(format!("blinding: {e}")))?;
        load_blinded(&s.dir)
    }
}

impl Session {
    /// Progress updates are kept in memory only (the file says "generating" either way).
    fn set_phase_quiet(&self, p: Phase) {
        *lock(&self.phase) = p;
    }
}

fn load_blinded(dir: &Path) -> Result<Blinded, ApiError> {
    let rp = dir.join("report.json");
    let report: EvalReport =
        serde_json::from_slice(&std::fs::read(&rp).map_err(|e| io_err(&rp, e))?)
            .map_err(|e| io_err(&rp, e))?;
    let pp = dir.join("blind/pairs.jsonl");
    let text = std::fs::read_to_string(&pp).map_err(|e| io_err(&pp, e))?;
    let mut pairs = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        pairs.push(serde_json::from_str::<BlindPair>(line).map_err(|e| io_err(&pp, e))?);
    }
    let by_id = pairs
        .iter()
        .enumerate()
        .map(|(i, p)| (p.id.clone(), i))
        .collect();
    Ok(Blinded {
        report,
        pairs,
        by_id,
    })
}

fn loopback_message(addr: SocketAddr) -> String {
    format!(
        "--rating-addr {addr} is not a loopback address: the rating page has no login, so it is \
         served only on 127.0.0.1 or ::1 (e.g. --rating-addr 127.0.0.1:8765; port 0 picks a free \
         port, reported by /v1/health as `rating_addr`)"
    )
}

/// Checks a `--rating-addr` value at start-up (before the slow engine load).
pub fn check_addr(addr: SocketAddr) -> Result<(), DaemonError> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(DaemonError::Config(loopback_message(addr)))
    }
}

// ----- Unix socket routes (the owner's side: arms are visible here) -----

type Shared = Arc<AppState>;

/// `/v1/rating/sessions`, `/v1/rating/sessions/{id}` and `/v1/votes/export`, merged into the
/// daemon's Unix-socket router.
pub fn socket_routes() -> Router<Shared> {
    Router::new()
        .route(
            "/v1/rating/sessions",
            get(list_sessions).post(create_session),
        )
        .route("/v1/rating/sessions/{id}", get(get_session))
        .route("/v1/votes/export", get(export_votes))
}

fn enabled(s: &AppState) -> Result<&Arc<Rating>, ApiError> {
    s.rating.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "rating_disabled",
            "blind rating is off: start dpoimgd with --rating-addr 127.0.0.1:PORT",
        )
    })
}

async fn create_session(
    State(s): State<Shared>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let r = enabled(&s)?;
    let spec: SessionSpec = crate::server::parse_json(body, s.config.max_body_bytes)?;
    let session = r.create(spec).await?;
    Ok((StatusCode::CREATED, Json(session.status(r.addr))).into_response())
}

async fn list_sessions(State(s): State<Shared>) -> Result<Json<serde_json::Value>, ApiError> {
    let r = enabled(&s)?;
    let all: Vec<Arc<Session>> = lock(&r.sessions).values().cloned().collect();
    let v: Vec<serde_json::Value> = all.iter().map(|x| x.status(r.addr)).collect();
    Ok(Json(serde_json::json!({"sessions": v})))
}

async fn get_session(
    State(s): State<Shared>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let r = enabled(&s)?;
    Ok(Json(r.session(&id)?.status(r.addr)))
}

/// Un-blinds the votes into `STATE/rating/ID/exports/N/` (prefs.jsonl, images/, summary.json).
async fn export_votes(
    State(s): State<Shared>,
    uri: Uri,
) -> Result<Json<serde_json::Value>, ApiError> {
    let r = enabled(&s)?;
    // Session ids are 16 hex digits, so the query needs no percent-decoding.
    let id = uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("session="))
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            ApiError::bad_request(
                "missing_session",
                "name the session: GET /v1/votes/export?session=ID",
            )
        })?;
    let session = r.session(&id)?;
    let blinded = session.ready()?;
    let _guard = session.export_lock.lock().await;
    let s2 = Arc::clone(&session);
    tokio::task::spawn_blocking(move || export(&s2, &blinded))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map(Json)
}

fn export(s: &Session, b: &Blinded) -> Result<serde_json::Value, ApiError> {
    let votes_path = s.dir.join(VOTES_FILE);
    // Read under the votes lock: every line in the file is complete and acknowledged.
    let text = {
        let _v = lock(&s.votes);
        std::fs::read_to_string(&votes_path).map_err(|e| io_err(&votes_path, e))?
    };
    let votes: Vec<VoteLine> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .map_err(|e| io_err(&votes_path, e))?;
    if votes.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_votes",
            format!(
                "rating session {} has no votes yet; rate some pairs at its page first",
                s.id
            ),
        ));
    }
    let exports = s.dir.join("exports");
    std::fs::create_dir_all(&exports).map_err(|e| io_err(&exports, e))?;
    let n = std::fs::read_dir(&exports)
        .map_err(|e| io_err(&exports, e))?
        .count()
        + 1;
    let out = exports.join(n.to_string());
    std::fs::create_dir_all(out.join("images")).map_err(|e| io_err(&out, e))?;
    let mut lines = String::new();
    let mut pairs = 0;
    for v in &votes {
        let Some(&i) = b.by_id.get(&v.id) else {
            return Err(io_err(
                &votes_path,
                format!("vote for unknown pair {}", v.id),
            ));
        };
        let p = &b.pairs[i];
        let (chosen, rejected) = match v.choice.as_str() {
            "left" => (&p.left, &p.right),
            "right" => (&p.right, &p.left),
            _ => continue,
        };
        for rel in [chosen, rejected] {
            let src = s.dir.join("blind").join(rel);
            let dst = out.join(rel);
            let bytes = std::fs::read(&src).map_err(|e| io_err(&src, e))?;
            write_atomic(&dst, &bytes)?;
        }
        lines.push_str(
            &serde_json::to_string(&serde_json::json!({
                "prompt": p.prompt, "chosen": chosen, "rejected": rejected, "pair": p.id,
            }))
            .expect("serialises"),
        );
        lines.push('\n');
        pairs += 1;
    }
    let dataset = out.join("prefs.jsonl");
    write_atomic(&dataset, lines.as_bytes())?;
    // The summary is the library's un-blinding (the same numbers as `dpoimg eval --votes`).
    let votes_copy = out.join("votes.jsonl");
    write_atomic(&votes_copy, text.as_bytes())?;
    let mut report = b.report.clone();
    dpoimg::eval::apply_votes(&mut report, &votes_copy, &s.dir.join("key.json"))
        .map_err(|e| ApiError::internal(format!("un-blinding the votes: {e}")))?;
    let h = report
        .human
        .as_ref()
        .and_then(|h| h.pairs.first())
        .ok_or_else(|| ApiError::internal("un-blinding produced no arm pair"))?;
    let summary = serde_json::json!({
        "session": s.id,
        "arms": [h.a, h.b],
        "votes": h.votes,
        "ties": h.ties,
        "wins": {h.a.clone(): h.a_wins, h.b.clone(): h.b_wins},
        "win_rate_arm": h.a,
        "win_rate": h.win_rate,
        "p": h.p,
        "test": "two-sided exact binomial test of wins vs losses (ties dropped), H0: 0.5",
        "confidence": report.settings.confidence,
        "ci_low": h.ci_low,
        "ci_high": h.ci_high,
        "ci_method": "Clopper-Pearson",
    });
    write_atomic(
        &out.join("summary.json"),
        &serde_json::to_vec_pretty(&summary).expect("serialises"),
    )?;
    Ok(serde_json::json!({
        "session": s.id,
        "dir": out,
        "dataset": dataset,
        "preference_pairs": pairs,
        "summary": summary,
    }))
}

// ----- the loopback TCP page (the rater's side: no arm names ever) -----

type Rated = Arc<Rating>;

/// Serves the page until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    rating: Rated,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/", get(index))
        .route("/s/{id}", get(page))
        .route("/api/s/{id}/next", get(next_pair))
        .route("/api/s/{id}/img/{pair}/{side}", get(image))
        .route("/api/s/{id}/votes", post(vote))
        .fallback(page_not_found)
        .layer(axum::extract::DefaultBodyLimit::max(4096))
        .layer(middleware::from_fn(loopback_host))
        .with_state(rating);
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|v| *v).await;
        })
        .await;
    if let Err(e) = r {
        tracing::error!("rating page server: {e}");
    }
}

/// Refuses requests whose `Host` is not a loopback name (a DNS-rebinding page would send its
/// own host name).
async fn loopback_host(req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    let ok = matches!(name, "localhost" | "[::1]")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !ok {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "host_refused",
            format!(
                "Host {host:?} is not a loopback name; open the page as http://127.0.0.1:PORT/"
            ),
        )
        .into_response();
    }
    next.run(req).await
}

async fn page_not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no page {}; open /s/SESSION_ID", req.uri().path()),
    )
}

async fn index() -> Html<&'static str> {
    Html("<!doctype html><title>dpoimgd rating</title><p>Open the URL of a rating session: /s/SESSION_ID (POST /v1/rating/sessions on the daemon's socket returns it).</p>")
}

async fn page(State(r): State<Rated>, UrlPath(id): UrlPath<String>) -> Result<Response, ApiError> {
    r.session(&id)?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Html(PAGE)).into_response())
}

async fn next_pair(
    State(r): State<Rated>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let s = r.session(&id)?;
    let phase = lock(&s.phase).clone();
    let Some(b) = lock(&s.blinded).clone() else {
        // Still generating, or failed: the page shows the state.
        return Ok(Json(serde_json::to_value(&phase).expect("serialises")));
    };
    let voted = lock(&s.votes).voted.clone();
    let total = b.pairs.len();
    let remaining = b.pairs.iter().filter(|p| !voted.contains(&p.id)).count();
    let Some(p) = b.pairs.iter().find(|p| !voted.contains(&p.id)) else {
        return Ok(Json(serde_json::json!({"state": "done", "total": total})));
    };
    Ok(Json(serde_json::json!({
        "state": "ready",
        "total": total,
        "remaining": remaining,
        "pair": {
            "id": p.id,
            "prompt": p.prompt,
            "left": format!("/api/s/{id}/img/{}/L", p.id),
            "right": format!("/api/s/{id}/img/{}/R", p.id),
        },
    })))
}

fn unknown_pair(pair: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_pair",
        format!("no pair {pair:?} in this rating session; vote for the pair /next returned"),
    )
}

async fn image(
    State(r): State<Rated>,
    UrlPath((id, pair, side)): UrlPath<(String, String, String)>,
) -> Result<Response, ApiError> {
    let s = r.session(&id)?;
    let b = s.ready()?;
    let &i = b.by_id.get(&pair).ok_or_else(|| unknown_pair(&pair))?;
    let rel = match side.as_str() {
        "L" => &b.pairs[i].left,
        "R" => &b.pairs[i].right,
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_side",
                "side must be L or R",
            ))
        }
    };
    let path = s.dir.join("blind").join(rel);
    let bytes = tokio::fs::read(&path).await.map_err(|e| io_err(&path, e))?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        bytes,
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VoteBody {
    id: String,
    choice: String,
}

async fn vote(
    State(r): State<Rated>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !json_type {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "json_required",
            "send the vote as Content-Type: application/json",
        ));
    }
    let v: VoteBody = crate::server::parse_json(body, 4096)?;
    if !matches!(v.choice.as_str(), "left" | "right" | "tie") {
        return Err(ApiError::bad_request(
            "invalid_choice",
            format!(
                "`choice` {:?} is not one of \"left\", \"right\", \"tie\"",
                v.choice
            ),
        ));
    }
    let s = r.session(&id)?;
    let b = s.ready()?;
    if !b.by_id.contains_key(&v.id) {
        return Err(unknown_pair(&v.id));
    }
    let s2 = Arc::clone(&s);
    let remaining = tokio::task::spawn_blocking(move || -> Result<usize, ApiError> {
        let mut votes = lock(&s2.votes);
        if votes.voted.contains(&v.id) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "already_voted",
                format!(
                    "pair {:?} already has a vote; each pair is rated once",
                    v.id
                ),
            ));
        }
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let mut line = serde_json::to_vec(&VoteLine {
            id: v.id.clone(),
            choice: v.choice.clone(),
            unix_ms,
        })
        .expect("serialises");
        line.push(b'\n');
        let path = s2.dir.join(VOTES_FILE);
        // One write of the whole line, then fsync: only then is the vote acknowledged.
        votes
            .file
            .write_all(&line)
            .and_then(|_| votes.file.sync_data())
            .map_err(|e| io_err(&path, e))?;
        votes.voted.insert(v.id);
        Ok(b.pairs.len() - votes.voted.len())
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(
        serde_json::json!({"recorded": true, "remaining": remaining}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crash in the middle of a vote's write leaves a partial line that was never acknowledged:
    /// it is cut, the complete votes are kept, and the next vote starts on its own line.
    #[test]
    fn torn_last_vote_line_is_cut_and_appends_stay_line_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(VOTES_FILE);
        let whole = "{\"id\":\"a\",\"choice\":\"left\",\"unix_ms\":1}\n";
        std::fs::write(&path, format!("{whole}{{\"id\":\"b\",\"cho")).unwrap();
        let mut v = open_votes(&path).unwrap();
        assert_eq!(v.voted, HashSet::from(["a".to_string()]));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), whole);
        v.file
            .write_all(b"{\"id\":\"c\",\"choice\":\"tie\"}\n")
            .unwrap();
        drop(v);
        let v = open_votes(&path).unwrap();
        assert_eq!(v.voted, HashSet::from(["a".to_string(), "c".to_string()]));
    }

    #[test]
    fn only_loopback_addresses_pass() {
        for ok in ["127.0.0.1:0", "127.0.0.2:8765", "[::1]:0"] {
            assert!(check_addr(ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for bad in ["0.0.0.0:0", "10.0.0.1:80", "[::]:0"] {
            let e = check_addr(bad.parse().unwrap()).unwrap_err().to_string();
            assert!(e.contains("not a loopback address"), "{e}");
        }
    }
}
