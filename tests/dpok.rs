//! DPOK's objective (src/finetune/dpok.rs) against torch on the tiny bundle (goldens from
//! tools/make_dpok_goldens.py: diffusers' UNet2DConditionModel + peft LoRA rank 4 / alpha 8 on
//! the bundle's targets, diffusers' DDIMScheduler with η = 1 and injected variance noise, CFG 7.5,
//! the google-research `dpok/` log-probability and loss written with torch ops, torch autograd):
//! - the DDIM timesteps, and every sampled x_{t−1} = μ_θ(x_t) + σ_t·noise of a 4-step,
//!   2-sample trajectory, from the trainer UNet's ε (scaled max |diff| ≤ 1e-4);
//! - per-step log-probabilities (|diff| ≤ 1e-4) and KL values (≤ 1e-4 relative) of every
//!   transition, policy = UNet + LoRA, reference = LoRA off;
//! - one DPOK update on 3 stored transitions (one with a clamped ratio): the loss terms, every
//!   LoRA gradient of the full loss and of the KL term alone (≤ 1e-4 relative per tensor), the
//!   gradient norm, and the LoRA after clip_grad_norm_(0.1) + AdamW equal torch's.

mod common;

use common::{bundle_dir, load_golden, load_json, Golden};
use dpoimg::finetune::dpok::{
    cfg_combine, policy_gradients, DdimPolicy, DdimTransition, DpokWeights, StoredTransition,
};
use dpoimg::optim::{clip_grad_norm, AdamW, AdamWConfig};
use dpoimg::scheduler::SchedulerConfig;
use dpoimg::train::lora::HostPairs;
use dpoimg::train::{Cpu, LoraGrads, LoraSet, Tensor, UNet, UNetInput};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

const LOGPROB_TOL: f64 = 1e-4;
const KL_TOL: f64 = 1e-4;
const GRAD_TOL: f64 = 1e-4;

struct Fixture {
    be: Arc<Cpu>,
    unet: UNet<Cpu>,
    g: HashMap<String, Golden>,
    meta: serde_json::Value,
    policy: DdimPolicy,
}

fn fx() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let be = Arc::new(Cpu::new(2));
        let unet = UNet::load(
            be.clone(),
            &bundle_dir().join("unet_config.json"),
            &bundle_dir().join("unet.safetensors"),
        )
        .expect("tiny UNet loads");
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(bundle_dir().join("bundle.json")).unwrap())
                .unwrap();
        let sched = SchedulerConfig::from_json_value(&manifest["scheduler"]).unwrap();
        let meta = load_json("dpok/dpok.json");
        let steps = meta["steps"].as_u64().unwrap() as usize;
        let policy = DdimPolicy::new(&sched, steps, meta["eta"].as_f64().unwrap()).unwrap();
        Fixture {
            be,
            unet,
            g: load_golden("dpok/dpok.safetensors"),
            meta,
            policy,
        }
    })
}

fn lora(f: &Fixture) -> LoraSet<Cpu> {
    let rank = f.meta["rank"].as_u64().unwrap() as usize;
    let scale = (f.meta["alpha"].as_f64().unwrap() / rank as f64) as f32;
    let mut pairs: HostPairs = BTreeMap::new();
    for (k, v) in &f.g {
        let Some(rest) = k.strip_prefix("lora.unet.") else {
            continue;
        };
        if let Some(m) = rest.strip_suffix(".lora_A.weight") {
            let b = &f.g[&format!("lora.unet.{m}.lora_B.weight")];
            pairs.insert(m.to_string(), (v.f32(), b.f32(), rank, scale));
        }
    }
    assert!(pairs.len() >= 16, "golden holds the LoRA of every target");
    LoraSet::from_host(&*f.be, f.unet.linear_modules(), &pairs).unwrap()
}

/// Rows `idx` of a `[N, ...]` golden, concatenated.
fn rows(g: &Golden, idx: &[usize]) -> Vec<f32> {
    let per = g.data.len() / g.shape[0];
    idx.iter()
        .flat_map(|&i| g.data[i * per..(i + 1) * per].iter().map(|&v| v as f32))
        .collect()
}

