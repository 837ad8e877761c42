//! End-to-end tests of the Diffusion-DPO trainer on the tiny bundle and the committed preference
//! set (tests/assets/train, made by tools/make_train_set.py): the loss at initialisation, that
//! training moves the model toward the preferred images, bit-exact resume after pauses, a
//! cancel and a SIGKILL, the encode-once cache, the adapter file, and bad settings.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use dpoimg::finetune::{self, DpoConfig, Event, FinetuneError, Objective};
use dpoimg::CancelToken;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn data() -> PathBuf {
    root().join("tests/assets/train/prefs.jsonl")
}

/// A small, fast run: 2 pairs x 2 micro-batches per step, checkpoints every 3 steps.
fn small_config(out: &Path, cache: &Path) -> DpoConfig {
    DpoConfig {
        bundle: root().join("tests/assets/tiny-bundle"),
        data: data(),
        output: out.to_path_buf(),
        cache_dir: Some(cache.to_path_buf()),
        steps: 10,
        batch_pairs: 2,
        grad_accum: 2,
        lr: 1e-3,
        beta: 2000.0,
        checkpoint_every: 3,
        threads: 2,
        seed: 7,
        ..DpoConfig::default()
    }
}

fn run(cfg: &DpoConfig) -> Result<finetune::Outcome, FinetuneError> {
    finetune::run_dpo(cfg, &mut |_| {}, &CancelToken::new())
}

fn sha(path: &Path) -> String {
    dpoimg::hash::sha256_file(path).unwrap()
}

/// metrics.jsonl without the timings.
fn metrics_sans_time(run: &Path) -> Vec<String> {
    finetune::metrics::read(&run.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .map(|m| {
            let m = finetune::StepMetrics {
                step_seconds: 0.0,
                ..m
            };
            serde_json::to_string(&m).unwrap()
        })
        .collect()
}

#[test]
fn first_step_loss_is_ln2_and_outputs_are_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let cfg = DpoConfig {
        steps: 2,
        ..small_config(&out, &tmp.path().join("cache"))
    };
    let mut events = Vec::new();
    let o = finetune::run_dpo(&cfg, &mut |e| events.push(e.clone()), &CancelToken::new()).unwrap();
    let m = finetune::metrics::read(&o.metrics).unwrap();
    assert_eq!(m.len(), 2);
    // model = reference at initialisation (B = 0): inside term 0, loss ln 2 exactly
    assert!(
        (m[0].loss - std::f64::consts::LN_2).abs() < 1e-12,
        "{}",
        m[0].loss
    );
    assert_eq!(m[0].model_mse, m[0].ref_mse);
    assert_eq!(m[0].reward_margin, 0.0);
    // after one update the model differs from the reference
    assert_ne!(m[1].model_mse, m[1].ref_mse);
    assert!(m[0].grad_norm > 0.0 && m[0].grad_norm.is_finite());
    assert!(matches!(
        events.first(),
        Some(Event::Loaded { pairs: 12, .. })
    ));
    assert!(matches!(events.last(), Some(Event::Finished(_))));
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Cached {
            images: 24,
            prompts: 13,
            new_images: 24,
            new_prompts: 13
        }
    )));
    for p in &o.plots {
        let bytes = std::fs::read(p).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "{}", p.display());
    }
    assert_eq!(o.adapter_sha256, sha(&o.adapter));

    // The adapter file: diffusers keys for all four attention targets of every block, metadata.
    let bytes = std::fs::read(&o.adapter).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["format"], "dpoimg-lora/1");
    assert_eq!(meta["rank"], "4");
    let prov: serde_json::Value = serde_json::from_str(&meta["provenance"]).unwrap();
    assert_eq!(prov["method"], "diffusion-dpo");
    assert_eq!(prov["pairs"], 12);
    assert_eq!(prov["hyperparameters"]["beta"], 2000.0);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names = st.names();
    for t in ["to_q", "to_k", "to_v", "to_out.0"] {
        assert!(
            names
                .iter()
                .any(|n| n.ends_with(&format!("attn1.{t}.lora_B.weight"))),
            "{t} missing"
        );
    }
    assert!(names.iter().all(|n| n.starts_with("unet.")));
    let bundle = dpoimg::bundle::Bundle::open(&cfg.bundle, dpoimg::bundle::Verify::Quick).unwrap();
    assert_eq!(meta["base_bundle_hash"], bundle.hash());

    // A second run on the same cache encodes nothing.
    let out2 = tmp.path().join("run2");
    let mut events = Vec::new();
    finetune::run_dpo(
        &DpoConfig {
            output: out2,
            ..cfg.clone()
        },
        &mut |e| events.push(e.clone()),
        &CancelToken::new(),
    )
    .unwrap();
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Cached {
            new_images: 0,
            new_prompts: 0,
            ..
        }
    )));
}

