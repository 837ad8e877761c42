//! ImageReward scoring against the `image-reward` package on the tiny random model
//! (tools/export_imagereward.py --tiny): tokens, preprocessing and scores; and bad input.

mod common;

use common::{assets, load_golden, load_json};
use dpoimg::data::{resize_crop, ImageSize, Resample};
use dpoimg::score::cli::{collect_jobs, run, ScoreArgs};
use dpoimg::score::{load_image, RewardModel, RgbRef, ScoreError, ScoreOptions};
use std::path::{Path, PathBuf};

fn reward_dir() -> PathBuf {
    assets().join("reward-tiny")
}

fn images_dir() -> PathBuf {
    assets().join("score-images")
}

fn open(batch: usize) -> RewardModel {
    let opts = ScoreOptions {
        batch_size: batch,
        session: dpoimg::runtime::SessionOptions {
            device: dpoimg::runtime::Device::Cpu,
            ..Default::default()
        },
        ..Default::default()
    };
    RewardModel::open(reward_dir(), &opts).expect("tiny reward bundle opens")
}

fn golden_images() -> (Vec<String>, Vec<dpoimg::data::RgbImage>) {
    let g = load_json("score/imagereward_tiny.json");
    let names: Vec<String> = g["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let imgs = names
        .iter()
        .map(|n| load_image(&images_dir().join(n)).unwrap())
        .collect();
    (names, imgs)
}

#[test]
fn tokens_equal_the_python_tokenizer() {
    let m = open(8);
    let g = load_json("score/imagereward_tiny.json");
    for p in g["prompts"].as_array().unwrap() {
        let prompt = p["prompt"].as_str().unwrap();
        let (ids, mask) = m.tokenize(prompt).unwrap();
        let want_ids: Vec<i64> = p["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let want_mask: Vec<i64> = p["attention_mask"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(ids, want_ids, "ids of {prompt:?}");
        assert_eq!(mask, want_mask, "mask of {prompt:?}");
    }
}

/// Resize(224, bicubic) + CenterCrop(224) are Pillow/torchvision-exact (tolerance 0) and the
/// normalised tensor equals torchvision's `ToTensor` + `Normalize` bit for bit.
#[test]
fn preprocessing_equals_pil_and_torchvision() {
    let m = open(8);
    let golden = load_golden("score/imagereward_tiny.safetensors");
    let (names, imgs) = golden_images();
    let mut checked_tensor = 0;
    for (n, img) in names.iter().zip(&imgs) {
        let crop = resize_crop(img, ImageSize::square(224), Resample::Bicubic);
        let want = &golden[&format!("crop.{n}")];
        assert_eq!(want.shape, vec![224, 224, 3]);
        let diff = crop
            .data
            .iter()
            .zip(&want.data)
            .filter(|(a, b)| **a as f64 != **b)
            .count();
        assert_eq!(diff, 0, "{n}: {diff} crop bytes differ from PIL");
        if let Some(t) = golden.get(&format!("pixel_values.{n}")) {
            let got = m.preprocess(RgbRef::from(img)).unwrap();
            let d = common::max_abs_diff(&got, &t.data);
            assert_eq!(d, 0.0, "{n}: preprocessed tensor differs by {d}");
            checked_tensor += 1;
        }
    }
    assert!(checked_tensor >= 1);
}

/// Scores equal the package's `ImageReward.score(prompt, [images])` to 1e-4 (measured: a few
/// 1e-6), in batches of 3 (so a batch is split) and of 1.
#[test]
fn scores_equal_the_python_imagereward() {
    let g = load_json("score/imagereward_tiny.json");
    let (_, imgs) = golden_images();
    let refs: Vec<RgbRef<'_>> = imgs.iter().map(RgbRef::from).collect();
    let mut worst = 0f64;
    for batch in [3, 1] {
        let m = open(batch);
        for p in g["prompts"].as_array().unwrap() {
            let prompt = p["prompt"].as_str().unwrap();
            let got = m.score(prompt, &refs).unwrap();
            let want: Vec<f64> = p["scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(got.len(), want.len());
            for (a, b) in got.iter().zip(&want) {
                let d = (*a as f64 - b).abs();
                worst = worst.max(d);
                assert!(d <= 1e-4, "{prompt:?}: {a} vs python {b}");
            }
            let single = p["single_score_0"].as_f64().unwrap();
            assert!((got[0] as f64 - single).abs() <= 1e-4);
        }
        // The scores are not all alike: the test would notice a wrong input.
        let s = m.score("a red circle above a blue square", &refs).unwrap();
        assert!(s.iter().any(|v| (v - s[0]).abs() > 0.1), "{s:?}");
    }
    eprintln!("max |rust - python| over all scores: {worst:.3e}");
}

#[test]
fn engine_images_and_buffers_are_checked() {
    let m = open(4);
    let bad = RgbRef {
        width: 4,
        height: 4,
        data: &[0u8; 10],
    };
    let e = m.score("x", &[bad]).unwrap_err();
    assert!(matches!(e, ScoreError::BadImage { index: 0, .. }), "{e}");
    assert!(e.to_string().contains("48 bytes"), "{e}");
    let img = dpoimg::engine::Image {
        width: 8,
        height: 6,
        rgb: vec![128; 8 * 6 * 3],
    };
    let s = m.score("x", &[RgbRef::from(&img)]).unwrap();
    assert!(s[0].is_finite());
    assert!(m.score("x", &[]).unwrap().is_empty());
}

#[test]
fn wrong_bundle_kind_is_named() {
    let e = RewardModel::open(common::bundle_dir(), &ScoreOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("not a dpoimg-reward bundle") && msg.contains("model bundle"),
        "{msg}"
    );
    let e = RewardModel::open("/nonexistent/reward", &ScoreOptions::default()).unwrap_err();
    assert!(e.to_string().contains("no such directory"), "{e}");
    // Another kind in reward.json.
    let d = tempfile::tempdir().unwrap();
    copy_bundle(d.path());
    let p = d.path().join("reward.json");
    let s = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"imagereward\"", "\"pickscore\"");
    std::fs::write(&p, s).unwrap();
    let e = RewardModel::open(d.path(), &ScoreOptions::default()).unwrap_err();
    assert!(
        e.to_string().contains("field `kind`") && e.to_string().contains("pickscore"),
        "{e}"
    );
}

fn copy_bundle(to: &Path) {
    for f in std::fs::read_dir(reward_dir()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
    }
}

#[test]
fn corrupt_or_escaping_bundle_files_are_refused() {
    let d = tempfile::tempdir().unwrap();
    copy_bundle(d.path());
    let tok = d.path().join("tokenizer.json");
    let mut t = std::fs::read(&tok).unwrap();
    t.push(b' ');
    std::fs::write(&tok, t).unwrap();
    let e = RewardModel::open(d.path(), &ScoreOptions::default()).unwrap_err();
    assert!(e.to_string().contains("sha256 mismatch"), "{e}");

    let p = d.path().join("reward.json");
    let s = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"onnx\": \"model.onnx\"", "\"onnx\": \"../model.onnx\"");
    std::fs::write(&p, s).unwrap();
    let e = RewardModel::open(d.path(), &ScoreOptions::default()).unwrap_err();
    assert!(e.to_string().contains("leaves the directory"), "{e}");

    let s = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"bicubic\"", "\"lanczos\"");
    std::fs::write(&p, s.replace("../model.onnx", "model.onnx")).unwrap();
    let e = RewardModel::open(d.path(), &ScoreOptions::default()).unwrap_err();
    assert!(e.to_string().contains("preprocess.resize"), "{e}");
}

