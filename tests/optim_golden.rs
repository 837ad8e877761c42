//! AdamW, gradient clipping and learning-rate schedules against torch.optim.AdamW,
//! clip_grad_norm_ and diffusers' get_scheduler (tools/make_optim_goldens.py).

mod common;

use common::*;
use dpoimg::optim::{clip_grad_norm, AdamW, AdamWConfig, LrSchedule};

#[test]
fn adamw_with_clipping_and_schedules_equals_torch() {
    let meta = load_json("optim.json");
    let g = load_golden("optim.safetensors");
    let steps = meta["steps"].as_u64().unwrap() as usize;
    let b = &meta["betas"];
    let cfg = AdamWConfig {
        lr: meta["lr"].as_f64().unwrap(),
        beta1: b[0].as_f64().unwrap(),
        beta2: b[1].as_f64().unwrap(),
        eps: meta["eps"].as_f64().unwrap(),
        weight_decay: meta["weight_decay"].as_f64().unwrap(),
    };
    let max_norm = meta["max_grad_norm"].as_f64().unwrap();
    for (name, s) in meta["schedules"].as_object().unwrap() {
        let warmup = s["warmup"].as_u64().unwrap() as usize;
        let schedule = match name.as_str() {
            "constant" => LrSchedule::Constant,
            "constant_with_warmup" => LrSchedule::ConstantWithWarmup { warmup },
            "cosine" => LrSchedule::Cosine {
                warmup,
                total: steps,
            },
            other => panic!("unknown schedule {other}"),
        };
        let mut params: Vec<Vec<f32>> = (0..2).map(|i| g[&format!("p0.{i}")].f32()).collect();
        let mut opt = AdamW::new(cfg, &params.iter().map(Vec::len).collect::<Vec<_>>());
        for k in 0..steps {
            let mut grads: Vec<Vec<f32>> =
                (0..2).map(|i| g[&format!("grad.{k}.{i}")].f32()).collect();
            let mut views: Vec<&mut [f32]> = grads.iter_mut().map(|v| v.as_mut_slice()).collect();
            let norm = clip_grad_norm(&mut views, max_norm);
            let want_norm = s["grad_norms"][k].as_f64().unwrap();
            assert!(
                (norm - want_norm).abs() <= 1e-5 * want_norm,
                "{name} step {k}: norm {norm} vs {want_norm}"
            );
            let lr = cfg.lr * schedule.factor(k);
            let want_lr = s["lrs"][k].as_f64().unwrap();
            assert!(
                (lr - want_lr).abs() <= 1e-12,
                "{name} step {k}: lr {lr} vs {want_lr}"
            );
            let gviews: Vec<&[f32]> = grads.iter().map(|v| v.as_slice()).collect();
            let mut pviews: Vec<&mut [f32]> = params.iter_mut().map(|v| v.as_mut_slice()).collect();
            opt.update(&mut pviews, &gviews, lr);
        }
        for (i, p) in params.iter().enumerate() {
            // f32 arithmetic on both sides; 1e-6 absolute after 5 steps of lr 1e-2.
            assert_close(
                &format!("{name} param {i}"),
                p,
                &g[&format!("{name}.final.{i}")].data,
                1e-6,
            );
        }
    }
}
