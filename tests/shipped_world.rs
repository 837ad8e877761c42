//! The shipped default: `models/default` is the world-trained bundle, it draws what world prompts
//! ask for, and `models/world-prefs` is an ImageRewardDB folder the trainer's loader reads.
//!
//! Reference numbers (tools/README.md "The world model", measured on 300 held-out test prompts by
//! tools/world_eval.py, whose first 16 images `dpoimg generate` reproduces exactly): 41.7 % all
//! attributes correct, mean fraction of attributes correct 0.86, position 0.41 (chance 0.11). These
//! tests check the committed files against that, with margins wide enough for ONNX Runtime builds
//! that differ in the last bits, and narrow enough that a wrong tokenizer, scheduler, latent scale
//! or VAE (all of which draw off-prompt images, mean fraction below 0.5) fails.
//!
//! The trainer runs its own UNet, so the shipped bundle's config (three cross-attention levels, 8
//! norm groups, 4 heads per block) must mean the same to it as to the exported ONNX graph: an
//! adapter trained here on `models/world` is checked to sample exactly as it trained.

mod common;

use common::{max_abs, open_cpu_engine};

use dpoimg::bundle::{Bundle, Verify};
use dpoimg::data::{load_pairs, LoadOptions};
use dpoimg::finetune::{self, DpoConfig, Objective};
use dpoimg::lora::AdapterRef;
use dpoimg::train::{Cpu, Tensor, UNet, UNetInput};
use dpoimg::CancelToken;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

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
    let position = summary["attributes"]["position"]["accuracy"]
        .as_f64()
        .unwrap();
    eprintln!(
        "48 test prompts: mean score {mean:.3}, all correct {all:.3}, colour {colour:.3}, position {position:.3}"
    );
    assert!(mean > 0.7, "mean checker score {mean}");
    assert!(colour > 0.8, "colour accuracy {colour}");
    assert!((0.1..0.6).contains(&all), "all-correct {all}");
    // placement comes from the text (chance 0.11; the epsilon base before session 9 scored 0.12,
    // measured 0.455 here)
    assert!(position > 0.25, "position accuracy {position}");
}

/// Pairs per split of a shipped ImageRewardDB folder, every image checked to exist and decode.
fn pair_counts(db: &Path) -> [usize; 3] {
    ["train", "validation", "test"].map(|split| {
        let opts = LoadOptions {
            split: Some(split.into()),
            check_images: true,
            ..Default::default()
        };
        let (pairs, _) = load_pairs(db, &opts).expect("loads");
        pairs.len()
    })
}

#[test]
fn shipped_preference_data_loads() {
    // `dpoimg world annotate`'s own counts when it wrote each set (tools/world_prefs.sh): the
    // bundle's guidance 7.5, and N_TRAIN=1000 GUIDANCE=1 for the guidance-1 demo's set
    assert_eq!(
        pair_counts(&repo().join("models/world-prefs")),
        [1217, 80, 314]
    );
    assert_eq!(
        pair_counts(&repo().join("models/world-prefs-g1")),
        [4102, 78, 411]
    );
}

/// A 3-step SFT run on the shipped preference data at a high learning rate (so that the adapter
/// moves the output visibly), then the trainer's UNet and the ONNX UNet on the same noisy latents,
/// timesteps and prompt states, without and with that adapter: equal to 1e-5 (measured ~2e-6,
/// outputs up to ~3), while the adapter changes the output by far more than that.
#[test]
fn trainer_unet_equals_the_onnx_unet_on_the_shipped_bundle() {
    let bundle = repo().join("models/world");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = DpoConfig {
        bundle: bundle.clone(),
        data: repo().join("models/world-prefs"),
        output: tmp.path().join("run"),
        cache_dir: Some(tmp.path().join("cache")),
        max_pairs: Some(8),
        objective: Objective::Sft,
        steps: 3,
        batch_pairs: 2,
        lr: 2e-2,
        checkpoint_every: 0,
        threads: 2,
        ..DpoConfig::default()
    };
    finetune::run_dpo(&cfg, &mut |_| {}, &CancelToken::new()).expect("sft run");
    let adapter_path = cfg.output.join("adapter.safetensors");

    let engine = open_cpu_engine(&bundle, 2).expect("world bundle opens");
    let be = Arc::new(Cpu::new(2));
    let unet = UNet::load(
        be.clone(),
        &bundle.join("unet_config.json"),
        &bundle.join("unet.safetensors"),
    )
    .expect("world UNet loads into the trainer");

    let shape = [2usize, 4, 16, 16];
    let n: usize = shape.iter().product();
    let x: Vec<f32> = {
        let mut rng = dpoimg::rng::TorchRng::new(3);
        rng.randn(n)
    };
    let ts = [700f32, 40.0];
    let (eshape, ehs) = engine
        .encode_prompts(&["a red circle above a blue square", ""])
        .unwrap();
    let xt = Tensor::from_host(&*be, &x, &shape);
    let ct = Tensor::from_host(&*be, &ehs, &eshape);
    let input = UNetInput {
        sample: &xt,
        timesteps: &ts,
        ehs: &ct,
    };
    let onnx = |adapters: &[AdapterRef]| {
        let lora = engine.compose(adapters).unwrap();
        engine
            .unet_forward(&shape, &x, &ts, &eshape, &ehs, &lora)
            .unwrap()
    };

    let base = unet.forward(&input, None).unwrap().to_host(&*be);
    let d = max_abs(&base, &onnx(&[]));
    eprintln!("world bundle, base: trainer vs ONNX max |diff| {d:.2e}");
    assert!(d <= 1e-5, "base: {d:.2e}");

    let lora = unet
        .load_lora(&adapter_path)
        .expect("trainer reads its adapter");
    let tuned = unet.forward(&input, Some(&lora)).unwrap().to_host(&*be);
    let adapter = AdapterRef {
        adapter: engine.load_adapter(&adapter_path).expect("engine reads it"),
        strength: 1.0,
    };
    let d = max_abs(&tuned, &onnx(&[adapter]));
    let moved = max_abs(&tuned, &base);
    eprintln!(
        "world bundle, adapter: trainer vs ONNX max |diff| {d:.2e}; adapter moved {moved:.2e}"
    );
    assert!(d <= 1e-5, "adapter: {d:.2e}");
    assert!(
        moved > 1e-3,
        "the adapter must change the output ({moved:.2e})"
    );
}