/// UNet outputs `[uncond (B); cond (B)]` for samples `x` `[B, 4, 8, 8]` at per-sample timesteps,
/// with the prompts `samples` of the golden's embeddings; with `lora` = policy, without = reference.
fn unet_input(
    f: &Fixture,
    x: &[f32],
    ts: &[f32],
    samples: &[usize],
) -> (Tensor<Cpu>, Tensor<Cpu>, Vec<f32>) {
    let b = samples.len();
    let mut xx = x.to_vec();
    xx.extend_from_slice(x);
    let mut ehs = rows(&f.g["uncond"], samples);
    ehs.extend(rows(&f.g["cond"], samples));
    let mut t2 = ts.to_vec();
    t2.extend_from_slice(ts);
    (
        Tensor::from_host(&*f.be, &xx, &[2 * b, 4, 8, 8]),
        Tensor::from_host(&*f.be, &ehs, &[2 * b, 77, 32]),
        t2,
    )
}

fn rel(got: &[f32], want: &Golden) -> f64 {
    assert_eq!(got.len(), want.data.len(), "length");
    let (mut num, mut den) = (0f64, 0f64);
    for (&a, &b) in got.iter().zip(&want.data) {
        num += (a as f64 - b).powi(2);
        den += b * b;
    }
    (num / den.max(1e-30)).sqrt()
}

#[test]
fn trajectory_log_probs_and_kl_equal_torch() {
    let f = fx();
    let want_ts: Vec<i64> = f.g["timesteps"].i64();
    assert_eq!(f.policy.timesteps(), &want_ts[..], "DDIM timesteps");
    let lora = lora(f);
    let lat = &f.g["latents"];
    let per = lat.data.len() / lat.shape[0]; // B·C·H·W per step
    let b = lat.shape[1];
    let n = per / b;
    let samples: Vec<usize> = (0..b).collect();
    let (mut worst_lp, mut worst_kl, mut worst_x) = (0f64, 0f64, 0f64);
    for (i, &t) in want_ts.iter().enumerate() {
        let x_t = rows(lat, &[i]);
        let x_prev = rows(lat, &[i + 1]);
        let noise = rows(&f.g["variance_noise"], &[i]);
        let (xs, c, ts) = unet_input(f, &x_t, &vec![t as f32; b], &samples);
        let input = UNetInput {
            sample: &xs,
            timesteps: &ts,
            ehs: &c,
        };
        let out = f.unet.forward(&input, Some(&lora)).unwrap().to_host(&*f.be);
        let out_ref = f.unet.forward(&input, None).unwrap().to_host(&*f.be);
        let eps = cfg_combine(&out, 7.5);
        let eps_ref = cfg_combine(&out_ref, 7.5);
        let tr: DdimTransition = f.policy.transition(t).unwrap();
        for j in 0..b {
            let r = j * n..(j + 1) * n;
            // the sampled x_{t-1} is the policy mean plus sigma_t times the injected noise
            let scale = x_prev[r.clone()]
                .iter()
                .fold(1f64, |m, v| m.max(v.abs() as f64));
            for k in r.clone() {
                let (mu, _) = tr.mean(x_t[k] as f64, eps[k] as f64);
                let d = (mu + tr.std * noise[k] as f64 - x_prev[k] as f64).abs() / scale;
                worst_x = worst_x.max(d);
            }
            let lp = tr.log_prob(&x_t[r.clone()], &eps[r.clone()], &x_prev[r.clone()], None);
            let want = f.g["log_prob"].data[i * b + j];
            let d = (lp - want).abs();
            worst_lp = worst_lp.max(d);
            assert!(
                d <= LOGPROB_TOL,
                "step {i} (t = {t}) sample {j}: log-prob {lp} vs torch {want}"
            );
            let kl = eps[r.clone()]
                .iter()
                .zip(&eps_ref[r.clone()])
                .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                .sum::<f64>()
                / n as f64;
            let want = f.g["kl"].data[i * b + j];
            assert!(
                want > 1e-4,
                "the LoRA must move the policy away from the reference"
            );
            let d = (kl - want).abs() / want;
            worst_kl = worst_kl.max(d);
            assert!(
                d <= KL_TOL,
                "step {i} sample {j}: KL {kl} vs torch {want} (relative {d:.2e})"
            );
        }
    }
    eprintln!(
        "trajectory: x_(t-1) scaled max |diff| {worst_x:.2e}; log-prob max |diff| {worst_lp:.2e}; \
         KL max relative diff {worst_kl:.2e}"
    );
    assert!(worst_x <= 1e-4, "sampled x_(t-1) differs by {worst_x:.2e}");
}

