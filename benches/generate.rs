//! Generation benchmark (not a test): dpoimg vs diffusers on the same bundle and settings, the
//! share of time outside ONNX Runtime's `run`, and the cost of switching adapters.
//!
//!   cargo bench --bench generate -- [--steps 20] [--size 16] [--runs 10] [--threads 2]
//!       [--diffusers DIR --python PY]   (diffusers side: tools/bench_diffusers.py, needs torch)
//!
//! Environment: DPOIMG_BENCH_BUNDLE (default tests/assets/tiny-bundle).

use dpoimg::lora::AdapterRef;
use dpoimg::scheduler::SamplerKind;
use dpoimg::{CancelToken, Engine, EngineOptions, GenerateRequest};
use std::path::PathBuf;
use std::time::{Duration, Instant};

struct Args {
    steps: u32,
    sizes: Vec<u32>,
    runs: usize,
    threads: usize,
    sampler: String,
    diffusers: Option<PathBuf>,
    python: String,
}

fn parse() -> Args {
    let mut a = Args {
        steps: 20,
        sizes: vec![16, 64],
        runs: 10,
        threads: 2,
        sampler: "ddim".into(),
        diffusers: None,
        python: "python3".into(),
    };
    let v: Vec<String> = std::env::args()
        .skip(1)
        .filter(|s| s != "--bench")
        .collect();
    let mut i = 0;
    while i < v.len() {
        let val = v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--steps" => a.steps = val.parse().expect("--steps N"),
            "--size" => {
                a.sizes = val
                    .split(',')
                    .map(|s| s.parse().expect("--size N[,N]"))
                    .collect()
            }
            "--runs" => a.runs = val.parse().expect("--runs N"),
            "--threads" => a.threads = val.parse().expect("--threads N"),
            "--sampler" => a.sampler = val,
            "--diffusers" => a.diffusers = Some(PathBuf::from(val)),
            "--python" => a.python = val,
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args = parse();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bundle = std::env::var_os("DPOIMG_BENCH_BUNDLE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("tests/assets/tiny-bundle"));
    let mut o = EngineOptions::default();
    o.session.device = dpoimg::runtime::Device::Cpu;
    o.session.intra_threads = args.threads;
    let engine = Engine::open(&bundle, &o).expect("bundle opens");
    let prompt = "a red circle above a blue square";
    let sampler: SamplerKind = args.sampler.parse().expect("sampler");
    println!(
        "bundle {} | sampler {sampler} | {} steps | CFG 7.5 | {} threads | {} runs (median)",
        bundle.display(),
        args.steps,
        args.threads,
        args.runs
    );
    for &size in &args.sizes {
        let mut req = GenerateRequest::new(prompt);
        req.steps = Some(args.steps);
        req.guidance = Some(7.5);
        req.sampler = Some(sampler);
        req.width = Some(size);
        req.height = Some(size);
        let run = |req: &GenerateRequest| {
            engine
                .generate(req, &mut |_| true, &CancelToken::new())
                .expect("generate")
        };
        run(&req);
        let mut totals = Vec::new();
        let mut outside = Vec::new();
        for _ in 0..args.runs {
            let g = run(&req);
            totals.push(g.timings.total.as_secs_f64());
            outside.push(
                (g.timings.total - g.timings.ort_run).as_secs_f64() / g.timings.total.as_secs_f64(),
            );
        }
        let per_image = median(totals);
        println!(
            "dpoimg   {size}x{size}: {:.2} ms/image; outside ONNX Runtime run: {:.2} % of the total",
            per_image * 1e3,
            100.0 * median(outside)
        );

        // Adapter switch: load + validate + compose + feed values for a different adapter.
        let adir = root.join("tests/assets/adapters");
        let mut switch = Duration::ZERO;
        let n_switch = 20;
        for k in 0..n_switch {
            let name = if k % 2 == 0 {
                "r4.safetensors"
            } else {
                "r8.safetensors"
            };
            let t0 = Instant::now();
            let a = engine.load_adapter(&adir.join(name)).expect("adapter");
            let _ = engine
                .compose(&[AdapterRef {
                    adapter: a,
                    strength: 0.8,
                }])
                .expect("compose");
            switch += t0.elapsed();
        }
        let per_switch = switch.as_secs_f64() / n_switch as f64;
        println!(
            "adapter switch (read + validate + compose): {:.3} ms = {:.2} % of one generation",
            per_switch * 1e3,
            100.0 * per_switch / per_image
        );

        if let Some(dir) = &args.diffusers {
            let out = std::process::Command::new(&args.python)
                .arg(root.join("tools/bench_diffusers.py"))
                .args([
                    "--diffusers",
                    &dir.display().to_string(),
                    "--prompt",
                    prompt,
                ])
                .args([
                    "--steps",
                    &args.steps.to_string(),
                    "--size",
                    &size.to_string(),
                ])
                .args(["--sampler", &args.sampler, "--runs", &args.runs.to_string()])
                .args(["--threads", &args.threads.to_string()])
                .output();
            match out {
                Ok(o) if o.status.success() => {
                    let text = String::from_utf8_lossy(&o.stdout);
                    let line = text
                        .lines()
                        .rev()
                        .find(|l| l.trim_start().starts_with('{'))
                        .unwrap_or("");
                    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
                    if let Some(d) = v["per_image_s"].as_f64() {
                        println!(
                            "diffusers {size}x{size}: {:.2} ms/image  ->  dpoimg is {:.2}x faster",
                            d * 1e3,
                            d / per_image
                        );
                    } else {
                        println!("diffusers: could not parse {line:?}");
                    }
                }
                Ok(o) => println!(
                    "diffusers side failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => println!("diffusers side not run ({}: {e})", args.python),
            }
        }
    }
}
