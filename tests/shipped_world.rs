//! The shipped default: `models/default` is the world-trained bundle, it draws what world prompts
//! ask for, and `models/world-prefs` is an ImageRewardDB folder the trainer's loader reads.
//!
//! Reference numbers (tools/README.md "The world model", measured on 300 held-out test prompts by
//! `dpoimg world sample` + `dpoimg world check`): 29.3 % all attributes correct, mean fraction of
//! attributes correct about 0.80. These tests check the committed files against that, with
//! margins wide enough for ONNX Runtime builds that differ in the last bits, and narrow enough that
//! a wrong tokenizer, scheduler, latent scale or VAE (all of which draw off-prompt images, mean
//! fraction below 0.5) fails.

use dpoimg::bundle::{Bundle, Verify};
use dpoimg::data::{load_pairs, LoadOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn default_bundle_is_the_world_model_and_verifies() {
    let default = repo().join("models/default");
    let target = std::fs::canonicalize(&default).expect("models/default resolves");
    assert_eq!(
        target,
        std::fs::canonicalize(repo().join("models/world")).unwrap()
    );
    let b = Bundle::open(&default, Verify::Full).expect("every file matches its sha256");
    assert_eq!(b.manifest().name, "world-sd1");
}

/// 48 held-out test prompts, one image each, the bundle's own settings (DDIM 25, guidance 7.5).
#[test]
fn default_bundle_draws_the_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("samples");
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_dpoimg"))
            .args(args)
            .env("RUST_LOG", "error")
            .output()
            .expect("dpoimg runs");
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o.stdout
    };
    let bundle = repo().join("models/default");
    run(&[
        "world",
        "sample",
        "--bundle",
        bundle.to_str().unwrap(),
        "--split",
        "test",
        "--count",
        "48",
        "--per-prompt",
        "1",
        "--threads",
        "1",
        "-q",
        "-o",
        out.to_str().unwrap(),
    ]);
    let index = out.join("index.json");
    let report: serde_json::Value = serde_json::from_slice(&run(&[
        "world",
        "check",
        "--index",
        index.to_str().unwrap(),
    ]))
    .unwrap();
    let summary = &report["summary"];
    let mean = summary["mean_score"].as_f64().unwrap();
    let all = summary["all_correct"].as_f64().unwrap();
    let colour = summary["attributes"]["color"]["accuracy"].as_f64().unwrap();
    eprintln!("48 test prompts: mean score {mean:.3}, all correct {all:.3}, colour {colour:.3}");
    assert!(mean > 0.7, "mean checker score {mean}");
    assert!(colour > 0.8, "colour accuracy {colour}");
    assert!((0.1..0.6).contains(&all), "all-correct {all}");
}

#[test]
fn shipped_preference_data_loads() {
    let db = repo().join("models/world-prefs");
    let count = |split: &str| {
        let opts = LoadOptions {
            split: Some(split.into()),
            check_images: true,
            ..Default::default()
        };
        let (pairs, _) = load_pairs(Path::new(&db), &opts).expect("loads");
        pairs.len()
    };
    // `dpoimg world annotate`'s own count when it wrote the set (tools/world_prefs.sh)
    assert_eq!(count("train"), 1424);
    assert_eq!(count("validation"), 74);
    assert_eq!(count("test"), 394);
}
