//! Fine-tune jobs in the daemon: a job SIGKILLed mid-training resumes after a restart and ends
//! with the adapter an uninterrupted job produces (tensor for tensor); generation is served while
//! a job trains, and `activate_on_success` serves the new adapter without a restart.

mod common;
use common::*;

use dpoimgd::client;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

fn start(state: &Path) -> (Child, PathBuf) {
    let socket = state.join("run/d.sock");
    let mut child = dpoimgd(&socket, state, false)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    if wait_healthy(&socket) {
        return (child, socket);
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("daemon not ready");
}

fn call(socket: &Path, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    rt().block_on(client::json(socket, method, path, body))
        .unwrap()
}

fn job_body(cache: &Path, steps: usize, activate: Option<Value>) -> Value {
    let mut b = json!({"kind": "dpo", "config": {
        "data": repo().join("tests/assets/data/pairs.jsonl"),
        "steps": steps, "checkpoint_every": 2, "threads": 1, "lr": 1e-3, "seed": 7,
        "cache_dir": cache,
    }});
    if let Some(a) = activate {
        b["activate_on_success"] = a;
    }
    b
}

fn wait_state(socket: &Path, id: &str, limit: Duration) -> Value {
    let t = Instant::now();
    loop {
        let (st, j) = call(socket, "GET", &format!("/v1/jobs/{id}"), None);
        assert_eq!(st, 200, "{j}");
        if ["succeeded", "failed", "cancelled"].contains(&j["state"].as_str().unwrap()) {
            return j;
        }
        assert!(t.elapsed() < limit, "job {id} still {}", j["state"]);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.data().to_vec()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn sigkilled_job_resumes_to_the_same_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let steps = 30;
    let (mut child, socket) = start(dir.path());
    let (st, job) = call(
        &socket,
        "POST",
        "/v1/jobs",
        Some(&job_body(&cache, steps, None)),
    );
    assert_eq!(st, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    // Kill -9 once a checkpoint past step 4 is on disk.
    let events = dir.path().join(format!("state/jobs/{id}/events.ndjson"));
    let t = Instant::now();
    let killed_after = loop {
        let text = std::fs::read_to_string(&events).unwrap_or_default();
        let ck = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["event"] == "checkpoint")
            .filter_map(|e| e["step"].as_u64())
            .max();
        if let Some(s) = ck.filter(|s| *s >= 4) {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no checkpoint:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let text = std::fs::read_to_string(&events).unwrap();
    assert!(
        !text.contains("\"finished\""),
        "killed too late: the job had finished"
    );
    eprintln!("SIGKILL after checkpoint {killed_after} of {steps}");

    // Restart on the same state: the job is picked up and resumes from its checkpoint.
    let (mut child, socket) = start(dir.path());
    let resumed = wait_state(&socket, &id, Duration::from_secs(300));
    assert_eq!(resumed["state"], "succeeded", "{resumed}");
    assert_eq!(resumed["attempts"], 2);
    let log = std::fs::read_to_string(&events).unwrap();
    let resumed_at: Vec<u64> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "resumed")
        .filter_map(|e| e["step"].as_u64())
        .collect();
    assert!(
        resumed_at.len() == 1 && resumed_at[0] >= killed_after,
        "resumed at {resumed_at:?}, killed after checkpoint {killed_after}"
    );

    // The same job, uninterrupted.
    let (st, job2) = call(
        &socket,
        "POST",
        "/v1/jobs",
        Some(&job_body(&cache, steps, None)),
    );
    assert_eq!(st, 201);
    let whole = wait_state(
        &socket,
        job2["id"].as_str().unwrap(),
        Duration::from_secs(300),
    );
    assert_eq!(whole["state"], "succeeded", "{whole}");
    let a = tensors(Path::new(resumed["outcome"]["adapter"].as_str().unwrap()));
    let b = tensors(Path::new(whole["outcome"]["adapter"].as_str().unwrap()));
    assert_eq!(a.len(), b.len());
    assert!(!a.is_empty());
    for ((na, da), (nb, db)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(
            da == db,
            "tensor {na} differs between the resumed and the uninterrupted job"
        );
    }
    eprintln!("{} tensors bit-identical", a.len());
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn generation_is_served_while_a_job_trains_then_the_adapter_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, socket) = start(dir.path());
    let activate = json!({"name": "tuned", "default": true, "strength": 1.0});
    let (st, job) = call(
        &socket,
        "POST",
        "/v1/jobs",
        Some(&job_body(&dir.path().join("cache"), 40, Some(activate))),
    );
    assert_eq!(st, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    // Wait until it trains, then generate while it does.
    let t = Instant::now();
    loop {
        let (_, j) = call(&socket, "GET", &format!("/v1/jobs/{id}"), None);
        if j["state"] == "running" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "job never ran: {j}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut served_while_running = 0;
    for seed in 0..3 {
        let r = rt()
            .block_on(async {
                let r = client::send(
                    &socket,
                    "POST",
                    "/v1/generate",
                    Some(&json!({"prompt": "x", "seed": seed, "steps": 2})),
                )
                .await?;
                client::events(r).await
            })
            .unwrap();
        assert_eq!(r.last().unwrap()["event"], "done", "{:?}", r.last());
        let (_, j) = call(&socket, "GET", &format!("/v1/jobs/{id}"), None);
        if j["state"] == "running" {
            served_while_running += 1;
        }
    }
    assert!(
        served_while_running >= 1,
        "the job ended before any generation was answered"
    );
    eprintln!("{served_while_running} of 3 generations answered while the job was running");
    // The NDJSON event stream of the job ends with its final state.
    let events = rt()
        .block_on(async {
            let r = client::send(&socket, "GET", &format!("/v1/jobs/{id}/events"), None).await?;
            client::events(r).await
        })
        .unwrap();
    let last = events.last().unwrap();
    assert_eq!(
        (last["event"].as_str(), last["state"].as_str()),
        (Some("job_state"), Some("succeeded")),
        "{last}"
    );
    assert!(events.iter().any(|e| e["event"] == "step"));
    let j = wait_state(&socket, &id, Duration::from_secs(10));
    assert_eq!(j["activated"], "tuned");
    // Now served by default: the image carries the new adapter and equals the library's.
    let (_, list) = call(&socket, "GET", "/v1/adapters", None);
    assert_eq!(list["default"]["name"], "tuned", "{list}");
    assert_eq!(list["loaded"][0]["sha256"], j["outcome"]["adapter_sha256"]);
    let events = rt()
        .block_on(async {
            let r = client::send(
                &socket,
                "POST",
                "/v1/generate",
                Some(&json!({"prompt": "x", "seed": 1, "steps": 2})),
            )
            .await?;
            client::events(r).await
        })
        .unwrap();
    let done = events.last().unwrap();
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD
        .decode(done["images"][0]["png_base64"].as_str().unwrap())
        .unwrap();
    let text = dpoimg::provenance::read_png_text(&png).unwrap();
    let adapters = text.iter().find(|(k, _)| k == "adapters").unwrap();
    assert!(
        adapters.1.starts_with("tuned:1:")
            && adapters
                .1
                .ends_with(j["outcome"]["adapter_sha256"].as_str().unwrap()),
        "{adapters:?}"
    );
    // Cancel of a finished job is a no-op; an unknown job is 404.
    let (st, _) = call(&socket, "DELETE", &format!("/v1/jobs/{id}"), None);
    assert_eq!(st, 200);
    let (st, v) = call(&socket, "GET", "/v1/jobs/job-999999", None);
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("job_not_found"))
    );
    let (st, v) = call(&socket, "GET", "/v1/jobs/..%2Fetc", None);
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("job_not_found"))
    );
    let (st, v) = call(
        &socket,
        "POST",
        "/v1/jobs",
        Some(&json!({"kind": "dpo", "config": {"data": "/x", "output": "/tmp/y"}})),
    );
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("invalid_request")),
        "{v}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn delete_cancels_a_running_job() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, socket) = start(dir.path());
    let (_, job) = call(
        &socket,
        "POST",
        "/v1/jobs",
        Some(&job_body(&dir.path().join("cache"), 100_000, None)),
    );
    let id = job["id"].as_str().unwrap().to_string();
    let t = Instant::now();
    loop {
        let (_, j) = call(&socket, "GET", &format!("/v1/jobs/{id}"), None);
        if j["state"] == "running" && j["attempts"] == 1 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (st, _) = call(&socket, "DELETE", &format!("/v1/jobs/{id}"), None);
    assert_eq!(st, 200);
    let j = wait_state(&socket, &id, Duration::from_secs(60));
    assert_eq!(j["state"], "cancelled", "{j}");
    let _ = child.kill();
    let _ = child.wait();
}

