//! Settings from flags and an optional JSON config file (flags win). Every default is a path the
//! user owns; nothing is read from or written to a shared location.

use crate::error::DaemonError;
use clap::Parser;
use dpoimg::runtime::Device;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Parser, Debug, Clone, Default)]
#[command(
    name = "dpoimgd",
    version,
    about = "dpoimg daemon: generation and adapters over HTTP/1.1 + NDJSON on a Unix socket"
)]
pub struct Args {
    /// Unix socket (default: $XDG_RUNTIME_DIR/dpoimg/dpoimgd.sock).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// JSON config file with any of the long flag names as keys (snake_case); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Model bundle directory (else DPOIMG_BUNDLE).
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// Directory of adapter files (`NAME.safetensors`); requests name adapters, never paths.
    #[arg(long)]
    pub adapter_dir: Option<PathBuf>,
    /// Daemon state (default: $XDG_STATE_HOME/dpoimg, else ~/.local/state/dpoimg).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Where `"response": "path"` images are written (default: STATE_DIR/outputs).
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Requests waiting or running at once; one more is answered 429 at once (default 16).
    #[arg(long)]
    pub queue_len: Option<usize>,
    /// Most images in one batched UNet run (default 8; 1 disables batching).
    #[arg(long)]
    pub max_batch: Option<usize>,
    /// How long the scheduler waits for compatible requests before a run, ms (default 5).
    #[arg(long)]
    pub batch_window_ms: Option<u64>,
    /// Largest request body in bytes (default 65536).
    #[arg(long)]
    pub max_body_bytes: Option<usize>,
    /// Most denoising steps per request (default and ceiling: dpoimg's limit).
    #[arg(long)]
    pub max_steps: Option<u32>,
    /// Largest image side (default and ceiling: dpoimg's limit).
    #[arg(long)]
    pub max_side: Option<u32>,
    /// Most images per request (default and ceiling: dpoimg's limit).
    #[arg(long)]
    pub max_count: Option<u32>,
    /// auto, cpu, cuda or cuda:N (default auto).
    #[arg(long)]
    pub device: Option<Device>,
    /// ONNX Runtime intra-op threads (0 = one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Path to libonnxruntime.
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
    /// Skip the sha256 check of bundle files at start.
    #[arg(long)]
    pub no_verify: bool,
    /// Seconds that in-flight requests may run after SIGTERM/SIGINT before they are cancelled
    /// (default 30).
    #[arg(long)]
    pub shutdown_grace_secs: Option<u64>,
    /// ImageReward bundle (reward.json) that `POST /v1/score` uses; loaded once at start.
    /// Without it, /v1/score answers `reward_not_configured`.
    #[arg(long)]
    pub reward: Option<PathBuf>,
    /// Largest `POST /v1/score` body in bytes (images travel base64 inside it; default 33554432).
    #[arg(long)]
    pub max_score_body_bytes: Option<usize>,
    /// Serve the blind rating page on this loopback address (e.g. 127.0.0.1:8765; port 0 picks
    /// a free one, reported by /v1/health as `rating_addr`). Off unless given.
    #[arg(long)]
    pub rating_addr: Option<std::net::SocketAddr>,
}

/// The config file: the same names as the flags.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    socket: Option<PathBuf>,
    bundle: Option<PathBuf>,
    adapter_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    output_dir: Option<PathBuf>,
    queue_len: Option<usize>,
    max_batch: Option<usize>,
    batch_window_ms: Option<u64>,
    max_body_bytes: Option<usize>,
    max_steps: Option<u32>,
    max_side: Option<u32>,
    max_count: Option<u32>,
    device: Option<String>,
    threads: Option<usize>,
    ort_lib: Option<PathBuf>,
    no_verify: Option<bool>,
    shutdown_grace_secs: Option<u64>,
    rating_addr: Option<String>,
    reward: Option<PathBuf>,
    max_score_body_bytes: Option<usize>,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub bundle: PathBuf,
    pub adapter_dir: PathBuf,
    pub state_dir: PathBuf,
    pub output_dir: PathBuf,
    pub queue_len: usize,
    pub max_batch: usize,
    pub batch_window_ms: u64,
    pub max_body_bytes: usize,
    pub max_steps: u32,
    pub max_side: u32,
    pub max_count: u32,
    pub device: Device,
    pub threads: usize,
    pub ort_lib: Option<PathBuf>,
    pub no_verify: bool,
    pub shutdown_grace_secs: u64,
    /// Reward bundle for `/v1/score`; `None` = scoring off.
    pub reward: Option<PathBuf>,
    pub max_score_body_bytes: usize,
    /// Loopback address of the blind rating page; `None` = off.
    pub rating_addr: Option<std::net::SocketAddr>,
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