/// Runs the update's loss with `w` and returns (stats, LoRA gradients by name).
fn update_grads(
    f: &Fixture,
    lora: &LoraSet<Cpu>,
    w: &DpokWeights,
) -> (
    dpoimg::finetune::dpok::DpokStats,
    BTreeMap<String, Vec<f32>>,
) {
    let u = &f.meta["update"];
    let tr: Vec<(usize, usize)> = u["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_u64().unwrap() as usize,
                p[1].as_u64().unwrap() as usize,
            )
        })
        .collect();
    let lat = &f.g["latents"];
    let (steps, b) = (lat.shape[0], lat.shape[1]);
    let flat = |s: usize, j: usize| s * b + j;
    assert!(tr.iter().all(|&(s, j)| s + 1 < steps && j < b));
    // latents viewed as [steps·B, C, H, W]
    let lat_rows = Golden {
        shape: vec![steps * b],
        data: lat.data.clone(),
    };
    let x_t = rows(
        &lat_rows,
        &tr.iter().map(|&(s, j)| flat(s, j)).collect::<Vec<_>>(),
    );
    let x_prev = rows(
        &lat_rows,
        &tr.iter().map(|&(s, j)| flat(s + 1, j)).collect::<Vec<_>>(),
    );
    let want_ts = f.g["timesteps"].i64();
    let old = f.g["update.old_log_prob"].data.clone();
    let adv = f.g["update.advantage"].data.clone();
    let (uncond, cond) = (&f.g["uncond"], &f.g["cond"]);
    let per_ehs = 77 * 32;
    let uc: Vec<Vec<f32>> = tr.iter().map(|&(_, j)| rows(uncond, &[j])).collect();
    let cc: Vec<Vec<f32>> = tr.iter().map(|&(_, j)| rows(cond, &[j])).collect();
    let n = x_t.len() / tr.len();
    let stored: Vec<StoredTransition> = (0..tr.len())
        .map(|k| StoredTransition {
            x_t: &x_t[k * n..(k + 1) * n],
            x_prev: &x_prev[k * n..(k + 1) * n],
            t: want_ts[tr[k].0],
            old_log_prob: old[k],
            advantage: adv[k],
            uncond: &uc[k],
            cond: &cc[k],
        })
        .collect();
    assert_eq!(uc[0].len(), per_ehs);
    let mut grads = LoraGrads::zeros(&*f.be, lora);
    let stats = policy_gradients(
        &f.unet,
        lora,
        &f.policy,
        &stored,
        [4, 8, 8],
        [77, 32],
        w,
        &mut grads,
    )
    .unwrap();
    (stats, grads.to_host(&*f.be, "unet."))
}

fn weights(u: &serde_json::Value) -> DpokWeights {
    DpokWeights {
        reward_weight: u["reward_weight"].as_f64().unwrap(),
        kl_weight: u["kl_weight"].as_f64().unwrap(),
        ratio_clip: u["ratio_clip"].as_f64().unwrap(),
        kl_active: true,
        grad_accum: u["accum"].as_u64().unwrap() as usize,
        guidance: 7.5,
    }
}

fn check_grads(what: &str, f: &Fixture, got: &BTreeMap<String, Vec<f32>>, prefix: &str) -> f64 {
    let want: Vec<&String> = f.g.keys().filter(|k| k.starts_with(prefix)).collect();
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: one gradient per LoRA tensor"
    );
    let mut worst = (0f64, String::new());
    for (k, v) in got {
        let w =
            f.g.get(&format!("{prefix}{k}"))
                .unwrap_or_else(|| panic!("{what}: torch has no gradient for {k}"));
        assert!(v.iter().any(|&x| x != 0.0), "{what}: zero gradient for {k}");
        let e = rel(v, w);
        if e > worst.0 {
            worst = (e, k.clone());
        }
        assert!(e <= GRAD_TOL, "{what}: d {k}: relative error {e:.3e}");
    }
    eprintln!(
        "{what}: {} LoRA gradients, worst relative error {:.2e} ({})",
        got.len(),
        worst.0,
        worst.1
    );
    worst.0
}

