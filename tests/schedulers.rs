//! Every sampler against diffusers 0.42.1.
//!
//! Golden data: `tests/assets/golden/schedulers.json` (one entry per case: the constructed
//! scheduler config, steps, eta, timesteps, sigmas, init_noise_sigma, the steps that draw noise)
//! and `schedulers.safetensors` (`{name}.sample0`, `.model_output.{i}`, `.noise.{i}`,
//! `.scaled.{i}`, `.prev.{i}`; `ddim_leading_eps.alphas_cumprod` in f64).
//!
//! Each case builds the sampler from the case's config, runs the whole chain on the golden model
//! outputs with a noise source that replays diffusers' noise (and fails if noise is requested at
//! another step, with another size, or a different number of times), and checks timesteps,
//! sigmas, init_noise_sigma, every scaled model input and every step output.
//!
//! Tolerance: relative 1e-5, elementwise `|got - ref| <= 1e-5 * max(1, |ref|)`.
//! The golden files are required: a missing file fails the test (no skip).

use std::collections::BTreeMap;
use std::path::PathBuf;

use dpoimg::scheduler::{
    add_noise, build, NoiseSource, SamplerKind, SamplerOptions, SchedulerConfig, SchedulerError,
};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

const TOL_REL: f64 = 1e-5;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/assets/golden")
}

fn read_golden(name: &str) -> Vec<u8> {
    let path = golden_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "golden file {} is missing or unreadable ({e}); regenerate the golden assets \
             (tools/make_test_assets.py) - this test never skips",
            path.display()
        )
    })
}