/// A DPOK job (`kind: "dpok"`) ends with the adapter `dpoimg::finetune::run_dpok` produces in
/// process with the same settings (tensor for tensor), its `job.json` reads back as DPOK after a
/// restart, and `activate_on_success` serves it.
#[test]
fn dpok_job_equals_the_library_run_and_is_activated() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(
        &prompts,
        "a red circle above a blue square\na green triangle left of a yellow circle\n",
    )
    .unwrap();
    let settings = json!({
        "reward": repo().join("tests/assets/reward-tiny"), "prompts": prompts,
        "steps": 2, "samples_per_iter": 2, "rollout_batch": 2, "sampling_steps": 3,
        "policy_steps": 2, "minibatch": 2, "grad_accum": 1, "buffer_size": 12,
        "lr": 1e-3, "checkpoint_every": 1, "threads": 1, "seed": 5,
    });
    let (mut child, socket) = start(dir.path());
    let body = json!({"kind": "dpok", "config": settings,
                      "activate_on_success": {"name": "dpok-job"}});
    let (st, job) = call(&socket, "POST", "/v1/jobs", Some(&body));
    assert_eq!(st, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let j = wait_state(&socket, &id, Duration::from_secs(300));
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["kind"], "dpok");
    assert_eq!(j["activated"], "dpok-job");
    assert_eq!(j["step"], 4, "2 iterations x 2 policy steps: {j}");
    let (_, list) = call(&socket, "GET", "/v1/adapters", None);
    assert!(list.to_string().contains("dpok-job"), "{list}");
    let _ = child.kill();
    let _ = child.wait();

    // The stored job reads back as a DPOK job after a restart.
    let (mut child, socket) = start(dir.path());
    let (st, again) = call(&socket, "GET", &format!("/v1/jobs/{id}"), None);
    assert_eq!(st, 200);
    assert_eq!(again["config"]["reward"], j["config"]["reward"], "{again}");
    let _ = child.kill();
    let _ = child.wait();

    let mut cfg: dpoimg::finetune::DpokConfig = serde_json::from_value(settings).unwrap();
    cfg.bundle = repo().join("tests/assets/tiny-bundle");
    cfg.output = dir.path().join("direct");
    let out = dpoimg::finetune::run_dpok(&cfg, &mut |_| {}, &dpoimg::CancelToken::new()).unwrap();
    let job_adapter = dir
        .path()
        .join(format!("state/jobs/{id}/run/adapter.safetensors"));
    assert_eq!(tensors(&job_adapter), tensors(&out.adapter));
}