#[test]
fn one_update_equals_torch() {
    let f = fx();
    let u = &f.meta["update"];
    let mut lora = lora(f);
    let w = weights(u);

    // the KL term alone (its gradient is small next to the policy term's in the full loss)
    let kl_only = DpokWeights {
        reward_weight: 0.0,
        ..w
    };
    let (s, g_kl) = update_grads(f, &lora, &kl_only);
    assert!((s.kl - u["kl_mean"].as_f64().unwrap()).abs() <= 1e-4 * u["kl_mean"].as_f64().unwrap());
    check_grads("KL term", f, &g_kl, "update.grad_kl.");

    let (s, mut grads) = update_grads(f, &lora, &w);
    for (j, (&lp, &want)) in s
        .log_prob
        .iter()
        .zip(&f.g["update.log_prob"].data)
        .enumerate()
    {
        assert!(
            (lp - want).abs() <= LOGPROB_TOL,
            "transition {j}: log-prob {lp} vs {want}"
        );
    }
    assert_eq!(s.ratio.len(), 3);
    for (j, (&r, &want)) in s.ratio.iter().zip(&f.g["update.ratio"].data).enumerate() {
        assert!(
            (r - want).abs() <= LOGPROB_TOL,
            "transition {j}: ratio {r} vs {want}"
        );
    }
    assert!(
        (s.clamped - 1.0 / 3.0).abs() < 1e-12,
        "exactly the shifted transition is clamped"
    );
    for (name, got, want) in [
        ("loss", s.loss, u["loss"].as_f64().unwrap()),
        (
            "policy loss",
            s.policy_loss,
            u["policy_loss"].as_f64().unwrap(),
        ),
        ("KL term", s.kl_term, u["kl_term"].as_f64().unwrap()),
    ] {
        let d = (got - want).abs() / want.abs().max(1e-12);
        eprintln!("{name}: {got} vs torch {want} (relative {d:.2e})");
        assert!(d <= 1e-5, "{name}: {got} vs torch {want}");
    }
    check_grads("DPOK update", f, &grads, "update.grad.");

    // clip_grad_norm_ + AdamW, in the adapter's name order
    let mut host = lora.to_host(&*f.be, "unet.");
    let names: Vec<String> = host.keys().cloned().collect();
    let norm = {
        assert!(
            grads.keys().eq(names.iter()),
            "gradients in the adapter's name order"
        );
        let mut gs: Vec<&mut [f32]> = grads.values_mut().map(|v| v.as_mut_slice()).collect();
        clip_grad_norm(&mut gs, u["clip_norm"].as_f64().unwrap())
    };
    let want_norm = u["grad_norm"].as_f64().unwrap();
    assert!(
        (norm - want_norm).abs() <= 1e-4 * want_norm,
        "grad norm {norm} vs {want_norm}"
    );
    let before: BTreeMap<String, Vec<f32>> = host
        .iter()
        .map(|(k, (_, v))| (k.clone(), v.clone()))
        .collect();
    let sizes: Vec<usize> = names.iter().map(|k| host[k].1.len()).collect();
    let mut adam = AdamW::new(
        AdamWConfig {
            lr: u["lr"].as_f64().unwrap(),
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: u["weight_decay"].as_f64().unwrap(),
        },
        &sizes,
    );
    {
        let mut ps: Vec<&mut [f32]> = host.values_mut().map(|(_, v)| v.as_mut_slice()).collect();
        let gs: Vec<&[f32]> = names.iter().map(|k| grads[k].as_slice()).collect();
        adam.update(&mut ps, &gs, u["lr"].as_f64().unwrap());
    }
    // AdamW's first step is lr·g/(|g| + 1e-8) ≈ lr·sign(g): where the clipped gradient is tiny
    // (< 1e-5, about 2% of the elements here) its float32 rounding can flip the sign, so those
    // elements are only held to |step| ≤ lr; every other element must equal torch's to 1e-6.
    // The optimiser path itself is then checked on every element by stepping torch's gradients.
    let lr = u["lr"].as_f64().unwrap();
    let clip_coef = u["clip_norm"].as_f64().unwrap() / want_norm;
    let (mut worst, mut moved, mut tiny) = (0f64, 0f64, 0usize);
    for k in &names {
        let want = &f.g[&format!("update.after.{k}")];
        let tg = &f.g[&format!("update.grad.{k}")];
        let got = &host[k].1;
        for (i, (&a, &b)) in got.iter().zip(&want.data).enumerate() {
            let p = before[k][i] as f64;
            moved = moved.max((b - p).abs());
            if (tg.data[i] * clip_coef).abs() >= 1e-5 {
                worst = worst.max((a as f64 - b).abs());
            } else {
                tiny += 1;
                assert!(
                    (a as f64 - p).abs() <= lr * 1.001,
                    "{k}[{i}]: step larger than lr"
                );
            }
        }
    }
    eprintln!(
        "after clip + AdamW from the Rust gradients: max |diff| vs torch {worst:.2e} (largest \
         update {moved:.2e}); {tiny} of {} elements have |clipped grad| < 1e-5",
        sizes.iter().sum::<usize>()
    );
    assert!(moved > 1e-4, "the update must move the LoRA");
    assert!(
        worst <= 1e-6,
        "updated LoRA differs from torch's by {worst:.2e}"
    );
    assert!(
        tiny * 20 < sizes.iter().sum::<usize>(),
        "too many tiny gradients: {tiny}"
    );
    {
        let mut torch_grads: Vec<Vec<f32>> = names
            .iter()
            .map(|k| f.g[&format!("update.grad.{k}")].f32())
            .collect();
        let mut gs: Vec<&mut [f32]> = torch_grads.iter_mut().map(|v| v.as_mut_slice()).collect();
        clip_grad_norm(&mut gs, u["clip_norm"].as_f64().unwrap());
        let mut ps: Vec<Vec<f32>> = names.iter().map(|k| before[k].clone()).collect();
        let mut adam2 = AdamW::new(adam.config, &sizes);
        let mut pr: Vec<&mut [f32]> = ps.iter_mut().map(|v| v.as_mut_slice()).collect();
        let gr: Vec<&[f32]> = torch_grads.iter().map(|v| v.as_slice()).collect();
        adam2.update(&mut pr, &gr, lr);
        let mut worst_all = 0f64;
        for (k, p) in names.iter().zip(&ps) {
            let want = &f.g[&format!("update.after.{k}")];
            for (&a, &b) in p.iter().zip(&want.data) {
                worst_all = worst_all.max((a as f64 - b).abs());
            }
        }
        eprintln!(
            "clip + AdamW from torch's gradients: max |diff| {worst_all:.2e} on every element"
        );
        assert!(
            worst_all <= 1e-6,
            "optimiser step differs by {worst_all:.2e}"
        );
    }
    // and the updated adapter loads back into the trainer
    let pairs: HostPairs = names
        .iter()
        .filter_map(|k| k.strip_suffix(".lora_A.weight"))
        .map(|m| {
            let a = host[&format!("{m}.lora_A.weight")].1.clone();
            let b = host[&format!("{m}.lora_B.weight")].1.clone();
            let rank = host[&format!("{m}.lora_A.weight")].0[0];
            (
                m.strip_prefix("unet.").unwrap().to_string(),
                (a, b, rank, 2.0),
            )
        })
        .collect();
    lora = LoraSet::from_host(&*f.be, f.unet.linear_modules(), &pairs).unwrap();
    assert_eq!(lora.len(), names.len() / 2);
}