impl Config {
    pub fn resolve(a: Args) -> Result<Config, DaemonError> {
        let f: FileConfig = match &a.config {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| DaemonError::Io {
                    path: p.clone(),
                    message: e.to_string(),
                })?;
                serde_json::from_str(&text).map_err(|e| {
                    DaemonError::Config(format!(
                        "{}: {e} (keys are the long flag names in snake_case, e.g. \"queue_len\")",
                        p.display()
                    ))
                })?
            }
            None => FileConfig::default(),
        };
        let socket = a
            .socket
            .or(f.socket)
            .or_else(|| env_path("XDG_RUNTIME_DIR").map(|d| d.join("dpoimg").join("dpoimgd.sock")));
        let socket = socket.ok_or_else(|| {
            DaemonError::Config(
                "no socket path: XDG_RUNTIME_DIR is not set; pass --socket PATH".into(),
            )
        })?;
        let bundle = a
            .bundle
            .or(f.bundle)
            .or_else(|| env_path("DPOIMG_BUNDLE"))
            .ok_or_else(|| {
                DaemonError::Config("no bundle: pass --bundle DIR or set DPOIMG_BUNDLE".into())
            })?;
        let state_dir = a
            .state_dir
            .or(f.state_dir)
            .or_else(|| env_path("XDG_STATE_HOME").map(|d| d.join("dpoimg")))
            .or_else(|| env_path("HOME").map(|d| d.join(".local/state/dpoimg")))
            .ok_or_else(|| {
                DaemonError::Config("no state directory: pass --state-dir DIR".into())
            })?;
        let adapter_dir = a
            .adapter_dir
            .or(f.adapter_dir)
            .unwrap_or_else(|| state_dir.join("adapters"));
        let output_dir = a
            .output_dir
            .or(f.output_dir)
            .unwrap_or_else(|| state_dir.join("outputs"));
        let device = match (a.device, f.device) {
            (Some(d), _) => d,
            (None, Some(s)) => s
                .parse()
                .map_err(|e| DaemonError::Config(format!("device {s:?}: {e}")))?,
            (None, None) => Device::Auto,
        };
        let capped = |name: &str, v: Option<u32>, max: u32| -> Result<u32, DaemonError> {
            match v {
                None => Ok(max),
                Some(v) if (1..=max).contains(&v) => Ok(v),
                Some(v) => Err(DaemonError::Config(format!(
                    "{name} {v} is out of range 1..={max} (dpoimg's own limit)"
                ))),
            }
        };
        let rating_addr = match (a.rating_addr, f.rating_addr) {
            (Some(v), _) => Some(v),
            (None, Some(s)) => Some(s.parse().map_err(|e| {
                DaemonError::Config(format!(
                    "rating_addr {s:?}: {e} (write an IP address and port, e.g. \"127.0.0.1:8765\")"
                ))
            })?),
            (None, None) => None,
        };
        if let Some(addr) = rating_addr {
            crate::rating::check_addr(addr)?;
        }
        let c = Config {
            reward: a.reward.or(f.reward),
            max_score_body_bytes: a
                .max_score_body_bytes
                .or(f.max_score_body_bytes)
                .unwrap_or(32 * 1024 * 1024),
            rating_addr,
            socket,
            bundle,
            adapter_dir,
            state_dir,
            output_dir,
            queue_len: a.queue_len.or(f.queue_len).unwrap_or(16),
            max_batch: a.max_batch.or(f.max_batch).unwrap_or(8),
            batch_window_ms: a.batch_window_ms.or(f.batch_window_ms).unwrap_or(5),
            max_body_bytes: a.max_body_bytes.or(f.max_body_bytes).unwrap_or(64 * 1024),
            max_steps: capped(
                "max_steps",
                a.max_steps.or(f.max_steps),
                dpoimg::limits::MAX_STEPS,
            )?,
            max_side: capped(
                "max_side",
                a.max_side.or(f.max_side),
                dpoimg::limits::MAX_SIDE,
            )?,
            max_count: capped(
                "max_count",
                a.max_count.or(f.max_count),
                dpoimg::limits::MAX_COUNT,
            )?,
            device,
            threads: a.threads.or(f.threads).unwrap_or(0),
            ort_lib: a.ort_lib.or(f.ort_lib),
            no_verify: a.no_verify || f.no_verify.unwrap_or(false),
            shutdown_grace_secs: a
                .shutdown_grace_secs
                .or(f.shutdown_grace_secs)
                .unwrap_or(30),
        };
        if c.queue_len == 0
            || c.max_batch == 0
            || c.max_body_bytes == 0
            || c.max_score_body_bytes == 0
        {
            return Err(DaemonError::Config(
                "queue_len, max_batch, max_body_bytes and max_score_body_bytes must be at least 1"
                    .into(),
            ));
        }
        Ok(c)
    }
}
