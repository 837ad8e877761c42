//! Routes, request parsing and the daemon's life cycle: bind, serve, and on SIGTERM/SIGINT stop
//! accepting, let in-flight requests finish (cancelling them after the grace period), remove the
//! socket.

use crate::adapters::{DefaultAdapter, Registry};
use crate::config::Config;
use crate::error::{ApiError, DaemonError};
use crate::metrics::Metrics;
use crate::scheduler::{error_event, Refusal, ResponseKind, Scheduler, Task};
use crate::socket::{self, PeerCheckedListener};
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dpoimg::lora::AdapterRef;
use dpoimg::provenance::{AdapterRecord, Origin};
use dpoimg::{CancelToken, Engine, EngineOptions, GenerateRequest};
use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct AppState {
    pub config: Config,
    pub engine: Arc<Engine>,
    pub scheduler: Arc<Scheduler>,
    pub adapters: Arc<Registry>,
    pub jobs: Arc<crate::jobs::Jobs>,
    pub metrics: Arc<Metrics>,
    /// The blind rating service, when `--rating-addr` is given.
    pub rating: Option<Arc<crate::rating::Rating>>,
    /// The reward model of `--reward`, for `POST /v1/score`.
    pub reward: Option<Arc<crate::reward::Reward>>,
    next_id: AtomicU64,
    started: Instant,
}

type Shared = Arc<AppState>;

/// Opens the engine and runs the daemon until SIGTERM/SIGINT.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    for (what, dir) in [
        ("state", &config.state_dir),
        ("output", &config.output_dir),
        ("adapter", &config.adapter_dir),
    ] {
        std::fs::create_dir_all(dir).map_err(|e| DaemonError::Io {
            path: dir.clone(),
            message: format!("creating the {what} directory: {e}"),
        })?;
    }
    // Bind before the slow engine load, so a second daemon fails at once and clients can connect
    // (health answers only once the engine is up: until then the socket accepts and waits).
    let listener = socket::bind(&config.socket)?;
    let opts = EngineOptions {
        session: dpoimg::runtime::SessionOptions {
            device: config.device,
            intra_threads: config.threads,
            inter_threads: 0,
            optimization: Default::default(),
        },
        verify: if config.no_verify {
            dpoimg::bundle::Verify::Quick
        } else {
            dpoimg::bundle::Verify::Full
        },
        ort_library: config.ort_lib.clone(),
    };
    let bundle = config.bundle.clone();
    let engine = match tokio::task::spawn_blocking(move || Engine::open(&bundle, &opts)).await {
        Ok(Ok(e)) => Arc::new(e),
        Ok(Err(e)) => {
            let _ = std::fs::remove_file(&config.socket);
            return Err(e.into());
        }
        Err(e) => {
            let _ = std::fs::remove_file(&config.socket);
            return Err(DaemonError::Config(format!("engine loader panicked: {e}")));
        }
    };
    let reward = match crate::reward::open(&config).await {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&config.socket);
            return Err(e);
        }
    };
    let metrics = Arc::new(Metrics::default());
    let scheduler = Arc::new(Scheduler::new(
        config.queue_len,
        config.max_batch,
        Duration::from_millis(config.batch_window_ms),
        config.output_dir.clone(),
        Arc::clone(&metrics),
    ));
    let worker = {
        let s = Arc::clone(&scheduler);
        let e = Arc::clone(&engine);
        std::thread::Builder::new()
            .name("dpoimgd-engine".into())
            .spawn(move || s.run_worker(&e))
            .map_err(|e| DaemonError::Config(format!("starting the engine thread: {e}")))?
    };
    let adapters = Arc::new(Registry::new(config.adapter_dir.clone()));
    let jobs = crate::jobs::Jobs::open(
        &config.state_dir,
        config.bundle.clone(),
        Arc::clone(&engine),
        Arc::clone(&adapters),
    )
    .map_err(|e| DaemonError::Io {
        path: config.state_dir.join("jobs"),
        message: e.to_string(),
    })?;
    let job_worker = {
        let j = Arc::clone(&jobs);
        std::thread::Builder::new()
            .name("dpoimgd-jobs".into())
            .spawn(move || j.run_worker())
            .map_err(|e| DaemonError::Config(format!("starting the job thread: {e}")))?
    };
    let rating = match config.rating_addr {
        Some(addr) => Some(
            crate::rating::Rating::open(
                &config,
                addr,
                Arc::clone(&engine),
                Arc::clone(&scheduler),
                Arc::clone(&adapters),
            )
            .await?,
        ),
        None => None,
    };
    let state = Arc::new(AppState {
        reward,
        rating: rating.as_ref().map(|(r, _)| Arc::clone(r)),
        adapters,
        jobs: Arc::clone(&jobs),
        config: config.clone(),
        engine,
        scheduler: Arc::clone(&scheduler),
        metrics: Arc::clone(&metrics),
        next_id: AtomicU64::new(1),
        started: Instant::now(),
    });
    let app = router(Arc::clone(&state));
    let listener = PeerCheckedListener {
        inner: listener,
        uid: socket::my_uid(),
        metrics: Arc::clone(&metrics),
    };
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    tracing::info!(socket = %config.socket.display(), "dpoimgd listening");
    eprintln!("dpoimgd: listening on {}", config.socket.display());
    if let Some((r, tcp)) = rating {
        tracing::info!(addr = %r.addr, "blind rating page listening");
        eprintln!("dpoimgd: rating page on http://{}/", r.addr);
        tokio::spawn(crate::rating::serve(tcp, r, stop_rx.clone()));
    }
    let mut rx2 = stop_rx.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx2.wait_for(|v| *v).await;
            })
            .await
    });
    let _ = stop_rx.wait_for(|v| *v).await;
    tracing::info!("shutting down: no new connections; finishing in-flight requests");
    scheduler.close();
    jobs.close();
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let mut server = server;
    let res = tokio::select! {
        r = &mut server => r,
        _ = tokio::time::sleep(grace) => {
            tracing::warn!("grace period over: cancelling in-flight requests");
            scheduler.cancel_all();
            match tokio::time::timeout(Duration::from_secs(10), &mut server).await {
                Ok(r) => r,
                Err(_) => { server.abort(); Ok(Ok(())) }
            }
        }
    };
    if let Ok(Err(e)) = res {
        tracing::error!("server: {e}");
    }
    scheduler.cancel_all();
    let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    let _ = tokio::task::spawn_blocking(move || job_worker.join()).await;
    let _ = std::fs::remove_file(&config.socket);
    eprintln!("dpoimgd: stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

pub fn router(state: Shared) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/v1/version", get(version))
        .route("/v1/health", get(health))
        .route("/v1/metrics", get(metrics))
        .route("/v1/generate", post(generate))
        .route("/v1/adapters", get(list_adapters).post(post_adapters))
        .route("/v1/jobs", get(list_jobs).post(post_job))
        .route("/v1/jobs/{id}", get(get_job).delete(cancel_job))
        .route("/v1/jobs/{id}/events", get(job_events))
        .route(
            "/v1/score",
            post(crate::reward::score)
                .layer(DefaultBodyLimit::max(state.config.max_score_body_bytes)),
        )
        .merge(crate::rating::socket_routes())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), count))
        .with_state(state)
}