/// Replays the golden's variance noise, one step per draw.
struct Replay {
    steps: Vec<Vec<f32>>,
    next: usize,
}

impl dpoimg::scheduler::NoiseSource for Replay {
    fn fill_normal(&mut self, out: &mut [f32]) {
        let s = &self.steps[self.next];
        assert_eq!(s.len(), out.len(), "one draw of B·C·H·W per step");
        out.copy_from_slice(s);
        self.next += 1;
    }
}

/// The golden trajectory (its start, embeddings and variance noise) sampled through ONNX Runtime
/// with the golden LoRA at `guidance`, and how many noise draws it took.
fn golden_rollout(f: &Fixture, guidance: f64) -> (dpoimg::finetune::dpok::Rollout, usize) {
    let e = common::engine();
    let lora = lora(f);
    let adapter = dpoimg::finetune::dpok::adapter_from_lora(&*f.be, &lora, "current");
    assert_eq!(adapter.modules.len(), lora.len());
    let composed = dpoimg::finetune::dpok::compose_current(e, adapter).unwrap();
    let lat = &f.g["latents"];
    let b = lat.shape[1];
    let steps = f.g["timesteps"].data.len();
    let mut noise = Replay {
        steps: (0..steps)
            .map(|i| rows(&f.g["variance_noise"], &[i]))
            .collect(),
        next: 0,
    };
    let all: Vec<usize> = (0..b).collect();
    let r = dpoimg::finetune::dpok::rollout(
        e,
        &composed,
        &f.policy,
        guidance,
        &[b, 4, 8, 8],
        &rows(lat, &[0]),
        &rows(&f.g["uncond"], &all),
        &rows(&f.g["cond"], &all),
        &[b, 77, 32],
        &mut noise,
    )
    .unwrap();
    (r, noise.next)
}

