//! `dpoimg experiment` end to end on the tiny bundle and the tiny reward bundle with the shipped
//! `experiments/tiny.json`: every file is written; experiment.json has every arm and every pair
//! of arms; each arm's compute equals what its settings imply (derived here by hand from the
//! DPO and DPOK algorithms); an arm interrupted by Ctrl-C resumes from its checkpoint and ends
//! with the adapter an uninterrupted `run_dpo` writes, byte for byte; a resumed experiment does
//! not retrain finished arms; the HTML report parses in headless Chromium with its plots; bad
//! configs are errors that name the field and the fix.

#[path = "common/chromium.rs"]
mod chromium;

use std::path::{Path, PathBuf};

use dpoimg::experiment::{self, ArmTrain, ExperimentConfig, ExperimentError, Progress};
use dpoimg::finetune::{self, Compute};
use dpoimg::CancelToken;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tiny() -> PathBuf {
    root().join("experiments/tiny.json")
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

/// Compute that experiments/tiny.json implies, derived by hand:
/// - DPO: 4 steps × 2 pairs × 1 micro-batch; per pair the policy and the frozen reference each
///   see the preferred and the rejected latent (4 forwards) and the policy's 2 are
///   back-propagated: 32 forward, 16 backward.
/// - SFT: per pair the preferred latent once forward and once backward: 8 and 8.
/// - DPOK: per iteration 4 samples × 4 DDIM steps × 2 CFG branches = 32 rollout forwards; 2
///   policy steps × 1 micro-batch of 2 transitions × 2 CFG branches = 8 policy forwards and 8
///   backwards, plus 8 reference forwards (the KL term is on from iteration 0): 56 evaluations
///   per iteration. No `steps` given, so the budget of 120 fits ⌊120 / 56⌋ = 2 iterations:
///   96 forward, 16 backward, 8 samples drawn and scored.
fn expected(arm: &str) -> (usize, Compute) {
    let c = |f, b, s| Compute {
        unet_forward: f,
        unet_backward: b,
        samples_drawn: s,
        reward_evals: s,
        wall_seconds: 0.0,
    };
    match arm {
        "base" => (0, c(0, 0, 0)),
        "dpo" => (4, c(32, 16, 0)),
        "sft" => (4, c(8, 8, 0)),
        "dpok" => (2, c(96, 16, 8)),
        _ => unreachable!(),
    }
}

fn no_wall(c: Compute) -> Compute {
    Compute {
        wall_seconds: 0.0,
        ..c
    }
}

#[test]
fn tiny_experiment_end_to_end_interrupt_resume_and_report() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("exp");

    // 1. Interrupted in the last arm (sft) after its third step: a clean Cancelled.
    let cancel = CancelToken::new();
    let mut lines = Vec::new();
    let c2 = cancel.clone();
    let r = experiment::run(
        &tiny(),
        &out,
        false,
        &mut |p| match p {
            Progress::Log(s) => lines.push(s.to_string()),
            Progress::Step { arm, done, .. } => {
                if arm == "sft" && done == 3 {
                    c2.cancel();
                }
            }
        },
        &cancel,
    );
    assert!(matches!(r, Err(ExperimentError::Cancelled)), "{r:?}");
    let sft_ckpts = out.join("runs/sft/checkpoints");
    assert!(sft_ckpts.is_dir(), "the interrupted arm left a checkpoint");
    let dpo_adapter = out.join("runs/dpo/adapter.safetensors");
    let dpok_adapter = out.join("runs/dpok/adapter.safetensors");
    assert!(dpo_adapter.is_file() && dpok_adapter.is_file());
    assert!(!out.join("runs/sft/adapter.safetensors").exists());
    let (dpo_mtime, dpok_mtime) = (mtime(&dpo_adapter), mtime(&dpok_adapter));

    // Without --resume the directory is refused.
    let e = experiment::run(&tiny(), &out, false, &mut |_| {}, &CancelToken::new()).unwrap_err();
    assert!(e.to_string().contains("--resume"), "{e}");

    // 2. Resumed: dpo and dpok are not retrained, sft continues from its checkpoint.
    let mut lines = Vec::new();
    let mut steps_seen: Vec<(String, usize)> = Vec::new();
    let rep = experiment::run(
        &tiny(),
        &out,
        true,
        &mut |p| match p {
            Progress::Log(s) => lines.push(s.to_string()),
            Progress::Step { arm, done, .. } => steps_seen.push((arm.to_string(), done)),
        },
        &CancelToken::new(),
    )
    .unwrap();
    for arm in ["dpo", "dpok"] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("arm {arm}: finished earlier"))
                    && l.contains("not retrained")),
            "{arm} was not reported as skipped: {lines:?}"
        );
    }
    assert!(
        steps_seen.iter().all(|(a, _)| a == "sft"),
        "only sft trains on resume: {steps_seen:?}"
    );
    assert_eq!(
        steps_seen.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
        vec![4],
        "sft resumed after its checkpoint at step 3 and ran step 4 only"
    );
    assert_eq!(mtime(&dpo_adapter), dpo_mtime);
    assert_eq!(mtime(&dpok_adapter), dpok_mtime);

    // The interrupted, segmented sft run ends with the adapter of one uninterrupted run.
    let (cfg, _) = ExperimentConfig::load(&tiny()).unwrap();
    let planned = cfg.plan(&out).unwrap();
    let sft = planned.iter().find(|a| a.name == "sft").unwrap();
    let Some(ArmTrain::Dpo(c)) = &sft.train else {
        panic!("sft is a DPO-config arm")
    };
    let straight = finetune::DpoConfig {
        output: tmp.path().join("sft-straight"),
        resume: false,
        stop_after: None,
        ..(**c).clone()
    };
    let o = finetune::run_dpo(&straight, &mut |_| {}, &CancelToken::new()).unwrap();
    let sft_arm = rep.arms.iter().find(|a| a.name == "sft").unwrap();
    assert_eq!(
        sft_arm.adapter_sha256.as_deref(),
        Some(o.adapter_sha256.as_str())
    );
    assert_eq!(no_wall(sft_arm.compute), no_wall(o.compute));

    // 3. Files.
    for f in [
        "experiment.json",
        "report.html",
        "experiment-config.json",
        "eval/eval.json",
        "eval/report.html",
        "blind/pairs.jsonl",
        "blind-key.json",
        "curves/base.json",
        "curves/dpo.json",
        "curves/dpok.json",
        "curves/sft.json",
        "runs/dpo/metrics.jsonl",
        "runs/dpok/metrics.jsonl",
        "runs/sft/adapter.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let on_disk: experiment::ExperimentReport =
        serde_json::from_slice(&std::fs::read(out.join("experiment.json")).unwrap()).unwrap();
    assert_eq!(on_disk.format, "dpoimg-experiment");

    // 4. Arms, pairs and compute.
    let names: Vec<&str> = rep.arms.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["base", "dpo", "dpok", "sft"]);
    assert_eq!(rep.metrics, ["imagereward"]);
    let mut pairs: Vec<(String, String)> = rep
        .pairs
        .iter()
        .map(|p| (p.a.clone(), p.b.clone()))
        .collect();
    pairs.sort();
    let mut want = Vec::new();
    for i in 0..4 {
        for j in i + 1..4 {
            want.push((names[i].to_string(), names[j].to_string()));
        }
    }
    want.sort();
    assert_eq!(pairs, want, "every pair of arms once");
    for p in &rep.pairs {
        assert_eq!(p.n, 8, "4 prompts × 2 paired seeds");
        let (lo, hi) = (p.ci_low.unwrap(), p.ci_high.unwrap());
        assert!(lo <= p.mean_difference && p.mean_difference <= hi, "{p:?}");
    }
    for a in &rep.arms {
        let (steps, c) = expected(&a.name);
        assert_eq!(a.steps, steps, "{}", a.name);
        assert_eq!(no_wall(a.planned), c, "{} planned", a.name);
        assert_eq!(no_wall(a.compute), c, "{} counted by the run", a.name);
        if a.name != "base" {
            assert!(a.compute.wall_seconds > 0.0);
            // the run's own log agrees
            let run = PathBuf::from(a.run_dir.as_ref().unwrap());
            if a.name == "dpok" {
                let m = finetune::read_dpok_metrics(&run.join("metrics.jsonl")).unwrap();
                let last = m.last().unwrap();
                assert_eq!(
                    (last.unet_forward, last.unet_backward, last.samples_drawn),
                    (c.unet_forward, c.unet_backward, c.samples_drawn)
                );
            } else {
                assert_eq!(
                    finetune::metrics::read(&run.join("metrics.jsonl"))
                        .unwrap()
                        .len(),
                    4
                );
            }
            // curve: base, then one point per segment (2 segments), ending at the arm's compute
            assert_eq!(a.curve.len(), 3, "{}", a.name);
            assert_eq!(a.curve[0].unet_forward + a.curve[0].unet_backward, 0);
            let last = a.curve.last().unwrap();
            assert_eq!(last.step, steps);
            assert_eq!(
                (last.unet_forward, last.unet_backward),
                (c.unet_forward, c.unet_backward)
            );
            assert!(a
                .curve
                .windows(2)
                .all(|w| w[0].unet_forward < w[1].unet_forward));
            assert!(a
                .curve
                .iter()
                .all(|p| p.images == 4 && p.reward_mean.is_finite()));
            assert_eq!(
                last.adapter_sha256, a.adapter_sha256,
                "last point measured the final adapter"
            );
        }
    }
    // the curves' base point is the same untrained model for every arm
    let b0 = &rep.arms[1].curve[0];
    assert!(rep.arms.iter().all(|a| &a.curve[0] == b0));
    // gains over base per unit of compute
    assert_eq!(rep.per_compute.len(), 3);
    for g in &rep.per_compute {
        let pair = rep
            .pairs
            .iter()
            .find(|p| p.a == "base" && p.b == g.arm)
            .unwrap();
        assert!((g.gain + pair.mean_difference).abs() < 1e-15);
        let evals = g.unet_evals as f64;
        assert!((g.gain_per_million_evals.unwrap() - g.gain / evals * 1e6).abs() < 1e-9);
    }
    // eval means are the eval library's
    let eval = dpoimg::eval::read_report(&out.join("eval")).unwrap();
    for a in &rep.arms {
        assert_eq!(
            a.eval_means["imagereward"],
            eval.overall["imagereward"][&a.name].mean
        );
    }

    // A second resume, with every arm finished: nothing trains, every eval image is reused.
    let sft_adapter = out.join("runs/sft/adapter.safetensors");
    let sft_mtime = mtime(&sft_adapter);
    let mut lines = Vec::new();
    let mut steps = 0;
    let again = experiment::run(
        &tiny(),
        &out,
        true,
        &mut |p| match p {
            Progress::Log(s) => lines.push(s.to_string()),
            Progress::Step { .. } => steps += 1,
        },
        &CancelToken::new(),
    )
    .unwrap();
    assert_eq!(steps, 0, "no training step on a finished experiment");
    assert_eq!(
        lines.iter().filter(|l| l.contains("not retrained")).count(),
        3,
        "{lines:?}"
    );
    for (p, t) in [
        (&dpo_adapter, dpo_mtime),
        (&dpok_adapter, dpok_mtime),
        (&sft_adapter, sft_mtime),
    ] {
        assert_eq!(mtime(p), t, "{} rewritten", p.display());
    }
    let eval2 = dpoimg::eval::read_report(&out.join("eval")).unwrap();
    assert_eq!(eval2.images_reused, 32, "the rerun reused every eval image");
    assert_eq!(eval2.images_generated, 0);
    assert_eq!(
        serde_json::to_value(&again.pairs).unwrap(),
        serde_json::to_value(&rep.pairs).unwrap(),
        "same images, same statistics"
    );

    // 5. Blind pack: dpo vs dpok only.
    let blind = rep.blind.as_ref().unwrap();
    assert_eq!(blind.pairs, 8);
    let key: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("blind-key.json")).unwrap()).unwrap();
    let entries = key["pairs"].as_array().unwrap();
    assert_eq!(entries.len(), 8);
    for e in entries {
        let mut arms = [
            e["left_arm"].as_str().unwrap(),
            e["right_arm"].as_str().unwrap(),
        ];
        arms.sort();
        assert_eq!(arms, ["dpo", "dpok"]);
    }
    let lines_in_pack = std::fs::read_to_string(out.join("blind/pairs.jsonl")).unwrap();
    assert_eq!(lines_in_pack.lines().count(), 8);
    assert!(!lines_in_pack.contains("dpok") && !lines_in_pack.contains("\"dpo\""));

    // 6. The HTML as a browser parses it.
    if let Some(dom) = chromium::dump_dom(
        &chromium::file_url(&out.join("report.html")),
        "the experiment report",
        &[],
    ) {
        assert!(
            dom.contains("<h1>Experiment on"),
            "{}",
            &dom[..dom.len().min(300)]
        );
        assert_eq!(count(&dom, "class=\"plot plot-curve\""), 1);
        assert_eq!(
            count(&dom, "class=\"curve\""),
            3,
            "one line per trained arm"
        );
        assert_eq!(count(&dom, "class=\"curve-point\""), 9);
        assert_eq!(count(&dom, "<tr class=\"arm\""), 4);
        assert_eq!(count(&dom, "<tr class=\"pair\""), 6);
        assert_eq!(count(&dom, "<tr class=\"gain\""), 3);
        assert!(dom.contains("class=\"blind\""));
        for external in ["<script", "<link", "src=\"http", "href=\"http"] {
            assert!(!dom.contains(external), "not self-contained: {external}");
        }
    }
}