async fn count(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "other".into());
    let resp = next.run(req).await;
    s.metrics.request(&method, &route, resp.status().as_u16());
    resp
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no route {} {}; the API is under /v1/ (see docs/daemon.md)",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn version(State(s): State<Shared>) -> Json<serde_json::Value> {
    let b = s.engine.bundle();
    Json(serde_json::json!({
        "name": "dpoimgd",
        "version": env!("CARGO_PKG_VERSION"),
        "api": crate::API_VERSION,
        "bundle": b.manifest().name,
        "bundle_sha256": b.hash(),
        "device": s.engine.device().to_string(),
    }))
}

async fn health(State(s): State<Shared>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "uptime_seconds": s.started.elapsed().as_secs_f64(),
        "queue_depth": s.metrics.queue_depth.load(Ordering::SeqCst),
        "queue_len": s.config.queue_len,
        "rating_addr": s.rating.as_ref().map(|r| r.addr.to_string()),
    }))
}

async fn metrics(State(s): State<Shared>) -> Response {
    let mut text = s.metrics.render(s.config.queue_len);
    let jobs = s.jobs.list();
    text.push_str("# HELP dpoimgd_jobs Fine-tune jobs by state.\n# TYPE dpoimgd_jobs gauge\n");
    for st in ["queued", "running", "succeeded", "failed", "cancelled"] {
        let n = jobs
            .iter()
            .filter(|j| {
                serde_json::to_value(j.state)
                    .ok()
                    .as_ref()
                    .and_then(|v| v.as_str())
                    == Some(st)
            })
            .count();
        text.push_str(&format!("dpoimgd_jobs{{state=\"{st}\"}} {n}\n"));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Reads a JSON body with errors that say what is wrong (size, syntax, field).
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "request body is over the daemon's limit of {limit} bytes (--max-body-bytes)"
                ),
            )
        } else {
            ApiError::bad_request("bad_body", e.body_text())
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!(
                "request body: {e} (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdapterSpec {
    name: String,
    #[serde(default = "one")]
    strength: f32,
}

fn one() -> f32 {
    1.0
}
fn one_u32() -> u32 {
    1
}

/// `POST /v1/generate`: dpoimg::GenerateRequest's fields, adapters by name, and `response`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateBody {
    prompt: String,
    #[serde(default)]
    negative_prompt: String,
    #[serde(default)]
    seed: u64,
    steps: Option<u32>,
    guidance: Option<f32>,
    sampler: Option<String>,
    #[serde(default)]
    eta: f64,
    width: Option<u32>,
    height: Option<u32>,
    #[serde(default = "one_u32")]
    count: u32,
    /// Absent: the default adapter, if one is set; `[]`: none.
    adapters: Option<Vec<AdapterSpec>>,
    #[serde(default)]
    response: ResponseKind,
}