#[test]
fn generate_applies_the_trained_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let cfg = DpoConfig {
        steps: 3,
        lr: 1e-2,
        ..small_config(&out, &tmp.path().join("cache"))
    };
    let o = run(&cfg).unwrap();
    let engine = dpoimg::Engine::open(&cfg.bundle, &Default::default()).unwrap();
    let gen = |adapters: Vec<dpoimg::lora::AdapterRef>| {
        let mut r = dpoimg::GenerateRequest::new("a red circle");
        r.steps = Some(4);
        r.seed = 3;
        r.adapters = adapters;
        engine
            .generate(&r, &mut |_| true, &CancelToken::new())
            .unwrap()
    };
    let base = gen(vec![]);
    let tuned = gen(vec![dpoimg::lora::AdapterRef {
        adapter: engine.load_adapter(&o.adapter).unwrap(),
        strength: 1.0,
    }]);
    assert_ne!(base.images[0].rgb, tuned.images[0].rgb);
}

/// The reference run every interrupted run must reproduce.
fn uninterrupted(tmp: &Path) -> (String, Vec<String>) {
    let out = tmp.join("straight");
    let o = run(&small_config(&out, &tmp.join("cache"))).unwrap();
    (o.adapter_sha256, metrics_sans_time(&out))
}

#[test]
fn pause_and_resume_give_the_same_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let (want, want_metrics) = uninterrupted(tmp.path());
    let out = tmp.path().join("paused");
    let base = small_config(&out, &tmp.path().join("cache"));
    // pause after 2 (before the first checkpoint at 3), 5 and 9 steps
    let mut done = 0;
    for (i, n) in [2usize, 3, 4].into_iter().enumerate() {
        let cfg = DpoConfig {
            stop_after: Some(n),
            resume: i > 0,
            ..base.clone()
        };
        match run(&cfg) {
            Err(FinetuneError::Paused { step }) => {
                done += n;
                assert_eq!(step, done)
            }
            other => panic!("expected a pause, got {other:?}"),
        }
    }
    let o = run(&DpoConfig {
        resume: true,
        ..base.clone()
    })
    .unwrap();
    assert_eq!(o.adapter_sha256, want);
    assert_eq!(metrics_sans_time(&out), want_metrics);
    // resuming a finished run changes nothing
    let again = run(&DpoConfig {
        resume: true,
        ..base
    })
    .unwrap();
    assert_eq!(again.adapter_sha256, want);
}

#[test]
fn cancel_mid_step_then_resume_gives_the_same_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let (want, want_metrics) = uninterrupted(tmp.path());
    let out = tmp.path().join("cancelled");
    let cfg = small_config(&out, &tmp.path().join("cache"));
    let cancel = CancelToken::new();
    let c2 = cancel.clone();
    let mut checkpoints = Vec::new();
    let r = finetune::run_dpo(
        &cfg,
        &mut |e| match e {
            // cancel while step 8 is under way (between its micro-batches)
            Event::Step(m) if m.step == 7 => c2.cancel(),
            Event::Checkpoint { step, .. } => checkpoints.push(*step),
            _ => {}
        },
        &cancel,
    );
    assert!(matches!(r, Err(FinetuneError::Cancelled)), "{r:?}");
    assert_eq!(
        checkpoints,
        vec![3, 6, 7],
        "a cancel checkpoints the completed steps"
    );
    let o = run(&DpoConfig {
        resume: true,
        ..cfg
    })
    .unwrap();
    assert_eq!(o.adapter_sha256, want);
    assert_eq!(metrics_sans_time(&out), want_metrics);
}

