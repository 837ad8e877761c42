//! The blind rating page end to end: the daemon (tiny bundle, `--rating-addr 127.0.0.1:0`)
//! generates a session of base-vs-adapter pairs, headless Chromium loads the page and clicks the
//! buttons (the page's `?auto=` letters drive real `click()`s on its buttons), the votes file
//! holds exactly those votes, a SIGKILLed daemon keeps them, the export is read by the trainer's
//! data loader and accepted by a short `run_dpo`, and the summary's p equals SciPy's.

mod common;
use common::*;

use dpoimgd::client;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn command(dir: &Path, extra: &[&str]) -> Command {
    let mut c = dpoimgd(&dir.join("run/dpoimgd.sock"), dir, true);
    c.args(extra);
    c
}

struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Daemon {
    fn start(dir: &Path) -> Daemon {
        add_r4_adapter(dir);
        let child = command(dir, &["--rating-addr", "127.0.0.1:0"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let d = Daemon {
            child,
            socket: dir.join("run/dpoimgd.sock"),
        };
        assert!(wait_healthy(&d.socket), "daemon not ready in 60 s");
        d
    }
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        rt().block_on(client::json(&self.socket, method, path, body))
            .unwrap()
    }
    fn sigkill(mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request to the loopback page: (status, body).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&out[..split]).to_string();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = out[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 4 + n..];
    }
}

