//! Timing and peak memory of the trainer's UNet forward + backward (CPU backend).
//!
//!     cargo test --release --bench train_step -- --nocapture --test-threads 1
//!     DPOIMG_BENCH_SD15=1 cargo test --release --bench train_step -- --nocapture --test-threads 1
//!
//! Written as tests so that it runs on stable Rust (the bench profile, i.e. release, still
//! applies). The SD-1.5 case uses synthetic weights (`Weights::synthetic`) with SD-1.5's config:
//! the arithmetic and memory are those of the real model, no checkpoint needed.

use dpoimg::train::unet::Weights;
use dpoimg::train::{Cpu, LoraConfig, LoraGrads, Tensor, UNet, UNetConfig, UNetInput};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Peak resident set size so far (kB), from /proc (Linux); 0 elsewhere.
fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|v| v.parse().unwrap_or(0)))
        })
        .unwrap_or(0)
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|v| v.parse().unwrap_or(0)))
        })
        .unwrap_or(0)
}

/// Resets the peak-RSS counter (Linux ≥ 4.0) so the next reading covers only what follows.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn lcg(n: usize, seed: u32, amp: f32) -> Vec<f32> {
    let mut k = seed;
    (0..n)
        .map(|_| {
            k = k.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((k >> 8) as f32 / 16_777_216.0 * 2.0 - 1.0) * amp
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct Run {
    train_s: f64,
    infer_s: f64,
    peak_mb: f64,
}

/// `iters` timed rounds of forward_train + backward (LoRA on the default targets, B non-zero) and
/// of an inference forward without LoRA (the DPO reference).
fn measure(
    unet: &UNet<Cpu>,
    shape: [usize; 4],
    tokens: usize,
    iters: usize,
    recompute: bool,
) -> Run {
    let be = unet.backend();
    let xdim = unet.config().down[0].cross_attention_dim;
    let n: usize = shape.iter().product();
    let x = Tensor::from_host(be, &lcg(n, 1, 1.0), &shape);
    let c = Tensor::from_host(
        be,
        &lcg(shape[0] * tokens * xdim, 2, 1.0),
        &[shape[0], tokens, xdim],
    );
    let ts: Vec<f32> = (0..shape[0]).map(|i| 999.0 - 250.0 * i as f32).collect();
    let input = UNetInput {
        sample: &x,
        timesteps: &ts,
        ehs: &c,
    };
    let mut lora = unet.new_lora(&LoraConfig::default()).unwrap();
    for (i, (_, p)) in lora.params_mut().enumerate() {
        p.b = lcg(p.b.len(), 10 + i as u32, 0.05);
    }
    let d_out = Tensor::from_host(be, &lcg(n, 3, 1.0), &shape);
    let (mut train, mut infer) = (vec![], vec![]);
    let base = rss_kb();
    reset_peak();
    for _ in 0..iters {
        let t = Instant::now();
        let (_, cache) = unet.forward_train(&input, Some(&lora), recompute).unwrap();
        let mut grads = LoraGrads::zeros(be, &lora);
        unet.backward(cache, &d_out, Some(&lora), &mut grads)
            .unwrap();
        train.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        unet.forward(&input, None).unwrap();
        infer.push(t.elapsed().as_secs_f64());
    }
    Run {
        train_s: median(train),
        infer_s: median(infer),
        peak_mb: peak_rss_kb().saturating_sub(base) as f64 / 1024.0,
    }
}

#[test]
fn tiny_unet_batch4_8x8() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/assets/tiny-bundle");
    let be = Arc::new(Cpu::new(0));
    let unet = UNet::load(
        be.clone(),
        &dir.join("unet_config.json"),
        &dir.join("unet.safetensors"),
    )
    .unwrap();
    measure(&unet, [4, 4, 8, 8], 77, 3, false); // warm-up
    for recompute in [false, true] {
        let r = measure(&unet, [4, 4, 8, 8], 77, 30, recompute);
        println!(
            "tiny UNet, batch 4, 8x8 latents, {} threads, recompute {recompute}: forward+backward (LoRA r4) {:.2} ms, inference forward {:.2} ms, peak RSS above baseline {:.1} MB, total peak {:.1} MB",
            be.threads(),
            r.train_s * 1e3,
            r.infer_s * 1e3,
            r.peak_mb,
            peak_rss_kb() as f64 / 1024.0
        );
    }
}

const SD15_CONFIG: &str = r#"{
  "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
  "center_input_sample": false, "cross_attention_dim": 768,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
  "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
  "out_channels": 4, "sample_size": 64,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
}"#;

#[test]
fn sd15_batch2_64x64() {
    if std::env::var_os("DPOIMG_BENCH_SD15").is_none() {
        println!("SD-1.5 case skipped (set DPOIMG_BENCH_SD15=1)");
        return;
    }
    let be = Arc::new(Cpu::new(0));
    let cfg = UNetConfig::from_json(
        &serde_json::from_str(SD15_CONFIG).unwrap(),
        Path::new("sd15"),
    )
    .unwrap();
    let t = Instant::now();
    let unet = UNet::from_parts(be.clone(), cfg, &Weights::synthetic(0.02)).unwrap();
    println!(
        "SD-1.5 (synthetic weights) built in {:.1} s, RSS {:.0} MB",
        t.elapsed().as_secs_f64(),
        rss_kb() as f64 / 1024.0
    );
    for recompute in [false, true] {
        let r = measure(&unet, [2, 4, 64, 64], 77, 1, recompute);
        println!(
            "SD-1.5, batch 2, 64x64 latents, {} threads, recompute {recompute}: forward+backward {:.1} s, inference forward {:.1} s, activation peak (RSS above weights) {:.0} MB",
            be.threads(),
            r.train_s,
            r.infer_s,
            r.peak_mb
        );
    }
}