fn args(list: &[&str], prompts: Option<&Path>, json: bool) -> ScoreArgs {
    ScoreArgs {
        reward: reward_dir(),
        prompts: prompts.map(Path::to_path_buf),
        args: list.iter().map(|s| s.to_string()).collect(),
        json,
        batch_size: 2,
        rt: dpoimg::engine::RuntimeFlags {
            device: dpoimg::runtime::Device::Cpu,
            ..Default::default()
        },
    }
}

#[test]
fn cli_scores_files_and_matches_the_library() {
    let dir = images_dir();
    let wide = dir.join("wide.png");
    let tall = dir.join("tall.png");
    let a = args(
        &[
            "a red circle above a blue square",
            wide.to_str().unwrap(),
            tall.to_str().unwrap(),
        ],
        None,
        true,
    );
    let mut out = Vec::new();
    run(&a, &mut out).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let g = load_json("score/imagereward_tiny.json");
    let want = g["prompts"][0]["scores"].as_array().unwrap();
    // wide.png and tall.png are the golden's images 0 and 1.
    for (k, w) in [0usize, 1].iter().zip(want) {
        let got = v["results"][*k]["score"].as_f64().unwrap();
        assert!((got - w.as_f64().unwrap()).abs() <= 1e-4, "{got} vs {w}");
    }
    assert_eq!(v["count"], 2);

    // Folder + prompts file, table output.
    let d = tempfile::tempdir().unwrap();
    for n in ["wide.png", "square.webp"] {
        std::fs::copy(dir.join(n), d.path().join(n)).unwrap();
    }
    let pf = d.path().join("prompts.tsv");
    std::fs::write(
        &pf,
        "# comment\nwide.png\ta red circle above a blue square\nsquare.webp\t\n",
    )
    .unwrap();
    let mut out = Vec::new();
    run(
        &args(&[d.path().to_str().unwrap()], Some(&pf), false),
        &mut out,
    )
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    let first: f64 = text
        .lines()
        .nth(2)
        .unwrap()
        .split('\t')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let want = g["prompts"][0]["scores"][0].as_f64().unwrap();
    assert!(text.lines().nth(2).unwrap().contains("wide.png"), "{text}");
    assert!((first - want).abs() <= 1e-4, "{text}");
    let second: f64 = text
        .lines()
        .nth(1)
        .unwrap()
        .split('\t')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let want_empty = g["prompts"][2]["scores"][2].as_f64().unwrap();
    assert!((second - want_empty).abs() <= 1e-4, "{text}");
}

