//! `dpoimg --socket PATH ...`: the CLI as a daemon client. The daemon runs on a temporary socket
//! with the tiny bundle; the `dpoimg` binary (built next to `dpoimgd` by `cargo test --workspace`)
//! runs each command once through the daemon and, where a local mode exists, once locally, and
//! the outputs must agree: generated PNG files byte for byte (pixels and provenance chunks), and
//! ImageReward scores to 1e-6 (the same batches on the same ONNX Runtime, so in practice equal).

mod common;
use common::*;

use dpoimgd::client;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `dpoimg` binary of this build (same target directory as `dpoimgd`).
fn dpoimg_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_dpoimgd")).with_file_name("dpoimg");
    assert!(
        p.is_file(),
        "{} is not built: run `cargo build --bin dpoimg` (cargo test --workspace builds it)",
        p.display()
    );
    p
}

struct Daemon {
    child: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn start(extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        add_r4_adapter(dir.path());
        let socket = dir.path().join("run/dpoimgd.sock");
        let child = dpoimgd(&socket, dir.path(), true)
            .args(extra)
            .stderr(Stdio::null())
            .spawn()
            .expect("dpoimgd starts");
        let d = Daemon { child, socket, dir };
        assert!(
            wait_healthy(&d.socket),
            "daemon did not become healthy in 60 s"
        );
        d
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> std::io::Result<(u16, Value)> {
        rt().block_on(client::json(&self.socket, method, path, body))
    }

    fn metric(&self, name: &str) -> f64 {
        let text = rt()
            .block_on(async {
                let r = client::send(&self.socket, "GET", "/v1/metrics", None).await?;
                client::body_bytes(r).await
            })
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing:\n{text}"))
    }

    /// `dpoimg --socket SOCKET ARGS...`.
    fn cli(&self, args: &[&str]) -> Output {
        let mut c = Command::new(dpoimg_bin());
        c.arg("--socket").arg(&self.socket).args(args);
        run(c)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(mut c: Command) -> Output {
    c.env("RUST_LOG", "error")
        .env_remove("DPOIMG_SOCKET")
        .output()
        .unwrap()
}

/// `dpoimg ARGS...` without a socket (local mode).
fn local(args: &[&str]) -> Output {
    let mut c = Command::new(dpoimg_bin());
    c.args(args);
    run(c)
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn failed(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "expected a failure; stdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn generate_through_the_socket_writes_the_local_files() {
    let d = Daemon::start(&["--max-score-body-bytes", "4000"]);
    let tiny = assets().join("tiny-bundle");
    let remote_out = tempfile::tempdir().unwrap();
    let local_out = tempfile::tempdir().unwrap();
    let common = [
        "generate",
        "a red circle",
        "--negative-prompt",
        "blue",
        "--seed",
        "42",
        "--steps",
        "3",
        "--count",
        "2",
        "--sampler",
        "euler",
        "--quiet",
    ];
    // --bundle naming the daemon's own bundle is accepted (bundle.json sha256 compared).
    let mut args = common.to_vec();
    args.extend(["--adapter", "r4:0.5", "--bundle", s(&tiny), "-o"]);
    args.push(s(remote_out.path()));
    let remote_paths = ok(&d.cli(&args));
    let r4 = assets().join("adapters/r4.safetensors");
    let r4_arg = format!("{}:0.5", r4.display());
    let mut args = common.to_vec();
    args.extend(["--adapter", &r4_arg, "--bundle", s(&tiny)]);
    args.extend(["--device", "cpu", "--threads", "1", "-o"]);
    args.push(s(local_out.path()));
    let local_paths = ok(&local(&args));
    let names = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| Path::new(l).file_name().unwrap().to_string_lossy().into())
            .collect()
    };
    assert_eq!(names(&remote_paths), ["dpoimg-42-0.png", "dpoimg-42-1.png"]);
    assert_eq!(names(&remote_paths), names(&local_paths));
    for (r, l) in remote_paths.lines().zip(local_paths.lines()) {
        let (rb, lb) = (std::fs::read(r).unwrap(), std::fs::read(l).unwrap());
        assert!(rb.len() > 100);
        assert_eq!(rb, lb, "{r} and {l} differ (pixels or provenance chunks)");
    }
    // A second run never overwrites: local mode's -1 suffix.
    let again = ok(&d.cli(&[
        "generate",
        "a red circle",
        "--seed",
        "42",
        "--steps",
        "2",
        "--quiet",
        "-o",
        s(remote_out.path()),
    ]));
    assert!(again.trim().ends_with("dpoimg-42-0-1.png"), "{again}");

    // DPOIMG_SOCKET stands in for --socket.
    let env_out = tempfile::tempdir().unwrap();
    let mut c = Command::new(dpoimg_bin());
    c.args(["generate", "x", "--steps", "1", "--quiet", "-o"])
        .arg(env_out.path());
    let o = c
        .env("DPOIMG_SOCKET", &d.socket)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    ok(&o);
    assert!(d.metric("dpoimgd_images_total") >= 4.0);

    // Refusals name the fix.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("bundle.json"), b"{}").unwrap();
    let e = failed(&d.cli(&["generate", "x", "--bundle", s(other.path())]));
    assert!(e.contains("is not the bundle this daemon serves"), "{e}");
    let e = failed(&d.cli(&["generate", "x", "--adapter", s(&r4)]));
    assert!(e.contains("adapters are named, not paths"), "{e}");
    let e = failed(&d.cli(&["generate", "x", "--adapter", "nosuch", "--quiet"]));
    assert!(
        e.contains("dpoimgd answered 404: adapter_not_found:"),
        "{e}"
    );
    let e = failed(&d.cli(&["generate", "x", "--save-latents"]));
    assert!(e.contains("--save-latents cannot go to dpoimgd"), "{e}");
    let e = failed(&d.cli(&["generate", "x", "--width", "3", "--quiet"]));
    assert!(e.contains("dpoimgd answered 400: invalid_request:"), "{e}");
    let e = failed(&d.cli(&["world", "prompts", "--count", "1"]));
    assert!(
        e.contains("`world` runs locally, not through dpoimgd"),
        "{e}"
    );

    // /v1/score on a daemon without --reward, and over its score body limit.
    let png = remote_paths.lines().next().unwrap();
    let e = failed(&d.cli(&["score", "a red circle", png]));
    assert!(
        e.contains("dpoimgd answered 404: reward_not_configured: this daemon has no reward model: start dpoimgd with --reward DIR"),
        "{e}"
    );
    let big = vec![json!({"prompt": "p", "data_base64": "A".repeat(5000)})];
    let (st, v) = d
        .call("POST", "/v1/score", Some(&json!({"images": big})))
        .unwrap();
    assert_eq!(st, 413, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-score-body-bytes"),
        "{v}"
    );
}

#[test]
fn score_through_the_socket_equals_local_score() {
    let reward = assets().join("reward-tiny");
    let d = Daemon::start(&["--reward", s(&reward)]);
    let imgs = assets().join("score-images");
    let dir = tempfile::tempdir().unwrap();
    for n in ["wide.png", "tall.png", "square.webp", "small.png"] {
        std::fs::copy(imgs.join(n), dir.path().join(n)).unwrap();
    }
    let prompts = dir.path().join("prompts.tsv");
    std::fs::write(
        &prompts,
        "wide.png\ta red circle above a blue square\ntall.png\ta green triangle\n\
         square.webp\ta red circle above a blue square\nsmall.png\t\n",
    )
    .unwrap();
    let rt_args = ["--device", "cpu", "--threads", "1"];

    // --prompts FILE DIR, JSON: every field equal, scores to 1e-6.
    let dir_arg = s(dir.path());
    let mut la = vec!["score", "--reward", s(&reward), "--json"];
    la.extend(rt_args);
    la.extend(["--prompts", s(&prompts), dir_arg]);
    let lj: Value = serde_json::from_str(&ok(&local(&la))).unwrap();
    let rj: Value = serde_json::from_str(&ok(&d.cli(&[
        "score",
        "--json",
        "--prompts",
        s(&prompts),
        dir_arg,
    ])))
    .unwrap();
    assert_eq!(lj["count"], 4);
    for k in ["reward", "reward_dir", "count"] {
        assert_eq!(lj[k], rj[k], "{k}");
    }
    let close = |a: &Value, b: &Value| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() <= 1e-6;
    assert!(close(&lj["mean"], &rj["mean"]), "{lj} vs {rj}");
    let (lr, rr) = (
        lj["results"].as_array().unwrap(),
        rj["results"].as_array().unwrap(),
    );
    assert_eq!(lr.len(), rr.len());
    for (l, r) in lr.iter().zip(rr) {
        assert_eq!(l["image"], r["image"]);
        assert_eq!(l["prompt"], r["prompt"]);
        assert!(close(&l["score"], &r["score"]), "{l} vs {r}");
    }

    // PROMPT IMAGE..., table output, with --reward naming the daemon's bundle: the same text.
    let (w, t) = (dir.path().join("wide.png"), dir.path().join("tall.png"));
    let mut la = vec!["score", "--reward", s(&reward)];
    la.extend(rt_args);
    la.extend(["a blue square", s(&w), s(&t)]);
    let lt = ok(&local(&la));
    let rt_text = ok(&d.cli(&[
        "score",
        "--reward",
        s(&reward),
        "a blue square",
        s(&w),
        s(&t),
    ]));
    assert_eq!(lt.lines().count(), 4, "{lt}");
    assert_eq!(lt, rt_text);

    // Refusals: a broken file is named before anything is sent; another reward bundle; a bad
    // image sent straight to the route.
    let e = failed(&d.cli(&["score", "p", s(&imgs.join("broken.png"))]));
    assert!(e.contains("broken.png"), "{e}");
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("reward.json"), b"{}").unwrap();
    let e = failed(&d.cli(&["score", "--reward", s(other.path()), "p", s(&w)]));
    assert!(
        e.contains("is not the reward bundle this daemon serves"),
        "{e}"
    );
    let (st, v) = d
        .call(
            "POST",
            "/v1/score",
            Some(&json!({"images": [{"prompt": "p", "data_base64": "aGVsbG8=", "name": "h.png"}]})),
        )
        .unwrap();
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_image");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("images[0] (h.png): not a PNG, JPEG or WebP"),
        "{v}"
    );
    let (st, v) = d
        .call("POST", "/v1/score", Some(&json!({"images": []})))
        .unwrap();
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("invalid_request"))
    );
}

