//! Step time of one Diffusion-DPO training step on the CPU and the CUDA trainer backends.
//!
//!     cargo run --release --features cuda --example cuda_train_step -- [--steps 20] [--sd15]
//!
//! One step is what `dpoimg-finetune dpo` does per micro-batch once latents and prompt embeddings
//! are cached: the policy UNet forward with LoRA (activations kept) on the preferred and rejected
//! latents, the reference forward (LoRA off), the DPO loss and its gradient on the host
//! (`dpoimg::loss::dpo_loss`), the backward to the LoRA gradients, and their download (which
//! synchronises the device, so the time is the real wall time). No optimiser step: it costs
//! microseconds next to the UNet.
//!
//! Models: the tiny test UNet (tests/assets/tiny-bundle, 2 pairs of 8×8 latents) on both
//! backends; with `--sd15`, SD-1.5's UNet config with synthetic weights (the arithmetic and memory
//! of the real model, no checkpoint needed) at 1 pair of 64×64 latents on CUDA, and on the CPU
//! only when `--sd15-cpu` is given too (minutes per step).
//!
//! Why an example rather than a test: it measures, it asserts nothing but finiteness; it is
//! built only with the `cuda` feature.

use dpoimg::train::unet::Weights;
use dpoimg::train::{
    Backend, Cpu, Cuda, LoraConfig, LoraGrads, Tensor, UNet, UNetConfig, UNetInput,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const SD15_CONFIG: &str = r#"{
  "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
  "center_input_sample": false, "cross_attention_dim": 768,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
  "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
  "out_channels": 4, "sample_size": 64,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
}"#;

fn lcg(n: usize, seed: u32, amp: f32) -> Vec<f32> {
    let mut k = seed;
    (0..n)
        .map(|_| {
            k = k.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((k >> 8) as f32 / 16_777_216.0 * 2.0 - 1.0) * amp
        })
        .collect()
}

/// Step times in seconds (the first, warm-up step excluded) and the last loss.
fn run<B: Backend>(unet: &UNet<B>, pairs: usize, hw: usize, steps: usize) -> (Vec<f64>, f64) {
    let be = unet.backend();
    let cfg = unet.config();
    let batch = 2 * pairs;
    let shape = [batch, cfg.in_channels, hw, hw];
    let n: usize = shape.iter().product();
    let xdim = cfg.down[0].cross_attention_dim;
    let x = Tensor::from_host(be, &lcg(n, 1, 1.0), &shape);
    let c = Tensor::from_host(be, &lcg(batch * 77 * xdim, 2, 1.0), &[batch, 77, xdim]);
    let target = lcg(n, 3, 1.0);
    let ts: Vec<f32> = (0..batch)
        .map(|i| 999.0 - 97.0 * (i % pairs) as f32)
        .collect();
    let input = UNetInput {
        sample: &x,
        timesteps: &ts,
        ehs: &c,
    };
    let mut lora = unet.new_lora(&LoraConfig::default()).expect("LoRA");
    for (i, (_, p)) in lora.params_mut().enumerate() {
        let len = be.len(&p.b);
        p.b = be.upload(&lcg(len, 10 + i as u32, 0.05));
    }
    let mut times = Vec::new();
    let mut last = f64::NAN;
    for step in 0..=steps {
        let t = Instant::now();
        let (pred, cache) = unet.forward_train(&input, Some(&lora), false).unwrap();
        let reference = unet.forward(&input, None).unwrap();
        let (stats, grad) = dpoimg::loss::dpo_loss(
            &pred.to_host(be),
            &reference.to_host(be),
            &target,
            batch,
            5000.0,
        )
        .unwrap();
        let d_out = Tensor::from_host(be, &grad, &shape);
        let mut grads = LoraGrads::zeros(be, &lora);
        unet.backward(cache, &d_out, Some(&lora), &mut grads)
            .unwrap();
        let host = grads.to_host(be, "");
        assert!(host.values().all(|v| v.iter().all(|x| x.is_finite())));
        if step > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
        last = stats.loss;
    }
    (times, last)
}

fn report(what: &str, times: &[f64], loss: f64) -> f64 {
    let mut s = times.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = s[s.len() / 2];
    let mean = s.iter().sum::<f64>() / s.len() as f64;
    println!(
        "{what}: {} steps, median {:.2} ms, mean {:.2} ms, min {:.2} ms, max {:.2} ms (loss {loss:.4})",
        s.len(),
        median * 1e3,
        mean * 1e3,
        s[0] * 1e3,
        s[s.len() - 1] * 1e3
    );
    median
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let steps = args
        .iter()
        .position(|a| a == "--steps")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse().expect("--steps N"))
        .unwrap_or(20usize)
        .max(1);
    let sd15 = args.iter().any(|a| a == "--sd15");
    let sd15_cpu = args.iter().any(|a| a == "--sd15-cpu");

    let cuda = match Cuda::new(0) {
        Ok(c) => Some(Arc::new(c)),
        Err(e) => {
            println!("CUDA unavailable, CPU only: {e}");
            None
        }
    };
    let cpu = Arc::new(Cpu::new(0));
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/assets/tiny-bundle");
    let (cfg, w) = (dir.join("unet_config.json"), dir.join("unet.safetensors"));

    let unet = UNet::load(cpu.clone(), &cfg, &w).expect("tiny UNet");
    let (t, l) = run(&unet, 2, 8, steps);
    let cpu_ms = report(&format!("tiny UNet, 2 pairs 8x8, {}", cpu.name()), &t, l);
    if let Some(g) = &cuda {
        let unet = UNet::load(g.clone(), &cfg, &w).expect("tiny UNet on CUDA");
        let (t, lg) = run(&unet, 2, 8, steps);
        let gpu_ms = report(&format!("tiny UNet, 2 pairs 8x8, {}", g.name()), &t, lg);
        println!(
            "tiny UNet: CUDA/CPU step time {:.2}x (CPU {:.2} ms, CUDA {:.2} ms); loss CPU {l:.6} vs CUDA {lg:.6}",
            gpu_ms / cpu_ms,
            cpu_ms * 1e3,
            gpu_ms * 1e3
        );
    }

    if sd15 {
        let cfg = UNetConfig::from_json(
            &serde_json::from_str(SD15_CONFIG).unwrap(),
            Path::new("sd15"),
        )
        .unwrap();
        let weights = Weights::synthetic(0.02);
        if let Some(g) = &cuda {
            let t0 = Instant::now();
            let unet = UNet::from_parts(g.clone(), cfg.clone(), &weights).expect("SD-1.5 on CUDA");
            println!(
                "SD-1.5 (synthetic) on {} built in {:.1} s",
                g.name(),
                t0.elapsed().as_secs_f64()
            );
            let (t, l) = run(&unet, 1, 64, steps);
            report(&format!("SD-1.5, 1 pair 64x64, {}", g.name()), &t, l);
        }
        if sd15_cpu {
            let unet = UNet::from_parts(cpu.clone(), cfg, &weights).expect("SD-1.5 on CPU");
            let (t, l) = run(&unet, 1, 64, steps.min(2));
            report(&format!("SD-1.5, 1 pair 64x64, {}", cpu.name()), &t, l);
        }
    }
}
