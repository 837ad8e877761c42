//! Helpers shared by the daemon's integration tests: repository paths, one tokio runtime for the
//! blocking test bodies, and `dpoimgd` started on the tiny bundle.
#![allow(dead_code)]

#[path = "../../../tests/common/chromium.rs"]
pub mod chromium;

use dpoimgd::client;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn assets() -> PathBuf {
    repo().join("tests/assets")
}

/// The runtime the tests drive the async client with (two workers: a test may hold one in a
/// long streaming request while it makes a second call).
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// `dpoimgd` on the tiny bundle listening on `socket`, its state in `dir/state` (and adapters in
/// `dir/adapters` when `adapter_dir`), CPU, one thread, no hash verification (the tests start
/// many daemons), stdout discarded. Callers add their flags and choose what stderr does.
pub fn dpoimgd(socket: &Path, dir: &Path, adapter_dir: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dpoimgd"));
    c.arg("--socket")
        .arg(socket)
        .arg("--bundle")
        .arg(assets().join("tiny-bundle"))
        .arg("--state-dir")
        .arg(dir.join("state"));
    if adapter_dir {
        c.arg("--adapter-dir").arg(dir.join("adapters"));
    }
    c.args(["--device", "cpu", "--threads", "1", "--no-verify"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    c
}

/// `dir/adapters/r4.safetensors`: the test adapter, for daemons started with an adapter dir.
pub fn add_r4_adapter(dir: &Path) {
    std::fs::create_dir_all(dir.join("adapters")).unwrap();
    std::fs::copy(
        assets().join("adapters/r4.safetensors"),
        dir.join("adapters/r4.safetensors"),
    )
    .unwrap();
}

/// Polls `GET /v1/health` until it answers 200 (true) or 60 s pass (false).
pub fn wait_healthy(socket: &Path) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        if let Ok((200, _)) = rt().block_on(client::json(socket, "GET", "/v1/health", None)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