fn post_vote(addr: &str, session: &str, body: &str) -> (u16, Value) {
    let (st, b) = http(
        addr,
        "POST",
        &format!("/api/s/{session}/votes"),
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    (st, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

fn wait_ready(d: &Daemon, id: &str) -> Value {
    let t = Instant::now();
    loop {
        let (st, s) = d.call("GET", &format!("/v1/rating/sessions/{id}"), None);
        assert_eq!(st, 200, "{s}");
        match s["state"].as_str().unwrap() {
            "ready" => return s,
            "generating" => {}
            other => panic!("session {other}: {s}"),
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "still generating: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const PROMPTS: [&str; 4] = [
    "a red circle",
    "a blue ball",
    "a green circle",
    "a yellow ball",
];
/// The clicks, one per pair in the page's order: L left, R right, T can't tell.
const CLICKS: &str = "RLRRLTRL";

#[test]
fn page_votes_export_and_trainer_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let (st, health) = d.call("GET", "/v1/health", None);
    assert_eq!(st, 200);
    let addr = health["rating_addr"]
        .as_str()
        .expect("rating_addr in health")
        .to_string();
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );

    let (st, s) = d.call(
        "POST",
        "/v1/rating/sessions",
        Some(
            &json!({"prompts": PROMPTS, "arms": ["base", "r4"], "seeds": [1, 2],
                     "steps": 3, "blind_seed": 11}),
        ),
    );
    assert_eq!(st, 201, "{s}");
    let id = s["id"].as_str().unwrap().to_string();
    assert_eq!(s["pairs"], 8);
    let s = wait_ready(&d, &id);
    let url = s["url"].as_str().unwrap();
    assert_eq!(url, format!("http://{addr}/s/{id}"));
    let sdir = tmp.path().join("state/rating").join(&id);

    // The rater's side never names an arm: page, next pair, images (no provenance chunks).
    let adapter_sha = dpoimg::hash::sha256_hex(
        &std::fs::read(repo().join("tests/assets/adapters/r4.safetensors")).unwrap(),
    );
    let (st, page) = http(&addr, "GET", &format!("/s/{id}"), &[], b"");
    assert_eq!(st, 200);
    let (st, next) = http(&addr, "GET", &format!("/api/s/{id}/next"), &[], b"");
    assert_eq!(st, 200);
    let next_v: Value = serde_json::from_slice(&next).unwrap();
    let (st, img) = http(
        &addr,
        "GET",
        next_v["pair"]["left"].as_str().unwrap(),
        &[],
        b"",
    );
    assert_eq!(st, 200);
    assert_eq!(&img[..8], b"\x89PNG\r\n\x1a\n");
    for (what, bytes) in [("page", &page), ("next", &next), ("image", &img)] {
        let text = String::from_utf8_lossy(bytes);
        assert!(
            !text.contains("r4") && !text.contains(&adapter_sha),
            "{what} names the arm"
        );
        assert!(!text.contains("\"base\""), "{what} names the base arm");
    }
    assert!(
        !String::from_utf8_lossy(&img).contains("dpoimg"),
        "image keeps provenance"
    );

    // Headless Chromium clicks the buttons.
    let Some(dom) = chromium::dump_dom(
        &format!("{url}?auto={CLICKS}"),
        "the rating page",
        // virtual time waits on pending fetches, so the page's script settles before the dump
        &["--virtual-time-budget=60000"],
    ) else {
        return;
    };
    assert!(
        dom.contains("data-done=\"1\""),
        "page did not finish: {dom}"
    );
    let clicked: Vec<(String, String)> = dom
        .split("<li class=\"vote\"")
        .skip(1)
        .map(|li| {
            let attr = |name: &str| {
                let start = li.find(&format!("data-{name}=\"")).unwrap() + name.len() + 7;
                li[start..start + li[start..].find('"').unwrap()].to_string()
            };
            (attr("id"), attr("choice"))
        })
        .collect();
    assert_eq!(clicked.len(), CLICKS.len(), "{dom}");

    // The votes file holds exactly the clicked votes, in page order (= pairs.jsonl order).
    let pairs = lines(&sdir.join("blind/pairs.jsonl"));
    let votes = lines(&sdir.join("votes.jsonl"));
    assert_eq!(votes.len(), CLICKS.len());
    for (k, ((v, c), letter)) in votes.iter().zip(&clicked).zip(CLICKS.chars()).enumerate() {
        let want = match letter {
            'L' => "left",
            'R' => "right",
            _ => "tie",
        };
        assert_eq!(
            v["id"], pairs[k]["id"],
            "vote {k} is for the page's k-th pair"
        );
        assert_eq!(v["id"].as_str().unwrap(), c.0);
        assert_eq!(v["choice"], want);
        assert_eq!(c.1, want);
    }

    // Refusals on the page's API.
    let (st, e) = post_vote(
        &addr,
        &id,
        r#"{"id": "0000000000000000", "choice": "left"}"#,
    );
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (404, Some("unknown_pair")),
        "{e}"
    );
    let (st, e) = post_vote(&addr, &id, r#"{"id": "#);
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (400, Some("invalid_json")),
        "{e}"
    );
    let first = pairs[0]["id"].as_str().unwrap();
    let (st, e) = post_vote(
        &addr,
        &id,
        &format!(r#"{{"id": "{first}", "choice": "up"}}"#),
    );
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (400, Some("invalid_choice")),
        "{e}"
    );
    let (st, e) = post_vote(
        &addr,
        &id,
        &format!(r#"{{"id": "{first}", "choice": "left"}}"#),
    );
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (409, Some("already_voted")),
        "{e}"
    );
    let (st, e) = post_vote(
        &addr,
        "nosuchsession",
        &format!(r#"{{"id": "{first}", "choice": "left"}}"#),
    );
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (404, Some("unknown_session")),
        "{e}"
    );
    let (st, _) = http(
        &addr,
        "POST",
        &format!("/api/s/{id}/votes"),
        &[("Content-Type", "text/plain")],
        br#"{"id": "x", "choice": "left"}"#,
    );
    assert_eq!(
        st, 415,
        "a vote must be application/json (no cross-site form posts)"
    );
    let mut s2 = TcpStream::connect(&addr).unwrap();
    s2.write_all(
        format!("GET /s/{id} HTTP/1.1\r\nHost: evil.example:80\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut resp = String::new();
    s2.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");

    // A SIGKILLed daemon keeps every acknowledged vote.
    d.sigkill();
    let d = Daemon::start(tmp.path());
    let (_, s) = d.call("GET", &format!("/v1/rating/sessions/{id}"), None);
    assert_eq!(
        (s["state"].as_str(), s["votes"].as_u64()),
        (Some("ready"), Some(8)),
        "{s}"
    );
    let addr = d.call("GET", "/v1/health", None).1["rating_addr"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, next) = http(&addr, "GET", &format!("/api/s/{id}/next"), &[], b"");
    assert_eq!(
        serde_json::from_slice::<Value>(&next).unwrap()["state"],
        "done"
    );

    // Export: a preference dataset and the summary.
    let (st, e) = d.call("GET", "/v1/votes/export", None);
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (400, Some("missing_session")),
        "{e}"
    );
    let (st, ex) = d.call("GET", &format!("/v1/votes/export?session={id}"), None);
    assert_eq!(st, 200, "{ex}");
    let dataset = PathBuf::from(ex["dataset"].as_str().unwrap());
    let (loaded, report) = dpoimg::data::load_pairs(
        &dataset,
        &dpoimg::data::LoadOptions {
            check_images: true,
            ..Default::default()
        },
    )
    .unwrap();
    let decisive: Vec<usize> = (0..8).filter(|&k| &CLICKS[k..k + 1] != "T").collect();
    assert_eq!(loaded.len(), decisive.len(), "{report:?}");
    // Un-blind by hand with the key: which arm each click preferred, and the chosen image.
    let key: Value =
        serde_json::from_slice(&std::fs::read(sdir.join("key.json")).unwrap()).unwrap();
    let key_of = |pid: &str| {
        key["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == pid)
            .unwrap()
            .clone()
    };
    let mut base_wins = 0u64;
    let exported = lines(&dataset);
    for (row, &k) in exported.iter().zip(&decisive) {
        let p = &pairs[k];
        let e = key_of(p["id"].as_str().unwrap());
        let (win_side, lose_side, win_arm) = if &CLICKS[k..k + 1] == "L" {
            ("left", "right", &e["left_arm"])
        } else {
            ("right", "left", &e["right_arm"])
        };
        assert_eq!(row["prompt"], p["prompt"]);
        assert_eq!(row["chosen"], p[win_side]);
        assert_eq!(row["rejected"], p[lose_side]);
        let a = std::fs::read(
            dataset
                .parent()
                .unwrap()
                .join(row["chosen"].as_str().unwrap()),
        )
        .unwrap();
        let b = std::fs::read(sdir.join("blind").join(p[win_side].as_str().unwrap())).unwrap();
        assert_eq!(a, b, "chosen image is the clicked side's image");
        if win_arm == "base" {
            base_wins += 1;
        }
    }
    let sum = &ex["summary"];
    assert_eq!(sum["arms"], json!(["base", "r4"]));
    assert_eq!(sum["votes"], 8);
    assert_eq!(sum["ties"], 1);
    assert_eq!(sum["wins"]["base"].as_u64().unwrap(), base_wins);
    assert_eq!(sum["wins"]["r4"].as_u64().unwrap(), 7 - base_wins);
    // With blind_seed 11 the base arm is on the left in pairs 2 and 5 only (the seeded sides),
    // so the clicks above give base 6 wins of 7 decisive votes.
    assert_eq!(
        base_wins, 6,
        "side randomisation changed; recompute the SciPy numbers"
    );
    // scipy 1.17.1: r = scipy.stats.binomtest(6, 7, 0.5); r.pvalue;
    // r.proportion_ci(0.95, method="exact")
    let (p, lo, hi) = (0.125, 0.42127680295680187, 0.9963897031380992);
    assert!((sum["p"].as_f64().unwrap() - p).abs() < 1e-12, "{sum}");
    assert!((sum["ci_low"].as_f64().unwrap() - lo).abs() < 1e-9, "{sum}");
    assert!(
        (sum["ci_high"].as_f64().unwrap() - hi).abs() < 1e-9,
        "{sum}"
    );
    assert!((sum["win_rate"].as_f64().unwrap() - 6.0 / 7.0).abs() < 1e-12);
    let on_disk: Value = serde_json::from_slice(
        &std::fs::read(dataset.parent().unwrap().join("summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(&on_disk, sum);

    // The trainer accepts the export.
    let run = tmp.path().join("dpo-run");
    let o = dpoimg::finetune::run_dpo(
        &dpoimg::finetune::DpoConfig {
            bundle: repo().join("tests/assets/tiny-bundle"),
            data: dataset.clone(),
            output: run.clone(),
            cache_dir: Some(tmp.path().join("cache")),
            steps: 2,
            batch_pairs: 2,
            grad_accum: 1,
            lr: 1e-3,
            threads: 1,
            seed: 7,
            ..Default::default()
        },
        &mut |_| {},
        &dpoimg::CancelToken::new(),
    )
    .unwrap();
    assert_eq!(o.steps, 2, "{o:?}");
}

#[test]
fn non_loopback_rating_address_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for addr in ["0.0.0.0:0", "192.0.2.1:8765", "[::]:0"] {
        let out = command(tmp.path(), &["--rating-addr", addr])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{addr}: {err}");
        assert!(
            err.contains("is not a loopback address") && err.contains("127.0.0.1"),
            "{err}"
        );
    }
}

#[test]
fn rating_routes_without_rating_addr_say_how_to_enable() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("adapters")).unwrap();
    let mut child = command(tmp.path(), &[])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let socket = tmp.path().join("run/dpoimgd.sock");
    let t = Instant::now();
    let mut health = None;
    while t.elapsed() < Duration::from_secs(60) && health.is_none() {
        health = rt()
            .block_on(client::json(&socket, "GET", "/v1/health", None))
            .ok()
            .filter(|h| h.0 == 200);
        std::thread::sleep(Duration::from_millis(50));
    }
    let health = health.expect("daemon ready").1;
    assert!(health["rating_addr"].is_null(), "{health}");
    let (st, e) = rt()
        .block_on(client::json(
            &socket,
            "POST",
            "/v1/rating/sessions",
            Some(&json!({"prompts": ["x"], "arms": ["base", "r4"]})),
        ))
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(st, 409, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--rating-addr"),
        "{e}"
    );
}

#[test]
fn bad_sessions_are_refused_before_generating() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    for (body, code, needle) in [
        (
            json!({"prompts": ["x"], "arms": ["base"]}),
            "invalid_session",
            "two different arms",
        ),
        (
            json!({"prompts": ["x"], "arms": ["r4", "r4"]}),
            "invalid_session",
            "two different arms",
        ),
        (
            json!({"prompts": [], "arms": ["base", "r4"]}),
            "invalid_session",
            "prompts",
        ),
        (
            json!({"prompts": ["x"], "arms": ["base", "r4"], "seeds": [1, 1]}),
            "invalid_session",
            "repeated seed",
        ),
        (
            json!({"prompts": ["x"], "arms": ["base", "../r4"]}),
            "adapter_name_refused",
            "not allowed",
        ),
        (
            json!({"prompts": ["x"], "arms": ["base", "r4"], "colour": 1}),
            "invalid_json",
            "colour",
        ),
    ] {
        let (st, e) = d.call("POST", "/v1/rating/sessions", Some(&body));
        assert_eq!(
            (st, e["error"]["code"].as_str()),
            (400, Some(code)),
            "{body}: {e}"
        );
        assert!(
            e["error"]["message"].as_str().unwrap().contains(needle),
            "{e}"
        );
    }
    let (st, e) = d.call(
        "POST",
        "/v1/rating/sessions",
        Some(&json!({"prompts": ["x"], "arms": ["base", "nope"]})),
    );
    assert!((400..500).contains(&st), "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("nope"),
        "{e}"
    );
    let (st, e) = d.call("GET", "/v1/votes/export?session=nosuch", None);
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (404, Some("unknown_session")),
        "{e}"
    );
    let (_, s) = d.call("GET", "/v1/rating/sessions", None);
    assert_eq!(
        s["sessions"],
        json!([]),
        "refused sessions leave nothing behind"
    );
}
