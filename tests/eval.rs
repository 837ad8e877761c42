//! `dpoimg eval` end to end on the tiny bundle: base vs a LoRA adapter, ImageReward + CLIP score +
//! FID/IS from the tiny metric bundles, eval.json + report.html (opened in headless Chromium),
//! resume, blind A/B export and votes, and clear errors for bad input.

mod common;

use common::*;
use dpoimg::eval::{read_report, EvalReport};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

const N: usize = 3;

/// The base arguments of an eval of `base` vs `lora` (r4 adapter) into `out`.
fn eval_args(prompts: &Path, out: &Path) -> Vec<String> {
    let a = assets();
    [
        "eval",
        "--prompts",
        &s(prompts),
        "--bundle",
        &s(&bundle_dir()),
        "--arm",
        "base",
        "--arm",
        &format!("lora={}:0.8", s(&a.join("adapters/r4.safetensors"))),
        "-n",
        &N.to_string(),
        "--steps",
        "2",
        "--seed",
        "100",
        "--reward",
        &s(&a.join("reward-tiny")),
        "--clip",
        &s(&a.join("metric-clip-tiny")),
        "--inception",
        &s(&a.join("metric-inception-tiny")),
        "--bootstrap-resamples",
        "999",
        "--bootstrap-seed",
        "7",
        "--device",
        "cpu",
        "--threads",
        "1",
        "-o",
        &s(out),
    ]
    .iter()
    .map(|x| x.to_string())
    .collect()
}