/// Holds a request's cancel token; dropping the response stream (the client went away) cancels.
struct CancelOnDrop(CancelToken);
impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

async fn generate(
    State(s): State<Shared>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let b: GenerateBody = parse_json(body, s.config.max_body_bytes)?;
    let c = &s.config;
    let too = |field: &str, v: u32, max: u32, flag: &str| {
        ApiError::bad_request(
            "limit_exceeded",
            format!("`{field}` {v} is over this daemon's limit {max} ({flag})"),
        )
    };
    if let Some(v) = b.steps.filter(|v| *v > c.max_steps) {
        return Err(too("steps", v, c.max_steps, "--max-steps"));
    }
    for (f, v) in [("width", b.width), ("height", b.height)] {
        if let Some(v) = v.filter(|v| *v > c.max_side) {
            return Err(too(f, v, c.max_side, "--max-side"));
        }
    }
    if b.count > c.max_count {
        return Err(too("count", b.count, c.max_count, "--max-count"));
    }
    let sampler = match &b.sampler {
        None => None,
        Some(v) => Some(v.parse().map_err(|e| {
            ApiError::bad_request("invalid_request", format!("`sampler` {v:?}: {e}"))
        })?),
    };
    let specs: Vec<(String, f32)> = match b.adapters {
        Some(v) => v.into_iter().map(|a| (a.name, a.strength)).collect(),
        None => s
            .adapters
            .default_adapter()
            .map(|d| vec![(d.name, d.strength)])
            .unwrap_or_default(),
    };
    if specs.len() > dpoimg::limits::MAX_ADAPTERS {
        return Err(ApiError::bad_request(
            "limit_exceeded",
            format!(
                "{} adapters; at most {}",
                specs.len(),
                dpoimg::limits::MAX_ADAPTERS
            ),
        ));
    }
    let s2 = Arc::clone(&s);
    let adapters = tokio::task::spawn_blocking(move || {
        specs
            .iter()
            .map(|(n, st)| {
                Ok((
                    n.clone(),
                    AdapterRef {
                        adapter: s2.adapters.get(&s2.engine, n)?,
                        strength: *st,
                    },
                ))
            })
            .collect::<Result<Vec<_>, ApiError>>()
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    let mut req = GenerateRequest::new(b.prompt.clone());
    req.negative_prompt = b.negative_prompt.clone();
    req.seed = b.seed;
    req.steps = b.steps;
    req.guidance = b.guidance;
    req.sampler = sampler;
    req.eta = b.eta;
    req.width = b.width;
    req.height = b.height;
    req.count = b.count;
    req.adapters = adapters.iter().map(|(_, a)| a.clone()).collect();
    let key = s.engine.batch_key(&req)?;
    let bundle = s.engine.bundle();
    let origin = Origin {
        prompt: b.prompt,
        negative_prompt: b.negative_prompt,
        seed: b.seed,
        adapters: adapters
            .iter()
            .map(|(_, a)| AdapterRecord {
                name: a.adapter.name.clone(),
                strength: a.strength,
                sha256: a.adapter.hash.clone(),
            })
            .collect(),
        bundle: bundle.manifest().name.clone(),
        bundle_sha256: bundle.hash().to_string(),
        init_latents_file: None,
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    let cancel = CancelToken::new();
    let id = s.next_id.fetch_add(1, Ordering::Relaxed);
    let task = Task {
        id,
        req,
        key,
        origin,
        response: b.response,
        events: tx.clone(),
        cancel: cancel.clone(),
        admitted: Instant::now(),
    };
    match s.scheduler.submit(task) {
        Ok(()) => {}
        Err(Refusal::Full(depth)) => {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "queue_full",
                format!(
                    "{depth} requests are already waiting or running (--queue-len {}); retry later",
                    s.config.queue_len
                ),
            ))
        }
        Err(Refusal::ShuttingDown) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the daemon is shutting down",
            ))
        }
    }
    drop(tx);
    // NDJSON: one JSON object per line, written as produced; the stream ends after `done` or
    // `error`. The guard rides in the stream's state: when hyper drops the body because the
    // client went away, the request is cancelled (also inside a running ONNX Runtime call).
    let guard = CancelOnDrop(cancel);
    let stream =
        futures_util::stream::unfold((rx, guard, false), |(mut rx, guard, finished)| async move {
            if finished {
                return None;
            }
            let ev = match rx.recv().await {
                Some(ev) => ev,
                None => error_event(&ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cancelled",
                    "the request was cancelled before it ran (the daemon is shutting down)",
                )),
            };
            let last = ev["done"].as_bool() == Some(true);
            let mut line = serde_json::to_vec(&ev).expect("events serialise");
            line.push(b'\n');
            Some((
                Ok::<Bytes, std::io::Error>(Bytes::from(line)),
                (rx, guard, last),
            ))
        });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, tag = "action", rename_all = "snake_case")]