#[test]
fn ctrl_c_cancels_jobs_adapters_and_connection_errors() {
    let d = Daemon::start(&[]);
    let bin = dpoimg_bin();

    // Ctrl-C on a running remote generation: exit 130, the daemon cancels, nothing written.
    let out = tempfile::tempdir().unwrap();
    let mut child = Command::new(&bin)
        .arg("--socket")
        .arg(&d.socket)
        .args(["generate", "slow", "--steps", "500", "--width", "64"])
        .args(["--height", "64", "--sampler", "ddim", "--quiet", "-o"])
        .arg(out.path())
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while d.metric("dpoimgd_queue_depth") < 1.0 {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("the client exited early ({st}): {err}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "request never admitted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "client did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130));
    let t = Instant::now();
    while d.metric("dpoimgd_cancelled_total") < 1.0 || d.metric("dpoimgd_queue_depth") > 0.0 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the daemon did not cancel"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);

    // Adapters by name.
    let list = ok(&d.cli(&["adapters", "list"]));
    assert!(list.contains("r4\tavailable\t"), "{list}");
    ok(&d.cli(&["adapters", "load", "r4"]));
    ok(&d.cli(&["adapters", "default", "r4", "--strength", "0.5"]));
    let list = ok(&d.cli(&["adapters", "list"]));
    assert!(list.contains("r4\tloaded,default(0.5)\t"), "{list}");
    ok(&d.cli(&["adapters", "default", "--clear"]));
    ok(&d.cli(&["adapters", "unload", "r4"]));
    let e = failed(&d.cli(&["adapters", "load", "../r4"]));
    assert!(
        e.contains("dpoimgd answered 400: adapter_name_refused:"),
        "{e}"
    );

    // A short DPO job: submit, follow its log to the end, then the other views of it.
    let cache = tempfile::tempdir().unwrap();
    let job_file = d.dir.path().join("job.json");
    std::fs::write(
        &job_file,
        serde_json::to_vec(&json!({"kind": "dpo", "config": {
            "data": assets().join("data/pairs.jsonl"), "steps": 2, "checkpoint_every": 1,
            "threads": 1, "lr": 1e-3, "seed": 7, "cache_dir": cache.path()}}))
        .unwrap(),
    )
    .unwrap();
    let job: Value = serde_json::from_str(&ok(&d.cli(&["job", "submit", s(&job_file)]))).unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let followed = ok(&d.cli(&["job", "logs", &id, "--follow"]));
    let last: Value = serde_json::from_str(followed.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "job_state", "{followed}");
    assert_eq!(last["state"], "succeeded", "{followed}");
    assert!(followed.contains("\"event\":\"checkpoint\""), "{followed}");
    // Without --follow: what is logged so far (the job is over, so the same lines).
    assert_eq!(ok(&d.cli(&["job", "logs", &id])), followed);
    let status: Value = serde_json::from_str(&ok(&d.cli(&["job", "status", &id]))).unwrap();
    assert_eq!(status["state"], "succeeded");
    let list = ok(&d.cli(&["job", "list"]));
    assert!(list.contains(&format!("{id}\tsucceeded\t2\t")), "{list}");
    let e = failed(&d.cli(&["job", "status", "job-999999"]));
    assert!(e.contains("dpoimgd answered 404: job_not_found:"), "{e}");
    let e = failed(&d.cli(&["job", "status", "../x"]));
    assert!(e.contains("expected an id such as job-000001"), "{e}");
    let e = failed(&local(&["job", "list"]));
    assert!(e.contains("pass --socket PATH or set DPOIMG_SOCKET"), "{e}");

    // Connection errors say what to do.
    let gone = tempfile::tempdir().unwrap();
    let missing = gone.path().join("none.sock");
    let e = failed(&local(&["--socket", s(&missing), "job", "list"]));
    assert!(e.contains("is dpoimgd running?"), "{e}");
    let stale = gone.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let e = failed(&local(&["--socket", s(&stale), "adapters", "list"]));
    assert!(e.contains("nothing is listening on"), "{e}");
    // Another user cannot enter the daemon's 0700 socket directory (needs root to switch uid).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(dpoimg_bin());
        c.arg("--socket")
            .arg(&d.socket)
            .args(["job", "list"])
            .uid(65534)
            .gid(65534);
        let e = failed(&run(c));
        assert!(
            e.contains("permission denied: the socket or its directory belongs to another user"),
            "{e}"
        );
    } else {
        eprintln!("permission-denied case SKIPPED: needs root to run the client as another uid");
    }
}