fn run(args: &[String]) -> Output {
    dpoimg(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn write_prompts(dir: &Path) -> PathBuf {
    let p = dir.join("prompts.tsv");
    std::fs::write(&p, "# eval prompts\nshapes\ta red circle above a blue square\n\nanimals\ta cat wearing a hat\n").unwrap();
    p
}

fn png_pixels(path: &Path) -> Vec<u8> {
    let dec = png::Decoder::new(std::io::Cursor::new(std::fs::read(path).unwrap()));
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    buf
}

fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

fn check_report_dom(html: &Path, report: &EvalReport, human: bool) {
    let Some(dom) = chromium::dump_dom(&chromium::file_url(html), "report.html", &[]) else {
        return;
    };
    assert!(
        dom.contains("<h1>Evaluation of"),
        "report did not parse: {}",
        &dom[..dom.len().min(400)]
    );
    let metrics = report.metrics.len();
    let images = report.prompts.len() * N * report.arms.len();
    assert_eq!(
        count(&dom, "class=\"plot plot-distribution\""),
        metrics,
        "one distribution plot per metric"
    );
    assert_eq!(
        count(&dom, "class=\"point\""),
        metrics * images,
        "one point per image and metric"
    );
    assert_eq!(
        count(&dom, "class=\"mean\""),
        metrics * report.arms.len(),
        "one mean marker per arm and metric"
    );
    assert_eq!(
        count(&dom, "class=\"plot plot-winrate\""),
        metrics,
        "one win-rate plot per metric"
    );
    assert_eq!(
        count(&dom, "class=\"plot plot-winrate plot-human\""),
        usize::from(human)
    );
    // win-rate bars: one per metric pair with a defined rate (+ human), each with a CI whisker
    let bars = report.pairs.iter().filter(|p| p.win_rate.is_some()).count() + usize::from(human);
    assert_eq!(count(&dom, "class=\"bar\""), bars);
    assert_eq!(count(&dom, "class=\"ci\""), bars);
    assert_eq!(count(&dom, "<img class=\"grid\""), report.prompts.len());
    assert_eq!(
        count(&dom, "src=\"data:image/png;base64,"),
        report.prompts.len(),
        "grids inlined"
    );
    for external in ["<script", "<link", "src=\"http", "href=\"http", "url("] {
        assert!(
            !dom.contains(external),
            "report.html is not self-contained: {external}"
        );
    }
}

#[test]
fn eval_base_vs_adapter_report_resume_blind_votes() {
    let d = tempfile::tempdir().unwrap();
    let prompts = write_prompts(d.path());
    let out = d.path().join("out");
    let blind = d.path().join("blind");
    let mut args = eval_args(&prompts, &out);
    args.extend([
        "--blind-export".into(),
        s(&blind),
        "--blind-seed".into(),
        "3".into(),
    ]);
    // FID reference: the readable test images of the scorer (PNG and WebP, several sizes).
    let reference = d.path().join("reference");
    std::fs::create_dir(&reference).unwrap();
    for f in ["small.png", "tall.png", "wide.png", "square.webp"] {
        std::fs::copy(assets().join("score-images").join(f), reference.join(f)).unwrap();
    }
    args.extend(["--fid-reference".into(), s(&reference)]);
    let (stdout, stderr) = ok_streams(&run(&args));
    assert!(
        stdout.contains("eval.json") && stdout.contains("report.html"),
        "{stdout}"
    );
    assert!(stderr.contains("12 generated, 0 reused"), "{stderr}");

    // --- eval.json structure
    let raw: Value =
        serde_json::from_slice(&std::fs::read(out.join("eval.json")).unwrap()).unwrap();
    for k in [
        "format",
        "version",
        "bundle_sha256",
        "settings",
        "arms",
        "metrics",
        "prompts",
        "overall",
        "categories",
        "pairs",
        "set_metrics",
    ] {
        assert!(raw.get(k).is_some(), "eval.json lacks {k}");
    }
    let r = read_report(&out).unwrap();
    assert_eq!(r.format, "dpoimg-eval");
    assert_eq!(
        r.arms.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
        ["base", "lora"]
    );
    assert!(r.arms[0].adapters.is_empty() && r.arms[1].adapters.len() == 1);
    assert_eq!(r.metrics, ["imagereward", "clip_score"]);
    assert_eq!(r.prompts.len(), 2);
    assert_eq!(r.prompts[0].category.as_deref(), Some("shapes"));
    assert_eq!(r.categories.len(), 2);
    for (p, pr) in r.prompts.iter().enumerate() {
        assert!(out.join(&pr.grid).is_file());
        for arm in ["base", "lora"] {
            let imgs = &pr.images[arm];
            assert_eq!(imgs.len(), N);
            for (i, im) in imgs.iter().enumerate() {
                assert_eq!(im.seed, 100 + (p * N + i) as u64, "paired seed rule");
                assert!(out.join(&im.file).is_file());
                assert_eq!(
                    dpoimg::hash::sha256_file(&out.join(&im.file)).unwrap(),
                    im.sha256
                );
                assert!(im.scores["imagereward"].is_finite() && im.scores["clip_score"] >= 0.0);
            }
        }
        // The adapter changes the image for the same seed.
        assert_ne!(
            png_pixels(&out.join(&pr.images["base"][0].file)),
            png_pixels(&out.join(&pr.images["lora"][0].file))
        );
    }
    // The base arm's image is exactly what `dpoimg generate` makes with that seed.
    let g = d.path().join("gen");
    let gen_out = dpoimg(&[
        "generate",
        "a cat wearing a hat",
        "--bundle",
        &s(&bundle_dir()),
        "--steps",
        "2",
        "--seed",
        "104",
        "--quiet",
        "--threads",
        "1",
        "--device",
        "cpu",
        "-o",
        &s(&g),
    ]);
    let (gen_stdout, _) = ok_streams(&gen_out);
    assert_eq!(
        png_pixels(Path::new(gen_stdout.trim())),
        png_pixels(&out.join(&r.prompts[1].images["base"][1].file))
    );

    // Paired statistics: 1 pair × 2 metrics, consistent with the stored scores.
    assert_eq!(r.pairs.len(), 2);
    for ps in &r.pairs {
        assert_eq!(
            (ps.a.as_str(), ps.b.as_str(), ps.n),
            ("base", "lora", 2 * N)
        );
        let da: Vec<f64> = r
            .prompts
            .iter()
            .flat_map(|p| {
                p.images["base"]
                    .iter()
                    .zip(&p.images["lora"])
                    .map(|(x, y)| x.scores[&ps.metric] - y.scores[&ps.metric])
            })
            .collect();
        let w = dpoimg::stats::wilcoxon(&da).unwrap();
        // eval.json's scores went through decimal text: compare to 1e-12, not bit for bit.
        let near = |a: Option<f64>, b: f64| {
            a.is_some_and(|a| (a - b).abs() < 1e-12) || (a.is_none() && !b.is_finite())
        };
        assert!(near(ps.wilcoxon_p, w.pvalue), "{ps:?} vs {w:?}");
        let ci = dpoimg::stats::bootstrap_mean_ci(&da, 999, 0.95, dpoimg::stats::CiMethod::Bca, 7)
            .unwrap();
        assert!(
            near(ps.ci_low, ci.low) && near(ps.ci_high, ci.high),
            "{ps:?} vs {ci:?}"
        );
        assert_eq!(ps.wins + ps.losses + ps.ties, (2 * N) as u64);
        let mean: f64 = da.iter().sum::<f64>() / da.len() as f64;
        assert!((ps.mean_difference - mean).abs() < 1e-12);
    }
    // FID between the arms and IS per arm.
    let fid: Vec<_> = r.set_metrics.iter().filter(|v| v.metric == "fid").collect();
    // each arm against the reference, then the arms against each other
    assert_eq!(fid.len(), 3);
    assert_eq!(fid[0].arms, ["base"]);
    assert_eq!(fid[1].arms, ["lora"]);
    assert_eq!(fid[2].arms, ["base", "lora"]);
    assert!(fid.iter().all(|f| f.value.is_finite() && f.lower_is_better));
    assert_eq!(
        r.set_metrics
            .iter()
            .filter(|v| v.metric == "inception_score")
            .count(),
        2
    );

    check_report_dom(&out.join("report.html"), &r, false);

    // --- blind export: 2 prompts × N pairs, no provenance, key outside
    let pairs_text = std::fs::read_to_string(blind.join("pairs.jsonl")).unwrap();
    let pairs: Vec<Value> = pairs_text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(pairs.len(), 2 * N);
    let key: Value =
        serde_json::from_slice(&std::fs::read(out.join("blind-key.json")).unwrap()).unwrap();
    let key_pairs = key["pairs"].as_array().unwrap();
    assert_eq!(key_pairs.len(), 2 * N);
    let names: Vec<String> = walk(&blind);
    assert!(
        names
            .iter()
            .all(|n| !n.contains("base") && !n.contains("lora") && !n.contains("key")),
        "{names:?}"
    );
    assert!(!pairs_text.contains("base") && !pairs_text.contains("lora"));
    let mut left_is_lora = 0;
    for (p, k) in pairs.iter().zip(key_pairs) {
        let id = p["id"].as_str().unwrap();
        assert_eq!(id.len(), 16);
        assert_eq!(k["id"].as_str().unwrap(), id);
        for side in ["left", "right"] {
            let bytes = std::fs::read(blind.join(p[side].as_str().unwrap())).unwrap();
            assert!(
                dpoimg::provenance::read_png_text(&bytes)
                    .unwrap()
                    .is_empty(),
                "blind image carries text chunks"
            );
        }
        // The left image is the key's left arm's image for that seed.
        let (pi, ii) = (
            k["prompt_index"].as_u64().unwrap() as usize,
            k["image_index"].as_u64().unwrap() as usize,
        );
        let left_arm = k["left_arm"].as_str().unwrap();
        assert_eq!(
            png_pixels(&blind.join(p["left"].as_str().unwrap())),
            png_pixels(&out.join(&r.prompts[pi].images[left_arm][ii].file))
        );
        left_is_lora += usize::from(left_arm == "lora");
    }
    assert!(
        left_is_lora > 0 && left_is_lora < 2 * N,
        "sides are randomised ({left_is_lora} of {})",
        2 * N
    );

    // --- votes: always pick the lora image, plus one tie → lora wins 6 of 6
    let mut votes = String::new();
    for k in key_pairs {
        let side = if k["left_arm"] == "lora" {
            "left"
        } else {
            "right"
        };
        votes.push_str(&format!(
            "{{\"id\":\"{}\",\"choice\":\"{side}\",\"rater\":\"r1\"}}\n",
            k["id"].as_str().unwrap()
        ));
    }
    votes.push_str(&format!(
        "{{\"id\":\"{}\",\"choice\":\"tie\"}}\n",
        key_pairs[0]["id"].as_str().unwrap()
    ));
    let vpath = d.path().join("votes.jsonl");
    std::fs::write(&vpath, votes).unwrap();
    ok(&dpoimg(&[
        "eval",
        "-o",
        &s(&out),
        "--votes",
        &s(&vpath),
        "--key",
        &s(&out.join("blind-key.json")),
    ]));
    let r2 = read_report(&out).unwrap();
    let h = &r2.human.as_ref().expect("human results").pairs[0];
    assert_eq!(
        (
            h.a.as_str(),
            h.b.as_str(),
            h.votes,
            h.a_wins,
            h.b_wins,
            h.ties
        ),
        ("base", "lora", 7, 0, 6, 1)
    );
    assert_eq!(h.win_rate, Some(0.0));
    // scipy.stats.binomtest(0, 6).pvalue = 2/64
    assert!((h.p.unwrap() - 0.03125).abs() < 1e-12, "{:?}", h.p);
    check_report_dom(&out.join("report.html"), &r2, true);

    // --- resume: everything reused; a replaced image is regenerated
    let before = r.prompts[0].images["lora"][2].sha256.clone();
    std::fs::copy(
        out.join(&r.prompts[0].images["base"][0].file),
        out.join(&r.prompts[0].images["lora"][2].file),
    )
    .unwrap();
    let (_, stderr) = ok_streams(&run(&eval_args(&prompts, &out)));
    assert!(stderr.contains("1 generated, 11 reused"), "{stderr}");
    let r3 = read_report(&out).unwrap();
    assert_eq!(
        r3.prompts[0].images["lora"][2].sha256, before,
        "regenerated image equals the original"
    );
    assert_eq!(
        serde_json::to_value(&r3.pairs).unwrap(),
        serde_json::to_value(&r.pairs).unwrap()
    );
    let (_, stderr) = ok_streams(&run(&eval_args(&prompts, &out)));
    assert!(stderr.contains("0 generated, 12 reused"), "{stderr}");
}

fn walk(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        v.push(p.file_name().unwrap().to_string_lossy().into_owned());
        if p.is_dir() {
            v.extend(walk(&p));
        }
    }
    v
}

#[test]
fn bad_input_gives_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let bundle = s(&bundle_dir());
    let base = |prompts: &str, arm2: &str| -> Vec<String> {
        [
            "eval",
            "--prompts",
            prompts,
            "--bundle",
            &bundle,
            "--arm",
            "base",
            "--arm",
            arm2,
            "-n",
            "1",
            "--steps",
            "1",
            "--device",
            "cpu",
            "--threads",
            "1",
            "-o",
            &s(&out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let missing = d.path().join("nope.txt");
    let e = err(&run(&base(&s(&missing), "x")));
    assert!(e.contains("nope.txt") && e.contains("not found"), "{e}");

    let empty = d.path().join("empty.txt");
    std::fs::write(&empty, "# only a comment\n\n").unwrap();
    let e = err(&run(&base(&s(&empty), "x")));
    assert!(e.contains("empty.txt") && e.contains("no prompts"), "{e}");

    let prompts = write_prompts(d.path());
    let e = err(&run(&base(
        &s(&prompts),
        "dpo=/no/such/adapter.safetensors",
    )));
    assert!(
        e.contains("arm `dpo`") && e.contains("/no/such/adapter.safetensors"),
        "{e}"
    );
    assert!(
        !out.join("images").exists(),
        "no image before the arms are checked"
    );

    let e = err(&run(&base(&s(&prompts), "base")));
    assert!(e.contains("used twice"), "{e}");

    let e = err(&dpoimg(&["eval", "-o", &s(&out)]));
    assert!(e.contains("--prompts"), "{e}");

    let e = err(&run(&[
        base(&s(&prompts), "b"),
        vec!["--reward".into(), s(&assets().join("metric-clip-tiny"))],
    ]
    .concat()));
    assert!(
        e.contains("imagereward") && e.contains("metric-clip-tiny"),
        "wrong bundle kind: {e}"
    );

    let mut args = base(&s(&prompts), "b");
    args.extend([
        "--inception".into(),
        s(&assets().join("metric-inception-tiny")),
        "--fid-reference".into(),
        s(&assets().join("score-images")),
    ]);
    let e = err(&run(&args));
    assert!(
        e.contains("score-images") && e.contains("broken.png"),
        "unreadable reference image: {e}"
    );

    // votes with an unknown id, and a key inside the export
    let mut args = base(&s(&prompts), "b");
    let blind = d.path().join("blind");
    args.extend([
        "--blind-export".into(),
        s(&blind),
        "--blind-key".into(),
        s(&blind.join("key.json")),
    ]);
    let e = err(&run(&args));
    assert!(
        e.contains("key.json") && e.contains("must not be inside"),
        "{e}"
    );
    let blind2 = d.path().join("blind2");
    let mut args = base(&s(&prompts), "b");
    args.extend(["--blind-export".into(), s(&blind2)]);
    ok(&run(&args));
    let votes = d.path().join("votes.jsonl");
    std::fs::write(
        &votes,
        "{\"id\":\"0123456789abcdef\",\"choice\":\"left\"}\n",
    )
    .unwrap();
    let e = err(&dpoimg(&[
        "eval",
        "-o",
        &s(&out),
        "--votes",
        &s(&votes),
        "--key",
        &s(&out.join("blind-key.json")),
    ]));
    assert!(e.contains("line 1") && e.contains("unknown pair id"), "{e}");
    std::fs::write(&votes, "{\"id\":\"x\",\"choice\":\"up\"}\n").unwrap();
    let e = err(&dpoimg(&[
        "eval",
        "-o",
        &s(&out),
        "--votes",
        &s(&votes),
        "--key",
        &s(&out.join("blind-key.json")),
    ]));
    assert!(e.contains("line 1") && e.contains("left"), "{e}");
}
