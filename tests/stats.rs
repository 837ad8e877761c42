//! Paired statistics against SciPy/numpy goldens (tools/make_stats_goldens.py, scipy 1.17.1,
//! numpy 2.4.6). Every statistic, p-value and interval bound is compared to 1e-9: absolute for
//! values of magnitude ≥ 1e-3, relative below that (see `close`).
//! NaN in SciPy (written as null) must be NaN here.

mod common;

use dpoimg::stats::{
    binomtest, bootstrap_mean_ci, pcg64::Pcg64, sign_test, wilcoxon, CiMethod, StatsError,
};
use serde_json::Value;

const TOL: f64 = 1e-9;

thread_local! {
    /// Largest |got − want| / max(|want|, 1e-300) seen, for the `--nocapture` summary.
    static WORST: std::cell::Cell<(f64, f64)> = const { std::cell::Cell::new((0.0, 0.0)) };
}

fn report(test: &str) {
    let (abs, rel) = WORST.with(|w| w.get());
    eprintln!("{test}: max abs diff {abs:.2e}, max rel diff {rel:.2e}");
}

/// Absolute 1e-9, tightened to relative 1e-9 for values whose magnitude is below 1e-3 (small
/// p-values must agree in their leading digits, not just be "near zero").
fn close(what: &str, got: f64, want: &Value) {
    match want.as_f64() {
        None => assert!(got.is_nan(), "{what}: SciPy gives NaN, got {got}"),
        Some(w) => {
            let d = (got - w).abs();
            WORST.with(|c| {
                let (a, r) = c.get();
                c.set((a.max(d), r.max(d / w.abs().max(1e-300))))
            });
            let tol = if w.abs() < 1e-3 { TOL * w.abs() } else { TOL };
            assert!(
                (got - w).abs() <= tol,
                "{what}: got {got:e}, want {w:e}, diff {:e} > {tol:e}",
                (got - w).abs()
            );
        }
    }
}

fn cases(name: &str) -> Vec<Value> {
    let doc = common::load_json(&format!("stats/{name}"));
    let cases = doc["cases"].as_array().expect("cases").clone();
    assert!(cases.len() >= 6, "{name}: too few cases");
    cases
}

fn vec_f64(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn pcg64_and_integers_equal_numpy() {
    for c in cases("pcg64.json") {
        let seed = c["seed"].as_u64().unwrap();
        let mut rng = Pcg64::from_seed(seed);
        for (i, want) in c["raw"].as_array().unwrap().iter().enumerate() {
            let want: u64 = want.as_str().unwrap().parse().unwrap();
            assert_eq!(rng.next_u64(), want, "seed {seed} raw {i}");
        }
        for (n, want) in c["integers"].as_object().unwrap() {
            let n: u64 = n.parse().unwrap();
            let mut rng = Pcg64::from_seed(seed);
            let got: Vec<u64> = (0..64).map(|_| rng.integers(n)).collect();
            let want: Vec<u64> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert_eq!(got, want, "seed {seed} integers(0, {n})");
        }
    }
    report("pcg64_and_integers_equal_numpy");
}

#[test]
fn wilcoxon_and_sign_test_equal_scipy() {
    for c in cases("wilcoxon.json") {
        let name = c["name"].as_str().unwrap();
        let d = vec_f64(&c["d"]);
        let w = wilcoxon(&d).unwrap();
        close(&format!("{name} statistic"), w.statistic, &c["statistic"]);
        close(
            &format!("{name} pvalue ({:?})", w.method),
            w.pvalue,
            &c["pvalue"],
        );
        let s = sign_test(&d, 0.95).unwrap();
        assert_eq!(s.wins, c["sign_wins"].as_u64().unwrap(), "{name} wins");
        assert_eq!(
            s.losses,
            c["sign_losses"].as_u64().unwrap(),
            "{name} losses"
        );
        match s.test {
            None => assert!(c["sign_pvalue"].is_null(), "{name}: sign test missing"),
            Some(t) => close(&format!("{name} sign pvalue"), t.pvalue, &c["sign_pvalue"]),
        }
    }
    report("wilcoxon_and_sign_test_equal_scipy");
}

#[test]
fn binomtest_and_clopper_pearson_equal_scipy() {
    let mut ci_worst = 0.0f64;
    for c in cases("binomtest.json") {
        let (k, n) = (c["k"].as_u64().unwrap(), c["n"].as_u64().unwrap());
        let conf = c["confidence"].as_f64().unwrap();
        let r = binomtest(k, n, conf).unwrap();
        close(
            &format!("binomtest({k}, {n}) pvalue"),
            r.pvalue,
            &c["pvalue"],
        );
        close(
            &format!("binomtest({k}, {n}) statistic"),
            r.proportion,
            &c["statistic"],
        );
        // SciPy finds the bounds with brentq (xtol 2e-12): compare absolutely.
        let lo = c["ci_low"].as_f64().unwrap();
        let hi = c["ci_high"].as_f64().unwrap();
        ci_worst = ci_worst
            .max((r.ci_low - lo).abs())
            .max((r.ci_high - hi).abs());
        assert!(
            (r.ci_low - lo).abs() <= TOL,
            "({k},{n},{conf}) ci_low {} vs {lo}",
            r.ci_low
        );
        assert!(
            (r.ci_high - hi).abs() <= TOL,
            "({k},{n},{conf}) ci_high {} vs {hi}",
            r.ci_high
        );
    }
    report("binomtest_and_clopper_pearson_equal_scipy");
    eprintln!("Clopper-Pearson bounds: max abs diff {ci_worst:.2e} (SciPy's brentq xtol is 2e-12)");
}

#[test]
fn bootstrap_equals_scipy_with_fixed_seed() {
    for c in cases("bootstrap.json") {
        let name = c["name"].as_str().unwrap();
        let d = vec_f64(&c["d"]);
        let method = match c["method"].as_str().unwrap() {
            "bca" => CiMethod::Bca,
            "percentile" => CiMethod::Percentile,
            m => panic!("method {m}"),
        };
        let conf = c["confidence"].as_f64().unwrap();
        let seed = c["seed"].as_u64().unwrap();
        let b = c["n_resamples"].as_u64().unwrap() as usize;
        let r = bootstrap_mean_ci(&d, b, conf, method, seed).unwrap();
        let what = format!("{name} {method:?} {conf} seed {seed}");
        close(&format!("{what} mean"), r.mean, &c["mean"]);
        close(&format!("{what} low"), r.low, &c["low"]);
        close(&format!("{what} high"), r.high, &c["high"]);
        close(
            &format!("{what} se"),
            r.standard_error,
            &c["standard_error"],
        );
    }
    report("bootstrap_equals_scipy_with_fixed_seed");
}

#[test]
fn bad_inputs_are_named_errors() {
    assert!(matches!(wilcoxon(&[]), Err(StatsError::TooFew { .. })));
    let e = wilcoxon(&[1.0, f64::NAN]).unwrap_err();
    assert!(e.to_string().contains("not finite"), "{e}");
    assert!(matches!(
        binomtest(3, 2, 0.95),
        Err(StatsError::Invalid { .. })
    ));
    assert!(matches!(
        binomtest(0, 0, 0.95),
        Err(StatsError::TooFew { .. })
    ));
    let e = bootstrap_mean_ci(&[1.0], 100, 0.95, CiMethod::Bca, 0).unwrap_err();
    assert!(e.to_string().contains("at least 2"), "{e}");
    assert!(bootstrap_mean_ci(&[1.0, 2.0], 100, 1.5, CiMethod::Bca, 0).is_err());
}
