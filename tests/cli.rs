//! The `dpoimg` binary as a user runs it: PNGs with provenance, reproducible seeds, latents in and
//! out, and clear errors for bad arguments.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

fn gen(dir: &Path, extra: &[&str]) -> Vec<String> {
    let bundle = bundle_dir();
    let mut args = vec![
        "generate",
        "a red circle above a blue square 🐱",
        "--bundle",
        bundle.to_str().unwrap(),
        "--steps",
        "3",
        "--quiet",
        "--threads",
        "1",
        "-o",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ok(&dpoimg(&args)).lines().map(str::to_string).collect()
}

#[test]
fn generate_writes_pngs_with_provenance() {
    let d = tempfile::tempdir().unwrap();
    let r4 = assets().join("adapters/r4.safetensors");
    let spec = format!("{}:0.5", r4.display());
    let files = gen(
        d.path(),
        &[
            "--seed",
            "7",
            "--count",
            "2",
            "--adapter",
            &spec,
            "--negative-prompt",
            "blurry",
        ],
    );
    assert_eq!(files.len(), 2, "{files:?}");
    let bytes = std::fs::read(&files[0]).unwrap();
    let chunks: std::collections::HashMap<String, String> =
        dpoimg::provenance::read_png_text(&bytes)
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(chunks["prompt"], "a red circle above a blue square 🐱");
    assert_eq!(chunks["negative_prompt"], "blurry");
    assert_eq!(chunks["seed"], "7");
    assert_eq!(chunks["steps"], "3");
    assert_eq!(chunks["sampler"], "ddim");
    assert_eq!(chunks["size"], "16x16");
    let bundle = dpoimg::bundle::Bundle::open(bundle_dir(), dpoimg::bundle::Verify::Quick).unwrap();
    assert_eq!(chunks["bundle_sha256"], bundle.hash());
    let adapter_hash = dpoimg::hash::sha256_file(&r4).unwrap();
    assert_eq!(chunks["adapters"], format!("r4:0.5:{adapter_hash}"));
    let json: serde_json::Value = serde_json::from_str(&chunks["dpoimg"]).unwrap();
    assert_eq!(json["seed"], 7);
    // `info IMAGE` prints the same record.
    let info = ok(&dpoimg(&["info", &files[0]]));
    assert!(
        info.contains("seed: 7") && info.contains("guidance: 7.5"),
        "{info}"
    );
    // Decodes as a 16x16 RGB PNG.
    let dec = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap();
    assert_eq!((dec.info().width, dec.info().height), (16, 16));
}

#[test]
fn same_seed_same_png_and_latents_round_trip() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let fa = gen(
        a.path(),
        &["--seed", "3", "--save-latents", "--sampler", "euler-a"],
    );
    let fb = gen(b.path(), &["--seed", "3", "--sampler", "euler-a"]);
    let png = |p: &str| dpoimg::provenance::read_png_text(&std::fs::read(p).unwrap()).unwrap();
    assert_eq!(
        std::fs::read(&fa[0]).unwrap(),
        std::fs::read(&fb[0]).unwrap(),
        "same seed must give the same file"
    );
    assert!(fa[1].ends_with(".latents.npy"));
    let (shape, _) = dpoimg::npy::read_f32(Path::new(&fa[1])).unwrap();
    assert_eq!(shape, vec![1, 4, 8, 8]);
    // A second run into the same directory never overwrites.
    let fc = gen(a.path(), &["--seed", "3", "--sampler", "euler-a"]);
    assert_ne!(fc[0], fa[0]);
    assert!(Path::new(&fa[0]).exists());
    // --init-latents with the seed's own noise reproduces the seeded image (DDIM draws no noise).
    let noise = dpoimg::rng::TorchRng::new(5).randn(4 * 8 * 8);
    let npy = a.path().join("init.npy");
    dpoimg::npy::write_f32(&npy, &[1, 4, 8, 8], &noise).unwrap();
    let seeded = gen(b.path(), &["--seed", "5"]);
    let from_file = gen(
        b.path(),
        &["--seed", "99", "--init-latents", npy.to_str().unwrap()],
    );
    let pixels = |p: &str| {
        let mut r = png::Decoder::new(std::io::Cursor::new(std::fs::read(p).unwrap()))
            .read_info()
            .unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        r.next_frame(&mut buf).unwrap();
        buf
    };
    assert_eq!(pixels(&seeded[0]), pixels(&from_file[0]));
    assert!(png(&from_file[0])
        .iter()
        .any(|(k, v)| k == "dpoimg" && v.contains("init.npy")));
}