fn load_f32(st: &SafeTensors<'_>, key: &str) -> Option<Vec<f32>> {
    let t = st.tensor(key).ok()?;
    assert_eq!(t.dtype(), Dtype::F32, "{key}: expected F32");
    Some(
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

fn load_f64(st: &SafeTensors<'_>, key: &str) -> Option<Vec<f64>> {
    let t = st.tensor(key).ok()?;
    assert_eq!(t.dtype(), Dtype::F64, "{key}: expected F64");
    Some(
        t.data()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
    )
}

/// Max over elements of `|got - ref| / max(1, |ref|)`; `Err` on length mismatch.
fn max_rel_err<A: Copy + Into<f64>, B: Copy + Into<f64>>(
    got: &[A],
    want: &[B],
) -> Result<f64, String> {
    if got.len() != want.len() {
        return Err(format!(
            "length {} but reference has {}",
            got.len(),
            want.len()
        ));
    }
    Ok(got
        .iter()
        .zip(want)
        .map(|(&g, &w)| {
            let (g, w): (f64, f64) = (g.into(), w.into());
            if g.is_nan() || w.is_nan() {
                if g.is_nan() && w.is_nan() {
                    0.0
                } else {
                    f64::INFINITY
                }
            } else {
                (g - w).abs() / w.abs().max(1.0)
            }
        })
        .fold(0.0, f64::max))
}

/// Replays the noise diffusers drew, checking that it is asked for exactly where it was drawn.
struct ReplayNoise {
    /// step index -> the noise tensor drawn during that step
    by_step: BTreeMap<usize, Vec<f32>>,
    current_step: usize,
    drawn: Vec<usize>,
    errors: Vec<String>,
}

impl NoiseSource for ReplayNoise {
    fn fill_normal(&mut self, out: &mut [f32]) {
        let step = self.current_step;
        if self.drawn.contains(&step) {
            self.errors
                .push(format!("noise requested twice during step {step}"));
        }
        self.drawn.push(step);
        match self.by_step.get(&step) {
            Some(n) if n.len() == out.len() => out.copy_from_slice(n),
            Some(n) => {
                self.errors.push(format!(
                    "step {step}: noise of {} elements requested, diffusers drew {}",
                    out.len(),
                    n.len()
                ));
                out.fill(0.0);
            }
            None => {
                self.errors.push(format!(
                    "step {step}: noise requested but diffusers draws none at this step"
                ));
                out.fill(0.0);
            }
        }
    }
}

fn f64_list(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("list")
        .iter()
        .map(|x| match x {
            Value::Number(n) => n.as_f64().unwrap(),
            Value::String(s) if s == "inf" || s == "Infinity" => f64::INFINITY,
            Value::String(s) if s == "-inf" || s == "-Infinity" => f64::NEG_INFINITY,
            other => panic!("not a number: {other}"),
        })
        .collect()
}

/// Worst errors seen in one case, for the summary.
#[derive(Default)]
struct CaseReport {
    timesteps: f64,
    sigmas: f64,
    init_noise_sigma: f64,
    scaled: f64,
    prev: f64,
}

fn check(errors: &mut Vec<String>, what: String, err: Result<f64, String>, slot: &mut f64) {
    match err {
        Ok(e) => {
            *slot = slot.max(e);
            if e > TOL_REL {
                errors.push(format!("{what}: max relative error {e:e} > {TOL_REL:e}"));
            }
        }
        Err(msg) => errors.push(format!("{what}: {msg}")),
    }
}

/// Runs one golden case; returns the errors found (empty = pass) and the worst errors seen.
fn run_case(case: &Value, st: &SafeTensors<'_>) -> (Vec<String>, CaseReport) {
    let name = case["name"].as_str().expect("name");
    let mut errors = Vec::new();
    let mut rep = CaseReport::default();

    let config = match SchedulerConfig::from_json_value(&case["config"]) {
        Ok(c) => c,
        Err(e) => return (vec![format!("config does not parse: {e}")], rep),
    };
    let kind: SamplerKind = case["sampler"]
        .as_str()
        .expect("sampler")
        .parse()
        .expect("sampler name");
    let steps = case["steps"].as_u64().expect("steps") as usize;
    let mut options = SamplerOptions::new(kind);
    options.eta = case["eta"].as_f64().expect("eta");
    let mut sched = match build(&config, &options, steps) {
        Ok(s) => s,
        Err(e) => return (vec![format!("build failed: {e}")], rep),
    };

    let want_ts = f64_list(&case["timesteps"]);
    check(
        &mut errors,
        "timesteps".into(),
        max_rel_err(sched.timesteps(), &want_ts),
        &mut rep.timesteps,
    );
    match (&case["sigmas"], sched.sigmas()) {
        (Value::Null, None) => {}
        (Value::Null, Some(_)) => errors.push("sigmas: got some, diffusers has none".into()),
        (v, None) => errors.push(format!("sigmas: got none, diffusers has {v}")),
        (v, Some(got)) => check(
            &mut errors,
            "sigmas".into(),
            max_rel_err(got, &f64_list(v)),
            &mut rep.sigmas,
        ),
    }
    let want_ins = case["init_noise_sigma"].as_f64().expect("init_noise_sigma");
    check(
        &mut errors,
        "init_noise_sigma".into(),
        max_rel_err(&[sched.init_noise_sigma()], &[want_ins]),
        &mut rep.init_noise_sigma,
    );
    if !errors.is_empty() {
        return (errors, rep);
    }

    let noise_steps: Vec<usize> = case["noise_steps"]
        .as_array()
        .expect("noise_steps")
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let mut noise = ReplayNoise {
        by_step: noise_steps
            .iter()
            .map(|&i| {
                let key = format!("{name}.noise.{i}");
                (
                    i,
                    load_f32(st, &key).unwrap_or_else(|| panic!("golden tensor {key} missing")),
                )
            })
            .collect(),
        current_step: 0,
        drawn: Vec::new(),
        errors: Vec::new(),
    };

    let mut sample = load_f32(st, &format!("{name}.sample0")).expect("sample0");
    for i in 0..sched.timesteps().len() {
        let mut scaled = sample.clone();
        sched.scale_model_input(&mut scaled, i);
        if let Some(want) = load_f32(st, &format!("{name}.scaled.{i}")) {
            check(
                &mut errors,
                format!("scaled.{i}"),
                max_rel_err(&scaled, &want),
                &mut rep.scaled,
            );
        }
        let model_output = load_f32(st, &format!("{name}.model_output.{i}"))
            .unwrap_or_else(|| panic!("golden tensor {name}.model_output.{i} missing"));
        noise.current_step = i;
        if let Err(e) = sched.step(&model_output, i, &mut sample, &mut noise) {
            errors.push(format!("step {i} failed: {e}"));
            break;
        }
        let want = load_f32(st, &format!("{name}.prev.{i}"))
            .unwrap_or_else(|| panic!("golden tensor {name}.prev.{i} missing"));
        check(
            &mut errors,
            format!("prev.{i}"),
            max_rel_err(&sample, &want),
            &mut rep.prev,
        );
        // Keep following the reference trajectory so that one early error is not amplified.
        sample = want;
    }
    errors.append(&mut noise.errors);
    if noise.drawn != noise_steps {
        errors.push(format!(
            "noise drawn at steps {:?}, diffusers drew at {noise_steps:?}",
            noise.drawn
        ));
    }
    (errors, rep)
}

#[test]
fn samplers_match_diffusers_golden() {
    let cases: Vec<Value> =
        serde_json::from_slice(&read_golden("schedulers.json")).expect("schedulers.json");
    let bytes = read_golden("schedulers.safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("schedulers.safetensors");
    assert!(!cases.is_empty(), "schedulers.json has no cases");

    let mut failures = Vec::new();
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "case", "timesteps", "sigmas", "init_sig", "scaled", "prev"
    );
    for case in &cases {
        let name = case["name"].as_str().expect("name").to_string();
        let (errors, r) = run_case(case, &st);
        println!(
            "{name:<22} {:>10.2e} {:>10.2e} {:>10.2e} {:>10.2e} {:>10.2e}{}",
            r.timesteps,
            r.sigmas,
            r.init_noise_sigma,
            r.scaled,
            r.prev,
            if errors.is_empty() { "" } else { "  FAIL" }
        );
        for e in errors {
            failures.push(format!("case {name}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden check(s) failed (tolerance {TOL_REL:e} relative):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn alphas_cumprod_matches_diffusers_table() {
    let cases: Vec<Value> =
        serde_json::from_slice(&read_golden("schedulers.json")).expect("schedulers.json");
    let bytes = read_golden("schedulers.safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("schedulers.safetensors");
    let mut found = 0;
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let Some(want) = load_f64(&st, &format!("{name}.alphas_cumprod")) else {
            continue;
        };
        found += 1;
        let cfg = SchedulerConfig::from_json_value(&case["config"]).unwrap();
        let got = cfg.alphas_cumprod();
        assert_eq!(got.len(), want.len(), "{name}: table length");
        let exact = got.iter().zip(&want).filter(|(a, b)| a == b).count();
        let err = max_rel_err(&got, &want).unwrap();
        println!(
            "{name}: alphas_cumprod max rel err {err:e}, {exact}/{} entries identical",
            want.len()
        );
        assert!(
            err <= 1e-7,
            "{name}: alphas_cumprod max relative error {err:e}"
        );
        assert_eq!(cfg.betas().len(), want.len());
    }
    assert!(found > 0, "no case carries an alphas_cumprod table");
}

// ------------------------------------------------------------------------------------------
// Configuration and argument errors
// ------------------------------------------------------------------------------------------

fn sd15_config() -> SchedulerConfig {
    // Stable Diffusion 1.5's scheduler_config.json (a PNDMScheduler config).
    SchedulerConfig::from_json_str(
        r#"{"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0",
            "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
            "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true,
            "steps_offset": 1, "trained_betas": null, "clip_sample": false}"#,
    )
    .expect("SD 1.5 config parses")
}

fn build_err(cfg: &SchedulerConfig, kind: SamplerKind, steps: usize) -> SchedulerError {
    match build(cfg, &SamplerOptions::new(kind), steps) {
        Ok(_) => panic!("{kind} with {steps} steps should have failed"),
        Err(e) => e,
    }
}

#[test]
fn zero_steps_is_rejected_by_every_sampler() {
    let cfg = sd15_config();
    for kind in SamplerKind::ALL {
        let e = build_err(&cfg, kind, 0);
        assert!(
            matches!(
                e,
                SchedulerError::InvalidSteps {
                    steps: 0,
                    max: 1000
                }
            ),
            "{kind}: {e}"
        );
        assert!(
            e.to_string().contains("between 1 and num_train_timesteps"),
            "{e}"
        );
    }
}

#[test]
fn more_steps_than_training_timesteps_is_rejected() {
    let cfg = sd15_config();
    for kind in SamplerKind::ALL {
        let e = build_err(&cfg, kind, 1001);
        assert!(
            matches!(e, SchedulerError::InvalidSteps { steps: 1001, .. }),
            "{kind}: {e}"
        );
    }
    // The maximum itself is fine where diffusers allows it.
    assert!(build(&cfg, &SamplerOptions::new(SamplerKind::Euler), 1000).is_ok());
}

#[test]
fn unknown_sampler_names_the_valid_ones() {
    let e = "heun".parse::<SamplerKind>().unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("'heun'"), "{msg}");
    for name in SamplerKind::NAMES {
        assert!(msg.contains(name), "{msg} should list {name}");
    }
    assert_eq!(
        "Euler-A".parse::<SamplerKind>().unwrap(),
        SamplerKind::EulerAncestral
    );
}

#[test]
fn nan_and_negative_values_are_rejected() {
    let mut cfg = sd15_config();
    cfg.beta_start = f64::NAN;
    let e = cfg.validate().unwrap_err();
    assert!(e.to_string().contains("beta_start"), "{e}");
    assert!(build(&cfg, &SamplerOptions::new(SamplerKind::Ddim), 20).is_err());
    assert!(cfg.betas().is_empty());

    let cfg = SchedulerConfig::from_json_str(r#"{"beta_end": NaN}"#).unwrap();
    assert!(cfg.validate().unwrap_err().to_string().contains("beta_end"));

    let mut cfg = sd15_config();
    cfg.beta_end = -0.5;
    assert!(cfg.validate().unwrap_err().to_string().contains("beta_end"));

    let mut cfg = sd15_config();
    cfg.sigma_max = Some(f64::INFINITY);
    assert!(cfg
        .validate()
        .unwrap_err()
        .to_string()
        .contains("sigma_max"));

    let mut opts = SamplerOptions::new(SamplerKind::Ddim);
    opts.eta = f64::NAN;
    let e = build(&sd15_config(), &opts, 20)
        .err()
        .expect("NaN eta must fail");
    assert!(e.to_string().contains("eta"), "{e}");
}

#[test]
fn trained_betas_of_wrong_length_are_rejected() {
    let mut cfg = sd15_config();
    cfg.trained_betas = Some(vec![0.001; 999]);
    let e = cfg.validate().unwrap_err();
    assert_eq!(
        e,
        SchedulerError::TrainedBetasLength {
            expected: 1000,
            got: 999
        }
    );
    assert!(e.to_string().contains("trained_betas"), "{e}");
    assert!(build(&cfg, &SamplerOptions::new(SamplerKind::Euler), 20).is_err());

    cfg.trained_betas = Some(vec![0.001; 1000]);
    cfg.validate().unwrap();
    assert_eq!(cfg.betas()[0], 0.001f32 as f64);
}

#[test]
fn unknown_names_in_config_are_rejected_with_the_valid_values() {
    let cases = [
        (
            r#"{"timestep_spacing": "uniform"}"#,
            "timestep_spacing",
            "leading, trailing, linspace",
        ),
        (
            r#"{"beta_schedule": "quadratic"}"#,
            "beta_schedule",
            "scaled_linear",
        ),
        (
            r#"{"prediction_type": "flow"}"#,
            "prediction_type",
            "v_prediction",
        ),
        (
            r#"{"variance_type": "big"}"#,
            "variance_type",
            "fixed_small",
        ),
    ];
    for (json, field, hint) in cases {
        let cfg = SchedulerConfig::from_json_str(json).unwrap();
        let msg = cfg.validate().unwrap_err().to_string();
        assert!(msg.contains(field) && msg.contains(hint), "{json}: {msg}");
    }
    let e = SchedulerConfig::from_json_str(r#"{"num_train_timesteps": "many"}"#).unwrap_err();
    assert!(e.to_string().contains("num_train_timesteps"), "{e}");
}

#[test]
fn step_arguments_are_checked() {
    let cfg = sd15_config();
    let mut s = build(&cfg, &SamplerOptions::new(SamplerKind::EulerAncestral), 5).unwrap();
    let mut rng = dpoimg::rng::TorchRng::new(0);
    let mut x = vec![0.5f32; 64];
    let e = s.step(&[0.0; 63], 0, &mut x, &mut rng).unwrap_err();
    assert!(
        matches!(
            e,
            SchedulerError::LengthMismatch {
                expected: 64,
                got: 63,
                ..
            }
        ),
        "{e}"
    );
    let e = s.step(&[0.0; 64], 5, &mut x, &mut rng).unwrap_err();
    assert_eq!(
        e,
        SchedulerError::StepIndexOutOfRange { index: 5, steps: 5 }
    );
}

#[test]
fn config_parsing_follows_diffusers_defaults() {
    let cfg = SchedulerConfig::from_json_str("{}").unwrap();
    assert_eq!(cfg, SchedulerConfig::default());
    // diffusers writes -Infinity for lambda_min_clipped; serde_json alone would reject it.
    let cfg = SchedulerConfig::from_json_str(
        r#"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity,
            "sigma_min": null, "use_karras_sigmas": true, "solver_order": 2}"#,
    )
    .unwrap();
    assert_eq!(cfg.lambda_min_clipped, f64::NEG_INFINITY);
    assert!(cfg.use_karras_sigmas);
    cfg.validate().unwrap();
    // serde Deserialize works too (for configs embedded in other JSON documents).
    let cfg: SchedulerConfig =
        serde_json::from_str(r#"{"steps_offset": 1, "unknown_key": [1, 2]}"#).unwrap();
    assert_eq!(cfg.steps_offset, 1);

    // Class defaults for the spacing: leading for DDIM, linspace for Euler (SD 1.5 config).
    let cfg = sd15_config();
    let ddim = build(&cfg, &SamplerOptions::new(SamplerKind::Ddim), 10).unwrap();
    assert_eq!(ddim.timesteps()[0], 901.0);
    let euler = build(&cfg, &SamplerOptions::new(SamplerKind::Euler), 10).unwrap();
    assert_eq!(euler.timesteps()[0], 999.0);
}

#[test]
fn add_noise_is_the_forward_process() {
    let cfg = sd15_config();
    let ac = cfg.alphas_cumprod();
    let x0 = [1.0f32, -2.0, 0.5];
    let eps = [0.1f32, 0.2, -0.3];
    let mut out = [0.0f32; 3];
    add_noise(&ac, &x0, &eps, 999, &mut out);
    let a = ac[999] as f32;
    for i in 0..3 {
        let want = a.sqrt() * x0[i] + (1.0 - a).sqrt() * eps[i];
        assert_eq!(out[i], want);
    }
}

#[test]
fn schedules_that_leave_the_training_table_are_refused() {
    let cfg = sd15_config();
    // leading + steps_offset 1 with steps == N would need timestep 1000 (diffusers: IndexError).
    let e = build_err(&cfg, SamplerKind::Ddim, 1000);
    assert!(e.to_string().contains("steps_offset"), "{e}");
    // trailing with 61 steps: numpy yields 62 timesteps ending at -1, and diffusers' DDIM/DDPM
    // would read alphas_cumprod[-1] (the noisiest alpha) for the last step.
    let mut opts = SamplerOptions::new(SamplerKind::Ddpm);
    opts.timestep_spacing = Some(dpoimg::scheduler::TimestepSpacing::Trailing);
    let e = build(&cfg, &opts, 61)
        .err()
        .expect("trailing with 61 steps must be refused");
    assert!(
        e.to_string().contains("timestep_spacing") && e.to_string().contains("62"),
        "{e}"
    );
    assert!(build(&cfg, &opts, 60).is_ok());
    // Euler interpolates instead of indexing, so diffusers (and we) run the 62 steps.
    opts.kind = SamplerKind::Euler;
    let s = build(&cfg, &opts, 61).unwrap();
    assert_eq!(s.timesteps().len(), 62);
    assert_eq!(*s.timesteps().last().unwrap(), -1.0);
}