#[test]
fn rollout_through_onnx_equals_torch() {
    let f = fx();
    let lat = &f.g["latents"];
    let b = lat.shape[1];
    let steps = f.g["timesteps"].data.len();
    let (r, draws) = golden_rollout(f, 7.5);
    assert_eq!(draws, steps, "one noise draw per step");
    assert_eq!(r.timesteps, f.g["timesteps"].i64());
    assert_eq!(r.latents.len(), steps + 1);
    let (mut worst_x, mut worst_lp) = (0f64, 0f64);
    for i in 0..=steps {
        let want: Vec<f64> = rows(lat, &[i]).iter().map(|&v| v as f64).collect();
        let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
        let d = common::max_abs_diff(&r.latents[i], &want) / scale;
        worst_x = worst_x.max(d);
    }
    for i in 0..steps {
        for j in 0..b {
            let want = f.g["log_prob"].data[i * b + j];
            worst_lp = worst_lp.max((r.log_prob[i][j] - want).abs());
        }
    }
    eprintln!(
        "ONNX rollout: latents scaled max |diff| {worst_x:.2e}, log-prob max |diff| {worst_lp:.2e}"
    );
    assert!(worst_x <= 1e-4, "rollout latents differ by {worst_x:.2e}");
    assert!(
        worst_lp <= LOGPROB_TOL,
        "rollout log-probs differ by {worst_lp:.2e}"
    );
}

/// At guidance 1 the rollout and the policy gradient run the conditional branch alone
/// (`ε = ε_c`); the CFG formula at a scale that rounds to 1.0 in float32 (`1 + 1e-9`, which still
/// runs both branches) gives `ε_u + 1·(ε_c − ε_u)`, the same up to float32 rounding. So the
/// one-branch path must agree with the two-branch one: latents and log-probabilities of a whole
/// trajectory, and every LoRA gradient of an update (≤ 1e-5 relative).
#[test]
fn unguided_policy_equals_cfg_at_scale_one() {
    let f = fx();
    let lora = lora(f);
    let roll = |g: f64| golden_rollout(f, g).0;
    let (one, two) = (roll(1.0), roll(1.0 + 1e-9));
    assert!(dpoimg::finetune::dpok::uses_cfg(1.0 + 1e-9) && !dpoimg::finetune::dpok::uses_cfg(1.0));
    for (a, c) in one.latents.iter().zip(&two.latents) {
        let d = common::max_abs(a, c);
        assert!(d <= 1e-5, "latents differ by {d:.2e}");
    }
    for (a, c) in one
        .log_prob
        .iter()
        .flatten()
        .zip(two.log_prob.iter().flatten())
    {
        assert!((a - c).abs() <= 1e-5, "log-prob {a} vs {c}");
    }
    // and the trajectory differs from the guided one: the branch count is not a no-op
    let guided = roll(7.5);
    let d = common::max_abs(one.latents.last().unwrap(), guided.latents.last().unwrap());
    assert!(d > 1e-3, "guidance 1 and 7.5 sampled the same latents");

    let w = |g: f64| DpokWeights {
        ratio_clip: 10.0, // every ratio passes its gradient
        guidance: g,
        ..weights(&f.meta["update"])
    };
    let (s1, g1) = update_grads(f, &lora, &w(1.0));
    let (s2, g2) = update_grads(f, &lora, &w(1.0 + 1e-9));
    assert!((s1.loss - s2.loss).abs() <= 1e-5 * s2.loss.abs().max(1e-3));
    assert!((s1.kl - s2.kl).abs() <= 1e-5 * s2.kl.abs().max(1e-12));
    assert_eq!(g1.len(), g2.len());
    for (k, v) in &g1 {
        let want = Golden {
            shape: vec![v.len()],
            data: g2[k].iter().map(|&x| x as f64).collect(),
        };
        let r = rel(v, &want);
        assert!(
            r <= 1e-5,
            "d {k}: one-branch vs two-branch relative {r:.2e}"
        );
    }
}