#[test]
fn bad_arguments_fail_with_clear_messages() {
    let d = tempfile::tempdir().unwrap();
    let bundle = bundle_dir();
    let b = bundle.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["generate", "x", "--bundle", b, "--sampler", "lms"],
            "unknown sampler",
        ),
        (
            vec!["generate", "x", "--bundle", b, "--steps", "0"],
            "steps",
        ),
        (
            vec!["generate", "x", "--bundle", b, "--width", "17"],
            "multiple of 2",
        ),
        (
            vec!["generate", "x", "--bundle", b, "--guidance", "NaN"],
            "guidance",
        ),
        (
            vec!["generate", "x", "--bundle", "/nonexistent/bundle"],
            "not a dpoimg bundle",
        ),
        (
            vec!["generate", "x", "--bundle", b, "--device", "tpu"],
            "unknown device",
        ),
        (
            vec![
                "generate",
                "x",
                "--bundle",
                b,
                "--adapter",
                "/nonexistent/a.safetensors",
            ],
            "/nonexistent/a.safetensors",
        ),
        (
            vec![
                "generate",
                "x",
                "--bundle",
                b,
                "--ort-lib",
                "/nonexistent/libonnxruntime.so",
            ],
            "/nonexistent/libonnxruntime.so",
        ),
        (
            vec![
                "generate",
                "x",
                "--bundle",
                b,
                "--init-latents",
                "/nonexistent.npy",
            ],
            "/nonexistent.npy",
        ),
        (
            vec!["generate", "x", "--bundle", b, "-o", "/proc/dpoimg-out"],
            "output directory",
        ),
    ];
    // With the CPU build of ONNX Runtime (what scripts/install-ort.sh installs) asking for CUDA
    // must say what is missing, not fall back silently. (A GPU build would run instead.)
    let info = ok(&dpoimg(&["info", b]));
    let mut cases = cases;
    if info.contains("CUDA provider absent") {
        cases.push((
            vec!["generate", "x", "--bundle", b, "--device", "cuda"],
            "has no CUDA execution provider",
        ));
    }
    for (args, needle) in cases {
        let mut a = args.clone();
        a.extend_from_slice(&["--quiet", "-o", d.path().to_str().unwrap()]);
        if args.contains(&"-o") {
            a.truncate(a.len() - 2);
        }
        let msg = err(&dpoimg(&a));
        assert!(msg.contains(needle), "{args:?}: {msg:?} lacks {needle:?}");
    }
}

#[test]
fn info_describes_the_bundle_and_finetune_prints_usage() {
    let out = ok(&dpoimg(&["info", bundle_dir().to_str().unwrap()]));
    for needle in [
        "tiny-sd1",
        "dpoimg-bundle v1",
        "sha256 verified",
        "LoRA modules",
        "onnxruntime",
    ] {
        assert!(out.contains(needle), "{out}");
    }
    let ft = Command::new(env!("CARGO_BIN_EXE_dpoimg-finetune"))
        .output()
        .unwrap();
    // no subcommand: clap's usage error (exit 2) lists the subcommands
    assert_eq!(ft.status.code(), Some(2));
    let err = String::from_utf8_lossy(&ft.stderr);
    assert!(err.contains("dpo") && err.contains("validate"), "{err}");
}

#[test]
fn adapter_merge_and_inspect() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("merged.safetensors");
    let r4 = assets().join("adapters/r4.safetensors");
    let b = bundle_dir();
    let msg = ok(&dpoimg(&[
        "adapter",
        "merge",
        "--bundle",
        b.to_str().unwrap(),
        "--adapter",
        r4.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]));
    let n = dpoimg::bundle::Bundle::open(&b, dpoimg::bundle::Verify::Quick)
        .unwrap()
        .manifest()
        .unet
        .lora
        .modules
        .len();
    assert!(msg.contains(&format!("merged {n} modules")), "{msg}");
    assert!(out.is_file());
    let info = ok(&dpoimg(&[
        "adapter",
        "inspect",
        r4.to_str().unwrap(),
        "--bundle",
        b.to_str().unwrap(),
    ]));
    assert!(
        info.contains("max rank 4") && info.contains("dpoimg-lora/1"),
        "{info}"
    );
    let bad = assets().join("adapters/bad/other_bundle.safetensors");
    let e = err(&dpoimg(&[
        "adapter",
        "inspect",
        bad.to_str().unwrap(),
        "--bundle",
        b.to_str().unwrap(),
    ]));
    assert!(e.contains("another model"), "{e}");
}