#[test]
fn sigkill_then_resume_gives_the_same_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let (want, _) = uninterrupted(tmp.path());
    let out = tmp.path().join("killed");
    let cache = tmp.path().join("cache");
    let exe = env!("CARGO_BIN_EXE_dpoimg-finetune");
    let args = |resume: bool| {
        let mut a: Vec<String> = [
            "dpo",
            "--bundle",
            root().join("tests/assets/tiny-bundle").to_str().unwrap(),
            "--data",
            data().to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
            "--steps",
            "10",
            "--batch",
            "2",
            "--grad-accum",
            "2",
            "--lr",
            "1e-3",
            "--beta",
            "2000",
            "--checkpoint-every",
            "3",
            "--threads",
            "2",
            "--seed",
            "7",
            "--quiet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if resume {
            a.push("--resume".into());
        }
        a
    };
    // Kill points: right after the first checkpoint appears, then after the second one.
    for (round, kill_after_ckpt) in [(0, 3usize), (1, 6)] {
        let mut child = Command::new(exe)
            .args(args(round > 0))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        let marker = out.join(format!("checkpoints/step-{kill_after_ckpt:08}/state.json"));
        while !marker.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint appeared"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "the run ended before it could be killed"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let last = Command::new(exe).args(args(true)).output().unwrap();
    assert!(
        last.status.success(),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );
    assert_eq!(sha(&out.join("adapter.safetensors")), want);
}

#[test]
fn training_moves_the_model_toward_the_preferred_images() {
    // 200 steps on the 12 committed pairs; numbers measured on fixed held-out draws.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let cfg = DpoConfig {
        steps: 200,
        batch_pairs: 4,
        grad_accum: 1,
        lr: 1e-3,
        beta: 2000.0,
        targets: [
            "to_q",
            "to_k",
            "to_v",
            "to_out.0",
            "proj_in",
            "proj_out",
            "ff.net.0.proj",
            "ff.net.2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        checkpoint_every: 0,
        seed: 0,
        ..small_config(&out, &tmp.path().join("cache"))
    };
    let o = run(&cfg).unwrap();
    let m = finetune::metrics::read(&o.metrics).unwrap();
    let acc = |r: std::ops::Range<usize>| {
        m[r.clone()].iter().map(|x| x.implicit_acc).sum::<f64>() / r.len() as f64
    };
    let (early, late) = (acc(0..50), acc(100..200));
    eprintln!("training-batch implicit accuracy: steps 1-50 {early:.3}, 101-200 {late:.3}");
    assert!(late > early + 0.05, "early {early}, late {late}");

    let base = finetune::validate::evaluate(&cfg, None, 8, 1234, cfg.beta).unwrap();
    let tuned = finetune::validate::evaluate(&cfg, Some(&o.adapter), 8, 1234, cfg.beta).unwrap();
    eprintln!("held-out draws: base {base:?}\ntuned {tuned:?}");
    assert_eq!(base.implicit_acc, 0.0); // no difference from itself
    assert!((base.loss - std::f64::consts::LN_2).abs() < 1e-12);
    assert_eq!(tuned.draws, 96);
    assert!(tuned.implicit_acc >= 0.65, "{tuned:?}");
    assert!(tuned.loss < std::f64::consts::LN_2 - 0.1, "{tuned:?}");
    // the denoising error moved in favour of the preferred images
    assert!(tuned.preferred_delta < tuned.rejected_delta, "{tuned:?}");
}

#[test]
fn sft_trains_on_the_preferred_images() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let cfg = DpoConfig {
        objective: Objective::Sft,
        steps: 3,
        ..small_config(&out, &tmp.path().join("cache"))
    };
    let o = run(&cfg).unwrap();
    let m = finetune::metrics::read(&o.metrics).unwrap();
    // SFT's loss is the preferred half's MSE; no reference, no implicit accuracy
    assert!((m[0].loss - m[0].model_mse).abs() < 1e-9, "{:?}", m[0]);
    assert_eq!(m[0].implicit_acc, 0.0);
    let bytes = std::fs::read(&o.adapter).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let prov: serde_json::Value =
        serde_json::from_str(&meta.metadata().clone().unwrap()["provenance"]).unwrap();
    assert_eq!(prov["method"], "sft");
}