#[test]
fn cli_bad_input_is_named() {
    let dir = images_dir();
    let err = |a: &ScoreArgs| run(a, &mut Vec::new()).unwrap_err().to_string();

    let missing = dir.join("nope.png");
    let e = err(&args(&["p", missing.to_str().unwrap()], None, false));
    assert!(e.contains("nope.png") && e.contains("no such file"), "{e}");

    let broken = dir.join("broken.png");
    let e = err(&args(&["p", broken.to_str().unwrap()], None, false));
    assert!(e.contains("broken.png") && e.contains("png"), "{e}");

    let e = err(&args(&["p", dir.to_str().unwrap()], None, false));
    assert!(
        e.contains("is a directory") && e.contains("--prompts"),
        "{e}"
    );

    let e = err(&args(&["only a prompt"], None, false));
    assert!(e.contains("no images"), "{e}");

    let txt = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(txt.path(), b"GIF89a....").unwrap();
    let e = err(&args(&["p", txt.path().to_str().unwrap()], None, false));
    assert!(e.contains("not a PNG, JPEG or WebP"), "{e}");

    // Prompts file and folder disagree, both ways.
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("wide.png"), d.path().join("wide.png")).unwrap();
    std::fs::copy(dir.join("tall.png"), d.path().join("tall.png")).unwrap();
    let pf = d.path().join("p.tsv");
    std::fs::write(&pf, "wide.png\tx\n").unwrap();
    let a = args(&[d.path().to_str().unwrap()], Some(&pf), false);
    let e = collect_jobs(&a).unwrap_err().to_string();
    assert!(
        e.contains("tall.png") && e.contains("no prompt") && e.contains("1 line(s) for 2 image(s)"),
        "{e}"
    );
    std::fs::write(&pf, "wide.png\tx\ntall.png\ty\ngone.png\tz\n").unwrap();
    let e = collect_jobs(&a).unwrap_err().to_string();
    assert!(e.contains("gone.png") && e.contains("missing"), "{e}");
    std::fs::write(&pf, "wide.png x\n").unwrap();
    let e = collect_jobs(&a).unwrap_err().to_string();
    assert!(e.contains("p.tsv:1") && e.contains("no tab"), "{e}");

    // A folder without --prompts needs dpoimg provenance in every PNG.
    let a = args(&[d.path().to_str().unwrap()], None, false);
    let e = collect_jobs(&a).unwrap_err().to_string();
    assert!(e.contains("no prompt") && e.contains("--prompts"), "{e}");

    // Wrong bundle kind through the CLI.
    let mut a = args(&["p", dir.join("wide.png").to_str().unwrap()], None, false);
    a.reward = common::bundle_dir();
    let e = err(&a);
    assert!(e.contains("not a dpoimg-reward bundle"), "{e}");
}