fn write_config(dir: &Path, patch: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(tiny()).unwrap()).unwrap();
    // absolute paths, since the copy lives elsewhere
    let base = root().join("experiments");
    for k in [
        "bundle",
        "reward",
        "train_prompts",
        "preference_data",
        "eval_prompts",
    ] {
        let p = base.join(v[k].as_str().unwrap());
        v[k] = serde_json::Value::String(p.display().to_string());
    }
    patch(&mut v);
    let p = dir.join("exp.json");
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    p
}

#[test]
fn bad_configs_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |patch: &dyn Fn(&mut serde_json::Value)| -> String {
        let cfg = write_config(tmp.path(), |v| patch(v));
        let out = tmp.path().join("out");
        let _ = std::fs::remove_dir_all(&out);
        experiment::run(&cfg, &out, false, &mut |_| {}, &CancelToken::new())
            .unwrap_err()
            .to_string()
    };
    type Patch = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Patch, &[&str])> = vec![
        (
            "unknown top-level field",
            Box::new(|v| v["bundel"] = "x".into()),
            &["bundel"],
        ),
        (
            "unknown arm field",
            Box::new(|v| v["arms"]["dpo"]["stepz"] = 3.into()),
            &["arms.dpo", "stepz"],
        ),
        (
            "field the experiment owns",
            Box::new(|v| v["arms"]["dpok"]["output"] = "x".into()),
            &["arms.dpok.output", "remove it"],
        ),
        (
            "bad arm value",
            Box::new(|v| v["arms"]["dpok"]["eta"] = 0.0.into()),
            &["arms.dpok", "eta"],
        ),
        (
            "dpo without preference data",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("preference_data");
            }),
            &["preference_data", "Fix"],
        ),
        (
            "dpok without training prompts",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("train_prompts");
            }),
            &["train_prompts", "Fix"],
        ),
        (
            "steps over the budget",
            Box::new(|v| v["arms"]["dpo"]["steps"] = 100.into()),
            &["arms.dpo.steps", "over the budget of 120"],
        ),
        (
            "budget below one step",
            Box::new(|v| v["budget"]["unet_evals"] = 50.into()),
            &["arms.dpok", "one step needs 56"],
        ),
        (
            "no budget and no steps",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("budget");
            }),
            &["arms.dpok.steps", "budget.unet_evals"],
        ),
        (
            "missing bundle",
            Box::new(|v| v["bundle"] = "/nonexistent/bundle".into()),
            &["bundle", "/nonexistent/bundle", "does not exist"],
        ),
        (
            "a single arm",
            Box::new(|v| {
                v["arms"] = serde_json::json!({"base": false, "dpo": {"steps": 1}});
            }),
            &["arms", "at least two"],
        ),
        (
            "unknown device",
            Box::new(|v| v["device"] = "tpu".into()),
            &["device", "tpu", "Fix"],
        ),
        (
            "curve points zero",
            Box::new(|v| v["curve"]["points"] = 0.into()),
            &["curve.points"],
        ),
    ];
    for (what, patch, needles) in cases {
        let e = run(&*patch);
        for n in needles {
            assert!(e.contains(n), "{what}: `{e}` lacks `{n}`");
        }
    }
    // a config file that is missing or not JSON
    let e = experiment::run(
        &tmp.path().join("none.json"),
        &tmp.path().join("o"),
        false,
        &mut |_| {},
        &CancelToken::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("none.json"), "{e}");
    // an output directory holding another experiment or something else
    let cfg = write_config(tmp.path(), |_| {});
    let out = tmp.path().join("other");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("stray.txt"), "x").unwrap();
    let e = experiment::run(&cfg, &out, false, &mut |_| {}, &CancelToken::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not empty"), "{e}");
    std::fs::remove_file(out.join("stray.txt")).unwrap();
    std::fs::write(
        out.join(experiment::CONFIG_RECORD),
        serde_json::to_vec(&serde_json::json!({
            "format": "dpoimg-experiment-config/1",
            "config_sha256": "0".repeat(64),
            "config": ExperimentConfig::load(&cfg).unwrap().0,
        }))
        .unwrap(),
    )
    .unwrap();
    let e = experiment::run(&cfg, &out, true, &mut |_| {}, &CancelToken::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("another config"), "{e}");

    // the full-scale config in docs/experiment.md parses, its arms as DpoConfig / DpokConfig
    let doc = std::fs::read_to_string(root().join("docs/experiment.md")).unwrap();
    let start = doc.find("```json\n").expect("a json block") + 8;
    let end = start + doc[start..].find("```").unwrap();
    let full: ExperimentConfig = serde_json::from_str(&doc[start..end]).unwrap();
    let dpo: finetune::DpoConfig =
        serde_json::from_value(serde_json::Value::Object(full.arms.dpo.clone().unwrap())).unwrap();
    assert_eq!((dpo.batch_pairs, dpo.grad_accum, dpo.rank), (16, 2, 8));
    let dpok: finetune::DpokConfig =
        serde_json::from_value(serde_json::Value::Object(full.arms.dpok.clone().unwrap())).unwrap();
    // the doc's arithmetic: 2e6 / 192 DPO steps, 2e6 / 1320 DPOK iterations
    let per_step = dpoimg::experiment::config::dpo_step_compute(&dpo);
    assert_eq!(per_step.unet_forward + per_step.unet_backward, 192);
    let per_iter = dpoimg::experiment::config::dpok_compute(&dpok, 1);
    assert_eq!(per_iter.unet_forward + per_iter.unet_backward, 1320);
    serde_json::from_value::<finetune::DpoConfig>(serde_json::Value::Object(
        full.arms.sft.clone().unwrap(),
    ))
    .unwrap();

    // the shipped configs parse
    for f in ["tiny.json", "world.json"] {
        ExperimentConfig::load(&root().join("experiments").join(f))
            .unwrap_or_else(|e| panic!("{f}: {e}"));
    }
}
