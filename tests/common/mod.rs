//! Shared test helpers: asset paths, golden-file loading, tolerant comparison.
#![allow(dead_code)]

pub mod chromium;

use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

pub fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/assets")
}

pub fn bundle_dir() -> PathBuf {
    assets().join("tiny-bundle")
}

pub fn golden_path(name: &str) -> PathBuf {
    assets().join("golden").join(name)
}

/// A golden tensor: shape and values widened to f64.
#[derive(Debug, Clone)]
pub struct Golden {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Golden {
    pub fn f32(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32).collect()
    }
    pub fn i64(&self) -> Vec<i64> {
        self.data.iter().map(|&v| v as i64).collect()
    }
}

/// Loads every tensor of a golden safetensors file. Panics (failing the test) when missing:
/// a golden that silently skips proves nothing.
pub fn load_golden(name: &str) -> HashMap<String, Golden> {
    let path = golden_path(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "golden file {} missing ({e}); run tools/make_test_assets.py",
            path.display()
        )
    });
    let st = SafeTensors::deserialize(&bytes).expect("golden safetensors parses");
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            let b = v.data();
            let data: Vec<f64> = match v.dtype() {
                Dtype::F32 => b
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::F64 => b
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                Dtype::I64 => b
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::I32 => b
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::U8 => b.iter().map(|&v| v as f64).collect(),
                other => panic!("{k}: unsupported golden dtype {other:?}"),
            };
            (
                k,
                Golden {
                    shape: v.shape().to_vec(),
                    data,
                },
            )
        })
        .collect()
}

pub fn load_json(name: &str) -> serde_json::Value {
    let path = golden_path(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "golden file {} missing ({e}); run tools/make_test_assets.py",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("golden JSON parses")
}

/// Max absolute difference of two f32 tensors (in f64); panics on length mismatch.
pub fn max_abs(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0.0, f64::max)
}

/// Max absolute difference; panics on length mismatch.
pub fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

/// Asserts `max |a - b| <= tol`, naming the case.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    let d = max_abs_diff(got, want);
    assert!(
        d <= tol,
        "{what}: max |diff| = {d:.3e} > tolerance {tol:.1e}"
    );
    eprintln!("{what}: max |diff| = {d:.3e} (tolerance {tol:.1e})");
}

/// One engine per test binary (ONNX Runtime loads once per process anyway).
pub fn engine() -> &'static dpoimg::Engine {
    static ENGINE: OnceLock<dpoimg::Engine> = OnceLock::new();
    ENGINE.get_or_init(|| open_cpu_engine(&bundle_dir(), 2).expect("tiny bundle opens"))
}

/// A bundle opened on the CPU execution provider with `threads` intra-op threads (what every
/// engine-level test wants: no GPU, a thread count that fits the 2-core CI machine).
pub fn open_cpu_engine(
    dir: &std::path::Path,
    threads: usize,
) -> Result<dpoimg::Engine, dpoimg::EngineError> {
    let mut o = dpoimg::EngineOptions::default();
    o.session.device = dpoimg::runtime::Device::Cpu;
    o.session.intra_threads = threads;
    dpoimg::Engine::open(dir, &o)
}

/// Asserts `max |a - b| <= tol * max(1, max |b|)`: for tensors of large magnitude (latents after
/// guidance reach |x| ~ 60, where one f32 ulp is already 4e-6), the tolerance is relative to the
/// tensor's scale.
pub fn assert_close_scaled(what: &str, got: &[f32], want: &[f64], tol: f64) {
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let d = max_abs_diff(got, want);
    assert!(
        d <= tol * scale,
        "{what}: max |diff| = {d:.3e} > {tol:.1e} x scale {scale:.2}"
    );
    eprintln!(
        "{what}: max |diff| = {d:.3e} = {:.2e} of scale {scale:.2} (tolerance {tol:.1e})",
        d / scale
    );
}

/// Runs the `dpoimg` binary of this build with quiet logs.
pub fn dpoimg(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_dpoimg"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("dpoimg runs")
}

/// The stdout of a run that must succeed (the failure message shows both streams).
pub fn ok(out: &std::process::Output) -> String {
    ok_streams(out).0
}

/// stdout and stderr of a run that must succeed.
pub fn ok_streams(out: &std::process::Output) -> (String, String) {
    assert!(
        out.status.success(),
        "dpoimg failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The stderr of a run that must fail.
pub fn err(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure, got success: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A path as a CLI argument.
pub fn s(p: &std::path::Path) -> String {
    p.to_str().unwrap().to_string()
}

/// The CLI pause path of `dpoimg-finetune METHOD --config CONFIG` (a run writing to `output`):
/// `--stop-after N` exits 0 saying `paused after step PAUSED of TOTAL; continue with:
/// dpoimg-finetune METHOD --resume --output OUTPUT` and writes no adapter yet; that `--resume`
/// then finishes the run and writes it.
pub fn assert_pause_names_resume(
    method: &str,
    config: &std::path::Path,
    output: &std::path::Path,
    stop_after: usize,
    (paused, total): (usize, usize),
) {
    let finetune = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_dpoimg-finetune"))
            .args([method, "--quiet", "--config", &s(config)])
            .args(extra)
            .output()
            .expect("dpoimg-finetune runs")
    };
    let (_, err) = ok_streams(&finetune(&["--stop-after", &stop_after.to_string()]));
    let want = format!(
        "paused after step {paused} of {total}; continue with: dpoimg-finetune {method} --resume --output {}",
        output.display()
    );
    assert!(err.contains(&want), "{err}");
    assert!(!output.join("adapter.safetensors").exists());
    ok_streams(&finetune(&["--resume"]));
    assert!(output.join("adapter.safetensors").is_file());
}
