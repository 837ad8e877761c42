//! Load benchmark (not a test): the daemon on the tiny bundle, sequential requests vs 8 and 16
//! concurrent clients, with batching (`--max-batch 8`) and without (`--max-batch 1`).
//! Prints throughput, the ratio to sequential, p50/p99 latency, and the daemon's RSS before and
//! after all requests (5,000 by default on the batching daemon).
//!
//! `cargo bench -p dpoimgd --bench load` (env: DPOIMGD_BENCH_STEPS, default 4;
//! DPOIMGD_BENCH_SCALE, default 1.0, multiplies the request counts).

use dpoimgd::client;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn start(dir: &Path, max_batch: usize) -> (Child, PathBuf) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let socket = dir.join(format!("run{max_batch}/d.sock"));
    let child = Command::new(env!("CARGO_BIN_EXE_dpoimgd"))
        .arg("--socket")
        .arg(&socket)
        .arg("--bundle")
        .arg(repo.join("tests/assets/tiny-bundle"))
        .arg("--state-dir")
        .arg(dir.join(format!("state{max_batch}")))
        .args(["--device", "cpu", "--no-verify", "--queue-len", "64"])
        .args(["--max-batch", &max_batch.to_string()])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("dpoimgd starts");
    (child, socket)
}

async fn ready(socket: &Path) {
    for _ in 0..1200 {
        if let Ok((200, _)) = client::json(socket, "GET", "/v1/health", None).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("daemon not ready");
}

/// `total` requests from `clients` concurrent clients; returns (wall seconds, latencies).
async fn run(socket: &Path, clients: usize, total: usize, steps: u32) -> (f64, Vec<f64>) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..clients {
        let socket = socket.to_path_buf();
        let next = Arc::clone(&next);
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return lat;
                }
                let body = json!({"prompt": format!("bench {}", i % 7), "seed": i, "steps": steps});
                let t = Instant::now();
                let r = client::send(&socket, "POST", "/v1/generate", Some(&body))
                    .await
                    .expect("request");
                assert_eq!(r.status(), 200);
                let ev = client::events(r).await.expect("events");
                assert_eq!(ev.last().unwrap()["event"], "done", "{:?}", ev.last());
                lat.push(t.elapsed().as_secs_f64());
            }
        }));
    }
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.await.unwrap());
    }
    (t0.elapsed().as_secs_f64(), lat)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let steps: u32 = std::env::var("DPOIMGD_BENCH_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let scale: f64 = std::env::var("DPOIMGD_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let n = |k: usize| ((k as f64 * scale).round() as usize).max(16);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    println!(
        "dpoimgd load benchmark: tiny bundle, 16x16, {steps} steps, CFG on; {} CPU(s)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:<28} {:>8} {:>10} {:>8} {:>9} {:>9}",
        "mode", "requests", "req/s", "ratio", "p50 ms", "p99 ms"
    );
    for max_batch in [8usize, 1] {
        let (mut child, socket) = start(dir.path(), max_batch);
        rt.block_on(ready(&socket));
        // Warm-up at the widest concurrency: ONNX Runtime's CPU arena and memory-pattern cache grow
        // to the largest batch they see, so a narrower warm-up would count that one-off growth
        // as if it were a leak.
        rt.block_on(run(&socket, 16, n(200), steps));
        let rss0 = rss_kib(child.id());
        let mut rss_phases = Vec::new();
        let mut seq_rate = 0.0;
        let mut count = 0;
        let plan: Vec<(usize, usize)> = if max_batch > 1 {
            vec![(1, n(500)), (8, n(2000)), (16, n(2500))]
        } else {
            vec![(1, n(300)), (8, n(600)), (16, n(600))]
        };
        for (clients, total) in plan {
            let (wall, mut lat) = rt.block_on(run(&socket, clients, total, steps));
            count += total;
            let rate = total as f64 / wall;
            if clients == 1 {
                seq_rate = rate;
            }
            println!(
                "{:<28} {:>8} {:>10.1} {:>7.2}x {:>9.1} {:>9.1}",
                format!("max-batch {max_batch}, {clients} client(s)"),
                total,
                rate,
                rate / seq_rate,
                pct(&mut lat, 0.5) * 1e3,
                pct(&mut lat, 0.99) * 1e3
            );
            rss_phases.push(format!("{:.1}", rss_kib(child.id()) as f64 / 1024.0));
        }
        let rss1 = rss_kib(child.id());
        println!(
            "max-batch {max_batch}: RSS {:.1} MiB after warm-up, {:.1} MiB after {count} more requests ({:+.2} %)",
            rss0 as f64 / 1024.0,
            rss1 as f64 / 1024.0,
            100.0 * (rss1 as f64 - rss0 as f64) / rss0 as f64
        );
        println!(
            "max-batch {max_batch}: RSS after each phase (MiB): {}",
            rss_phases.join(", ")
        );
        // SAFETY: signalling our child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
    }
}