enum AdapterAction {
    /// (Re)reads `ADAPTER_DIR/NAME.safetensors`: the hot swap.
    Load {
        name: String,
    },
    Unload {
        name: String,
    },
    /// Applied to requests that do not list adapters; `name: null` clears it.
    SetDefault {
        name: Option<String>,
        #[serde(default = "one")]
        strength: f32,
    },
}

async fn list_adapters(State(s): State<Shared>) -> Json<serde_json::Value> {
    Json(s.adapters.list())
}

async fn post_adapters(
    State(s): State<Shared>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let action: AdapterAction = parse_json(body, s.config.max_body_bytes)?;
    let s2 = Arc::clone(&s);
    tokio::task::spawn_blocking(move || -> Result<serde_json::Value, ApiError> {
        match action {
            AdapterAction::Load { name } => {
                let a = s2.adapters.load(&s2.engine, &name)?;
                tracing::info!(adapter = %name, sha256 = %a.hash, "adapter loaded");
                Ok(serde_json::json!({"loaded": name, "sha256": a.hash}))
            }
            AdapterAction::Unload { name } => {
                s2.adapters.unload(&name)?;
                Ok(serde_json::json!({"unloaded": name}))
            }
            AdapterAction::SetDefault { name, strength } => {
                let d = name.map(|name| DefaultAdapter { name, strength });
                s2.adapters.set_default(&s2.engine, d.clone())?;
                Ok(serde_json::json!({"default": d}))
            }
        }
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map(Json)
}

async fn list_jobs(State(s): State<Shared>) -> Json<serde_json::Value> {
    Json(serde_json::json!({"jobs": s.jobs.list()}))
}

async fn post_job(
    State(s): State<Shared>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let req: crate::jobs::JobRequest = parse_json(body, s.config.max_body_bytes)?;
    let jobs = Arc::clone(&s.jobs);
    let job = tokio::task::spawn_blocking(move || jobs.submit(req))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok((StatusCode::CREATED, Json(job)).into_response())
}

async fn get_job(
    State(s): State<Shared>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<crate::jobs::Job>, ApiError> {
    s.jobs.read(&id).map(Json)
}

async fn cancel_job(
    State(s): State<Shared>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<crate::jobs::Job>, ApiError> {
    s.jobs.cancel(&id).map(Json)
}

/// The job's event log from its start, then followed live until the job ends.
async fn job_events(
    State(s): State<Shared>,
    axum::extract::Path(id): axum::extract::Path<String>,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    // `?follow=false`: only the events logged so far (`dpoimg job logs` without --follow).
    let follow = !uri
        .query()
        .unwrap_or_default()
        .split('&')
        .any(|kv| kv == "follow=false" || kv == "follow=0");
    let path = s.jobs.events_path(&id)?;
    let jobs = Arc::clone(&s.jobs);
    let stream = futures_util::stream::unfold((0u64, false), move |(offset, finished)| {
        let path = path.clone();
        let jobs = Arc::clone(&jobs);
        let id = id.clone();
        async move {
            if finished {
                return None;
            }
            loop {
                // Read the state first: a terminal state means its last line is written.
                let terminal = jobs
                    .read(&id)
                    .map(|j| j.state.is_terminal())
                    .unwrap_or(true);
                let data = tokio::fs::read(&path).await.unwrap_or_default();
                let avail = &data[(offset as usize).min(data.len())..];
                let end = avail
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map(|i| i + 1)
                    .unwrap_or(0);
                if end > 0 {
                    let chunk = Bytes::copy_from_slice(&avail[..end]);
                    return Some((
                        Ok::<Bytes, std::io::Error>(chunk),
                        (offset + end as u64, false),
                    ));
                }
                if terminal || !follow {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}
