//! Bad input of every kind gets a clear error naming the thing at fault, never a panic.
//! Table-driven: each case builds its broken input, runs, and checks the message.

mod common;

use common::*;
use dpoimg::bundle::{Bundle, Verify};
use dpoimg::lora::AdapterRef;
use dpoimg::{CancelToken, GenerateRequest};
use std::path::{Path, PathBuf};

/// A private copy of the tiny bundle that a case may break.
fn copy_bundle() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("bundle");
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(bundle_dir()).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    (tmp, dst)
}

fn edit_manifest(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("bundle.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// Replaces a bundle file and records its new hash, so only the content is wrong.
fn replace_file(dir: &Path, rel: &str, bytes: &[u8]) {
    std::fs::write(dir.join(rel), bytes).unwrap();
    let h = dpoimg::hash::sha256_hex(bytes);
    edit_manifest(dir, |v| v["files"][rel] = serde_json::Value::String(h));
}

fn open_engine(dir: &Path) -> Result<dpoimg::Engine, String> {
    common::open_cpu_engine(dir, 1).map_err(|e| e.to_string())
}

fn expect_err(case: &str, r: Result<impl std::fmt::Debug, String>, needles: &[&str]) {
    let msg = match r {
        Ok(v) => panic!("{case}: expected an error, got {v:?}"),
        Err(m) => m,
    };
    for n in needles {
        assert!(msg.contains(n), "{case}: message {msg:?} lacks {n:?}");
    }
    eprintln!("{case}: {msg}");
}

#[test]
fn broken_bundles_are_refused_clearly() {
    type Case = (&'static str, fn(&Path), &'static [&'static str]);
    let cases: Vec<Case> = vec![
        (
            "no bundle.json",
            |d| std::fs::remove_file(d.join("bundle.json")).unwrap(),
            &["not a dpoimg bundle", "export_bundle.py"],
        ),
        (
            "invalid JSON",
            |d| std::fs::write(d.join("bundle.json"), b"{\"format\": ").unwrap(),
            &["invalid JSON", "line"],
        ),
        (
            "unknown version",
            |d| edit_manifest(d, |v| v["version"] = 2.into()),
            &["version", "unknown bundle version 2"],
        ),
        (
            "wrong format",
            |d| edit_manifest(d, |v| v["format"] = "something".into()),
            &["format", "dpoimg-bundle"],
        ),
        (
            "missing field",
            |d| {
                edit_manifest(d, |v| {
                    v["unet"].as_object_mut().unwrap().remove("onnx");
                })
            },
            &["missing field `onnx`"],
        ),
        (
            "missing file",
            |d| std::fs::remove_file(d.join("unet.onnx")).unwrap(),
            &["unet.onnx", "missing"],
        ),
        (
            "sha256 mismatch",
            |d| {
                let p = d.join("vae_decoder.onnx");
                let mut b = std::fs::read(&p).unwrap();
                let n = b.len() / 2;
                b[n] ^= 0xff;
                std::fs::write(p, b).unwrap();
            },
            &["vae_decoder.onnx", "sha256 mismatch"],
        ),
        (
            "path escape",
            |d| edit_manifest(d, |v| v["vae"]["decoder"] = "../../etc/passwd".into()),
            &["leaves the bundle directory"],
        ),
        (
            "absolute path",
            |d| edit_manifest(d, |v| v["unet"]["config"] = "/etc/passwd".into()),
            &["leaves the bundle directory"],
        ),
        (
            "unhashed file",
            |d| {
                edit_manifest(d, |v| {
                    v["files"]
                        .as_object_mut()
                        .unwrap()
                        .remove("unet.safetensors");
                })
            },
            &["no sha256 recorded", "unet.safetensors"],
        ),
        (
            "bad architecture",
            |d| edit_manifest(d, |v| v["architecture"] = "sdxl".into()),
            &["architecture", "sd1"],
        ),
        (
            "non-power-of-two factor",
            |d| edit_manifest(d, |v| v["vae"]["downsample_factor"] = 3.into()),
            &["vae.downsample_factor"],
        ),
        (
            "ONNX external data outside the bundle",
            |d| {
                // ModelProto{graph{initializer{external_data{key:"location", value:"../secret"}}}}
                let ld = |f: u8, p: &[u8]| [vec![f << 3 | 2, p.len() as u8], p.to_vec()].concat();
                let entry = [ld(1, b"location"), ld(2, b"../secret")].concat();
                let model = ld(7, &ld(5, &[ld(1, b"w"), ld(13, &entry)].concat()));
                replace_file(d, "unet.onnx", &model);
            },
            &["unet.onnx", "../secret", "leaves the bundle directory"],
        ),
    ];
    assert!(cases.len() >= 12);
    for (name, breaker, needles) in cases {
        let (_tmp, dir) = copy_bundle();
        breaker(&dir);
        expect_err(
            name,
            Bundle::open(&dir, Verify::Full)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            needles,
        );
    }
}

#[test]
fn bundles_whose_models_disagree_with_the_manifest_are_refused() {
    type Case = (&'static str, fn(&Path), &'static [&'static str]);
    let cases: Vec<Case> = vec![
        (
            "corrupt ONNX",
            |d| replace_file(d, "text_encoder.onnx", b"this is not an onnx model"),
            &["text_encoder.onnx"],
        ),
        (
            "wrong cross-attention width",
            |d| {
                edit_manifest(d, |v| {
                    v["unet"]["cross_attention_dim"] = 48.into();
                    v["text_encoder"]["hidden_size"] = 48.into();
                })
            },
            &["unet.onnx", "encoder_hidden_states", "48"],
        ),
        (
            "LoRA input not in the graph",
            |d| {
                edit_manifest(d, |v| {
                    v["unet"]["lora"]["modules"]
                        .as_array_mut()
                        .unwrap()
                        .push(serde_json::json!(
                {"name": "down_blocks.9.attn1.to_q", "in_features": 32, "out_features": 32}));
                })
            },
            &["unet.onnx", "down_blocks.9.attn1.to_q.lora_A.weight"],
        ),
        (
            "wrong LoRA width",
            |d| {
                edit_manifest(d, |v| {
                    v["unet"]["lora"]["modules"][0]["in_features"] = 33.into()
                })
            },
            &["unet.onnx", "lora_A", "33"],
        ),
        (
            "bad scheduler config",
            |d| edit_manifest(d, |v| v["scheduler"]["beta_schedule"] = "cubic".into()),
            &["scheduler", "cubic"],
        ),
    ];
    for (name, breaker, needles) in cases {
        let (_tmp, dir) = copy_bundle();
        breaker(&dir);
        expect_err(name, open_engine(&dir).map(|_| ()), needles);
    }
}

#[test]
fn bad_adapters_are_refused_clearly() {
    let e = engine();
    let bad = assets().join("adapters/bad");
    let cases: [(&str, &[&str]); 6] = [
        ("wrong_shape.safetensors", &["wrong_shape", "lora_A", "31"]),
        (
            "unknown_module.safetensors",
            &["unknown_module", "not a LoRA input of this bundle"],
        ),
        ("rank_mismatch.safetensors", &["rank_mismatch", "lora_B"]),
        (
            "truncated.safetensors",
            &["truncated", "not a valid safetensors file"],
        ),
        (
            "other_bundle.safetensors",
            &["other_bundle", "made for another model"],
        ),
        ("does_not_exist.safetensors", &["does_not_exist"]),
    ];
    for (file, needles) in cases {
        expect_err(
            file,
            e.load_adapter(&bad.join(file))
                .map(|_| ())
                .map_err(|e| e.to_string()),
            needles,
        );
    }
}

#[test]
fn bad_requests_are_refused_clearly() {
    let e = engine();
    let r4 = e
        .load_adapter(&assets().join("adapters/r4.safetensors"))
        .unwrap();
    type Case = (
        &'static str,
        Box<dyn Fn(&mut GenerateRequest)>,
        &'static [&'static str],
    );
    let cases: Vec<Case> = vec![
        (
            "zero steps",
            Box::new(|r| r.steps = Some(0)),
            &["steps", "0"],
        ),
        (
            "huge steps",
            Box::new(|r| r.steps = Some(100_000)),
            &["steps", "100000"],
        ),
        ("zero width", Box::new(|r| r.width = Some(0)), &["width"]),
        (
            "huge height",
            Box::new(|r| r.height = Some(1 << 20)),
            &["height"],
        ),
        (
            "non-multiple width",
            Box::new(|r| r.width = Some(17)),
            &["width", "multiple of 2"],
        ),
        ("zero count", Box::new(|r| r.count = 0), &["count"]),
        ("huge count", Box::new(|r| r.count = 10_000), &["count"]),
        (
            "NaN guidance",
            Box::new(|r| r.guidance = Some(f32::NAN)),
            &["guidance", "NaN"],
        ),
        (
            "negative guidance",
            Box::new(|r| r.guidance = Some(-1.0)),
            &["guidance"],
        ),
        ("negative eta", Box::new(|r| r.eta = -0.5), &["eta"]),
        (
            "huge prompt",
            Box::new(|r| r.prompt = "a".repeat(1 << 20)),
            &["prompt", "bytes"],
        ),
        (
            "init latents of the wrong size",
            Box::new(|r| r.init_latents = Some(vec![0.0; 7])),
            &["init_latents", "7"],
        ),
    ];
    let _ = &r4;
    for (name, f, needles) in cases {
        let mut req = GenerateRequest::new("a red circle");
        req.steps = Some(2);
        f(&mut req);
        expect_err(
            name,
            e.generate(&req, &mut |_| true, &CancelToken::new())
                .map(|g| g.images.len())
                .map_err(|e| e.to_string()),
            needles,
        );
    }
    let mut req = GenerateRequest::new("a red circle");
    req.adapters.push(AdapterRef {
        adapter: r4,
        strength: f32::NAN,
    });
    expect_err(
        "NaN strength",
        e.generate(&req, &mut |_| true, &CancelToken::new())
            .map(|_| ())
            .map_err(|e| e.to_string()),
        &["strength"],
    );
    expect_err(
        "unknown sampler",
        "ddim2"
            .parse::<dpoimg::scheduler::SamplerKind>()
            .map_err(|e| e.to_string()),
        &["ddim2", "euler-a"],
    );
}