#[test]
fn bad_settings_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let base = small_config(&tmp.path().join("run"), &cache);
    let cases: Vec<(&str, DpoConfig, &str)> = vec![
        (
            "steps 0",
            DpoConfig {
                steps: 0,
                ..base.clone()
            },
            "`steps`",
        ),
        (
            "batch 0",
            DpoConfig {
                batch_pairs: 0,
                ..base.clone()
            },
            "`batch_pairs`",
        ),
        (
            "beta < 0",
            DpoConfig {
                beta: -1.0,
                ..base.clone()
            },
            "`beta`",
        ),
        (
            "lr NaN",
            DpoConfig {
                lr: f64::NAN,
                ..base.clone()
            },
            "`lr`",
        ),
        (
            "rank 0",
            DpoConfig {
                rank: 0,
                ..base.clone()
            },
            "`rank`",
        ),
        (
            "no targets",
            DpoConfig {
                targets: vec![],
                ..base.clone()
            },
            "`targets`",
        ),
        (
            "dropout 2",
            DpoConfig {
                caption_dropout: 2.0,
                ..base.clone()
            },
            "`caption_dropout`",
        ),
        (
            "empty timestep range",
            DpoConfig {
                timestep_min: 500,
                timestep_max: Some(500),
                ..base.clone()
            },
            "`timestep_max`",
        ),
        (
            "timesteps beyond the scheduler",
            DpoConfig {
                timestep_min: 900,
                timestep_max: Some(1001),
                output: tmp.path().join("d7"),
                ..base.clone()
            },
            "[0, 1000)",
        ),
        (
            "warmup > steps",
            DpoConfig {
                warmup_steps: 99,
                ..base.clone()
            },
            "`warmup_steps`",
        ),
        (
            "no data",
            DpoConfig {
                data: PathBuf::new(),
                ..base.clone()
            },
            "--data",
        ),
        (
            "no output",
            DpoConfig {
                output: PathBuf::new(),
                ..base.clone()
            },
            "--output",
        ),
        (
            "unknown device",
            DpoConfig {
                device: "tpu".into(),
                output: tmp.path().join("d1"),
                ..base.clone()
            },
            "cpu, cuda, cuda:N",
        ),
        (
            "targets match nothing",
            DpoConfig {
                targets: vec!["nonexistent".into()],
                output: tmp.path().join("d2"),
                ..base.clone()
            },
            "matches no linear module",
        ),
        (
            "missing data file",
            DpoConfig {
                data: tmp.path().join("nope.jsonl"),
                output: tmp.path().join("d3"),
                ..base.clone()
            },
            "nope.jsonl",
        ),
        (
            "filters leave no pairs",
            DpoConfig {
                prompt_contains: vec!["zebra".into()],
                output: tmp.path().join("d4"),
                ..base.clone()
            },
            "no preference pairs",
        ),
        (
            "missing bundle",
            DpoConfig {
                bundle: tmp.path().join("no-bundle"),
                output: tmp.path().join("d5"),
                ..base.clone()
            },
            "no-bundle",
        ),
    ];
    for (what, cfg, needle) in cases {
        let err = run(&cfg).expect_err(what).to_string();
        assert!(err.contains(needle), "{what}: `{err}` lacks `{needle}`");
    }
    #[cfg(not(feature = "cuda"))]
    {
        let err = run(&DpoConfig {
            device: "cuda".into(),
            output: tmp.path().join("d6"),
            ..base.clone()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }

    // An existing run is never overwritten or silently continued.
    let out = tmp.path().join("existing");
    let cfg = DpoConfig {
        steps: 1,
        output: out.clone(),
        ..base.clone()
    };
    run(&cfg).unwrap();
    let adapter_before = sha(&out.join("adapter.safetensors"));
    let err = run(&cfg).unwrap_err().to_string();
    assert!(err.contains("--resume"), "{err}");
    let err = run(&DpoConfig {
        lr: 5e-4,
        resume: true,
        ..cfg.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("other settings"), "{err}");
    assert_eq!(sha(&out.join("adapter.safetensors")), adapter_before);
    // a non-empty directory that is not a run
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let err = run(&DpoConfig {
        output: foreign.clone(),
        ..base.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("holds no dpoimg run"), "{err}");
    assert_eq!(
        std::fs::read_to_string(foreign.join("notes.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn cli_validate_and_usage_errors() {
    let exe = env!("CARGO_BIN_EXE_dpoimg-finetune");
    let out = Command::new(exe)
        .args(["dpo", "--steps", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(exe)
        .args(["dpo", "--data", data().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--output"));
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(exe)
        .args([
            "validate",
            "--bundle",
            root().join("tests/assets/tiny-bundle").to_str().unwrap(),
            "--data",
            data().to_str().unwrap(),
            "--cache-dir",
            tmp.path().to_str().unwrap(),
            "--repeats",
            "1",
            "--threads",
            "2",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["draws"], 12);
    assert!((v["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-12);
}

/// The CLI's pause path: `--stop-after` exits 0 with the resume command for this run, and that
/// command finishes it.
#[test]
fn cli_stop_after_names_the_resume_command() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let cfg = small_config(&out, &tmp.path().join("cache"));
    let config = tmp.path().join("config.json");
    std::fs::write(&config, serde_json::to_string(&cfg).unwrap()).unwrap();
    common::assert_pause_names_resume("dpo", &config, &out, 2, (2, 10));
}