/// Before `kl_warmup` the reference leaves the KL term out: the gradient is then torch's full
/// gradient minus its KL-term gradient (≤ 1e-4 relative per tensor), and a second micro-batch
/// adds to the same buffer.
#[test]
fn kl_warmup_drops_the_kl_term_and_micro_batches_accumulate() {
    let f = fx();
    let lora = lora(f);
    let u = &f.meta["update"];
    let w = DpokWeights {
        kl_active: false,
        ..weights(u)
    };
    let (s, got) = update_grads(f, &lora, &w);
    assert_eq!((s.kl, s.kl_term), (0.0, 0.0));
    let mut worst = 0f64;
    for (k, v) in &got {
        let full = &f.g[&format!("update.grad.{k}")];
        let kl = &f.g[&format!("update.grad_kl.{k}")];
        let want = Golden {
            shape: full.shape.clone(),
            data: full.data.iter().zip(&kl.data).map(|(a, b)| a - b).collect(),
        };
        let e = rel(v, &want);
        worst = worst.max(e);
        assert!(
            e <= GRAD_TOL,
            "policy term only: d {k}: relative error {e:.3e}"
        );
    }
    eprintln!("policy term only: worst relative error {worst:.2e}");

    // the same micro-batch twice into one buffer = twice the gradient
    let (once, twice) = {
        let tr = f.g["timesteps"].i64();
        let lat = &f.g["latents"];
        let b = lat.shape[1];
        let n = lat.data.len() / lat.shape[0] / b;
        let x_t = rows(lat, &[0]);
        let x_prev = rows(lat, &[1]);
        let (uc, cc) = (rows(&f.g["uncond"], &[0]), rows(&f.g["cond"], &[0]));
        let one = [StoredTransition {
            x_t: &x_t[..n],
            x_prev: &x_prev[..n],
            t: tr[0],
            old_log_prob: f.g["log_prob"].data[0],
            advantage: 0.5,
            uncond: &uc,
            cond: &cc,
        }];
        let w = weights(u);
        let mut g1 = LoraGrads::zeros(&*f.be, &lora);
        policy_gradients(
            &f.unet,
            &lora,
            &f.policy,
            &one,
            [4, 8, 8],
            [77, 32],
            &w,
            &mut g1,
        )
        .unwrap();
        let once = g1.to_host(&*f.be, "unet.");
        policy_gradients(
            &f.unet,
            &lora,
            &f.policy,
            &one,
            [4, 8, 8],
            [77, 32],
            &w,
            &mut g1,
        )
        .unwrap();
        (once, g1.to_host(&*f.be, "unet."))
    };
    for (k, a) in &once {
        assert!(a.iter().any(|&x| x != 0.0), "{k}: zero gradient");
        for (x, y) in a.iter().zip(&twice[k]) {
            assert!(
                (2.0 * x - y).abs() <= 1e-6 * (1.0 + y.abs()),
                "{k}: {y} != 2 × {x}"
            );
        }
    }
}
