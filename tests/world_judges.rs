//! The shipped shapes-world judges (models/world-{clip,classifier,reward}, tools/world_judges.py)
//! against torch's outputs of the same weights on 4 committed images
//! (tests/assets/world-judges/golden.json, written by `tools/world_judges.py goldens`).
//! A judge retrained without regenerated goldens fails here: the goldens also pin each bundle's
//! manifest sha256, and the numbers are compared at 1e-4.

mod common;

use common::{assert_close, assets};
use dpoimg::metrics::{ClipScorer, InceptionExtractor};
use dpoimg::score::{load_image, RewardModel, RgbRef, ScoreOptions};
use std::path::PathBuf;

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models")
}

fn cpu() -> ScoreOptions {
    ScoreOptions {
        batch_size: 3,
        session: dpoimg::runtime::SessionOptions {
            device: dpoimg::runtime::Device::Cpu,
            intra_threads: 1,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn golden() -> serde_json::Value {
    let p = assets().join("world-judges/golden.json");
    let s = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&s).unwrap()
}

fn images(g: &serde_json::Value) -> Vec<dpoimg::data::RgbImage> {
    g["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| load_image(&assets().join("world-judges").join(n.as_str().unwrap())).unwrap())
        .collect()
}

fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap()
}

/// The goldens were computed from these very bundles.
#[test]
fn goldens_match_the_shipped_bundles() {
    let g = golden();
    for (bundle, manifest) in [
        ("world-clip", "metric.json"),
        ("world-classifier", "metric.json"),
        ("world-reward", "reward.json"),
    ] {
        let got = dpoimg::hash::sha256_file(&models().join(bundle).join(manifest)).unwrap();
        assert_eq!(
            got,
            g["bundle_sha256"][bundle].as_str().unwrap(),
            "models/{bundle}/{manifest} changed: rerun `tools/world_judges.py goldens`"
        );
    }
}

/// Normalised rewards (`dpoimg score`'s numbers) equal torch's `(raw - mean) / std`: ≤ 1e-4.
#[test]
fn world_reward_equals_torch() {
    let g = golden();
    let imgs = images(&g);
    let refs: Vec<RgbRef<'_>> = imgs.iter().map(RgbRef::from).collect();
    let m = RewardModel::open(models().join("world-reward"), &cpu()).unwrap();
    let rows = g["reward"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    for (k, r) in rows.iter().enumerate() {
        let prompt = r["prompt"].as_str().unwrap();
        let got = m.score(prompt, &refs).unwrap();
        assert_close(
            &format!("reward {prompt:?}"),
            &got,
            &f64s(&r["normalised"]),
            1e-4,
        );
        // Image k is a render of prompt k (2 and 3 blurred like model samples): each prompt
        // prefers its own image, so the judge judges rather than just reproducing numbers.
        assert_eq!(argmax(&got), k, "reward {prompt:?}: {got:?}");
    }
}

/// CLIP scores (100 · max(cos, 0)) equal torch's: ≤ 1e-4 (scores are in 0..100).
#[test]
fn world_clip_equals_torch() {
    let g = golden();
    let imgs = images(&g);
    let refs: Vec<RgbRef<'_>> = imgs.iter().map(RgbRef::from).collect();
    let c = ClipScorer::open(models().join("world-clip"), &cpu()).unwrap();
    for (k, r) in g["clip"].as_array().unwrap().iter().enumerate() {
        let prompt = r["prompt"].as_str().unwrap();
        let got: Vec<f32> = c
            .score(prompt, &refs)
            .unwrap()
            .into_iter()
            .map(|v| v as f32)
            .collect();
        assert_close(
            &format!("clip score {prompt:?}"),
            &got,
            &f64s(&r["scores"]),
            1e-4,
        );
        assert_eq!(argmax(&got), k, "clip {prompt:?}: {got:?}");
    }
}

/// Classifier pool features and logits (FID / IS inputs) equal torch's: ≤ 1e-4.
#[test]
fn world_classifier_equals_torch() {
    let g = golden();
    let imgs = images(&g);
    let refs: Vec<RgbRef<'_>> = imgs.iter().map(RgbRef::from).collect();
    let ex = InceptionExtractor::open(models().join("world-classifier"), &cpu()).unwrap();
    let f = ex.features(&refs).unwrap();
    assert_eq!((f.pool_dim, f.classes), (128, 18));
    // Ground truth of the 4 prompts (class = 3 * colour + shape; colours red green blue yellow
    // purple cyan, shapes circle square triangle; of two objects the upper / left one):
    // red circle; blue triangle (above); green square; cyan triangle (left of the purple circle).
    let truth = [0, 3 * 2 + 2, 3 + 1, 3 * 5 + 2];
    for (i, r) in g["classifier"].as_array().unwrap().iter().enumerate() {
        let (p, k) = (f.pool_dim, f.classes);
        assert_close(
            &format!("pool {i}"),
            &f.pool[i * p..(i + 1) * p],
            &f64s(&r["pool"]),
            1e-4,
        );
        assert_close(
            &format!("logits {i}"),
            &f.logits[i * k..(i + 1) * k],
            &f64s(&r["logits"]),
            1e-4,
        );
        let l = &f.logits[i * f.classes..(i + 1) * f.classes];
        assert_eq!(argmax(l), truth[i], "classifier on image {i}: {l:?}");
    }
}