#[test]
fn unknown_job_kind_is_refused_with_the_kinds_named() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, socket) = start(dir.path());
    let (st, v) = call(
        &socket,
        "POST",
        "/v1/jobs",
        Some(&json!({"kind": "ppo", "config": {}})),
    );
    assert_eq!(st, 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("\"dpo\"") && msg.contains("\"dpok\""), "{msg}");
    let _ = child.kill();
    let _ = child.wait();
}

/// An eval job (`kind: "eval"`, `dpoimg eval`'s flags) writes the same `eval.json` statistics as
/// the library run with the same arguments, into the job's directory; `--output` is refused.
#[test]
fn eval_job_writes_the_report_the_library_writes() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "a red circle\na blue square\n").unwrap();
    let a = repo().join("tests/assets");
    let args: Vec<String> = [
        "--prompts".to_string(),
        prompts.display().to_string(),
        "--arm".into(),
        "base".into(),
        "--arm".into(),
        format!("lora={}:0.8", a.join("adapters/r4.safetensors").display()),
        "-n".into(),
        "2".into(),
        "--steps".into(),
        "2".into(),
        "--reward".into(),
        a.join("reward-tiny").display().to_string(),
        "--bootstrap-resamples".into(),
        "99".into(),
        "--device".into(),
        "cpu".into(),
        "--threads".into(),
        "1".into(),
    ]
    .into();
    let (mut child, socket) = start(dir.path());
    let (st, v) = call(
        &socket,
        "POST",
        "/v1/jobs",
        Some(&json!({"kind": "eval", "config": {"args": ["--output", "/tmp/x"]}})),
    );
    assert_eq!(st, 400, "{v}");
    assert!(v.to_string().contains("--output"), "{v}");
    let (st, v) = call(
        &socket,
        "POST",
        "/v1/jobs",
        Some(&json!({"kind": "eval", "config": {"args": ["--no-such-flag"]}})),
    );
    assert_eq!(st, 400, "{v}");
    assert!(v.to_string().contains("no-such-flag"), "{v}");

    let (st, job) = call(
        &socket,
        "POST",
        "/v1/jobs",
        Some(&json!({"kind": "eval", "config": {"args": args}})),
    );
    assert_eq!(st, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let j = wait_state(&socket, &id, Duration::from_secs(300));
    assert_eq!(j["state"], "succeeded", "{j}");
    let result = PathBuf::from(j["result"].as_str().unwrap());
    assert_eq!(
        result,
        dir.path().join(format!("state/jobs/{id}/eval/eval.json"))
    );
    let _ = child.kill();
    let _ = child.wait();

    // The same evaluation through the library.
    use clap::Parser;
    #[derive(clap::Parser)]
    #[command(no_binary_name = true)]
    struct Cli {
        #[command(flatten)]
        args: dpoimg::eval::cli::EvalArgs,
    }
    let mut lib = Cli::try_parse_from(&args).unwrap().args;
    lib.output = dir.path().join("direct");
    lib.bundle = Some(repo().join("tests/assets/tiny-bundle"));
    dpoimg::eval::cli::run(
        &lib,
        lib.bundle.clone().unwrap(),
        &dpoimg::CancelToken::new(),
    )
    .unwrap();
    let read =
        |p: &Path| -> Value { serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    let (job_report, lib_report) = (read(&result), read(&lib.output.join("eval.json")));
    assert_eq!(job_report["pairs"], lib_report["pairs"]);
    assert!(
        job_report["pairs"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "{job_report}"
    );
}
