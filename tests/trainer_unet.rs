//! The trainer's whole UNet against the ONNX UNet (the inference path) and against torch + peft
//! autograd (goldens from tools/make_trainer_goldens.py):
//! - forward == `Engine::unet_forward` on the tiny bundle, base and with the r4 adapter, max abs
//!   diff ≤ 1e-4; LoRA off == base;
//! - for loss = sum(out · G), the gradient of EVERY LoRA A and B tensor (the set of names must be
//!   exactly the adapter's) and of the input sample equal torch's to 1e-4 relative
//!   (‖g − g_ref‖ / ‖g_ref‖ per tensor), with scale 1 (r4) and scale 2 (r8, alpha 16);
//! - the same on an SD-2-style UNet (linear projections, per-block heads, two transformer layers
//!   per block, three levels, odd latent size, freq_shift 1 without flip);
//! - gradient checkpointing gives the same gradients.

mod common;

use common::{assets, bundle_dir, engine, golden_path, load_golden, max_abs, Golden};
use dpoimg::lora::AdapterRef;
use dpoimg::train::lora::HostPairs;
use dpoimg::train::{Cpu, LoraConfig, LoraGrads, LoraSet, Tensor, UNet, UNetConfig, UNetInput};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

const PARITY_TOL: f64 = 1e-4;
const GRAD_TOL: f64 = 1e-4;

fn be() -> Arc<Cpu> {
    static BE: OnceLock<Arc<Cpu>> = OnceLock::new();
    BE.get_or_init(|| Arc::new(Cpu::new(2))).clone()
}

fn tiny() -> &'static UNet<Cpu> {
    static U: OnceLock<UNet<Cpu>> = OnceLock::new();
    U.get_or_init(|| {
        UNet::load(
            be(),
            &bundle_dir().join("unet_config.json"),
            &bundle_dir().join("unet.safetensors"),
        )
        .expect("tiny UNet loads")
    })
}

fn tiny_golden() -> &'static HashMap<String, Golden> {
    static G: OnceLock<HashMap<String, Golden>> = OnceLock::new();
    G.get_or_init(|| load_golden("trainer/unet_tiny.safetensors"))
}

fn adapter(name: &str, strength: f32) -> AdapterRef {
    AdapterRef {
        adapter: engine()
            .load_adapter(&assets().join("adapters").join(name))
            .expect("adapter loads"),
        strength,
    }
}

fn t(g: &Golden) -> Tensor<Cpu> {
    Tensor::from_host(&*be(), &g.f32(), &g.shape)
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

/// Runs forward_train + backward of sum(out · G) and compares out, every LoRA gradient and
/// d sample with `prefix.*` goldens. Returns the max relative gradient error.
fn check_grads(
    unet: &UNet<Cpu>,
    g: &HashMap<String, Golden>,
    prefix: &str,
    lora: &LoraSet<Cpu>,
    recompute: bool,
) -> f64 {
    let (x, c) = (t(&g["sample"]), t(&g["encoder_hidden_states"]));
    let ts = g["timestep"].f32();
    let input = UNetInput {
        sample: &x,
        timesteps: &ts,
        ehs: &c,
    };
    let (out, cache) = unet.forward_train(&input, Some(lora), recompute).unwrap();
    let d_out = out.to_host(&*be());
    let want_out = &g[&format!("{prefix}.out")];
    let out_err = max_abs(&d_out, &want_out.f32());
    eprintln!("{prefix}: out max |diff| vs torch+peft {out_err:.2e}");
    assert!(
        out_err <= PARITY_TOL,
        "{prefix}: out differs by {out_err:.2e}"
    );
    let mut grads = LoraGrads::zeros(&*be(), lora);
    let d_sample = unet
        .backward(cache, &t(&g["g"]), Some(lora), &mut grads)
        .unwrap();
    let got = grads.to_host(&*be(), "unet.");
    let gp = format!("{prefix}.grad.");
    let want: BTreeSet<String> = g
        .keys()
        .filter_map(|k| k.strip_prefix(&gp).map(String::from))
        .collect();
    let have: BTreeSet<String> = got.keys().cloned().collect();
    let lora_names: BTreeSet<String> = lora.to_host(&*be(), "unet.").into_keys().collect();
    assert_eq!(
        have, lora_names,
        "{prefix}: a gradient for every LoRA tensor"
    );
    assert_eq!(have, want, "{prefix}: gradient names equal torch+peft's");
    assert!(
        have.iter().any(|k| k.contains("to_q.lora_A"))
            && have.iter().any(|k| k.contains("to_k.lora_B"))
    );
    let mut worst = (0f64, String::new());
    for (k, v) in &got {
        let w = &g[&format!("{gp}{k}")];
        assert!(
            v.iter().any(|&x| x != 0.0),
            "{prefix}: zero gradient for {k}"
        );
        let e = rel(v, w);
        if e > worst.0 {
            worst = (e, k.clone());
        }
        assert!(e <= GRAD_TOL, "{prefix}: d {k}: relative error {e:.3e}");
    }
    let ds = rel(&d_sample.to_host(&*be()), &g[&format!("{prefix}.d_sample")]);
    eprintln!(
        "{prefix}: {} LoRA gradients, worst relative error {:.2e} ({}); d sample {ds:.2e}",
        got.len(),
        worst.0,
        worst.1
    );
    assert!(ds <= GRAD_TOL, "{prefix}: d sample relative error {ds:.3e}");
    worst.0.max(ds)
}

#[test]
fn forward_equals_onnx_unet_base_and_r4() {
    let g = tiny_golden();
    let e = engine();
    let (x, c) = (t(&g["sample"]), t(&g["encoder_hidden_states"]));
    let ts = g["timestep"].f32();
    assert_ne!(ts[0], ts[1], "per-sample timesteps must differ");
    let input = UNetInput {
        sample: &x,
        timesteps: &ts,
        ehs: &c,
    };
    let onnx = |adapters: &[AdapterRef]| {
        let lora = e.compose(adapters).unwrap();
        e.unet_forward(
            &g["sample"].shape,
            &g["sample"].f32(),
            &ts,
            &g["encoder_hidden_states"].shape,
            &g["encoder_hidden_states"].f32(),
            &lora,
        )
        .unwrap()
    };
    let unet = tiny();
    let base = unet.forward(&input, None).unwrap().to_host(&*be());
    let d = max_abs(&base, &onnx(&[]));
    eprintln!("trainer vs ONNX UNet, base: max |diff| {d:.2e}");
    assert!(d <= PARITY_TOL, "base: {d:.2e}");
    let d = max_abs(&base, &g["out_base"].f32());
    eprintln!("trainer vs diffusers, base: max |diff| {d:.2e}");
    assert!(d <= PARITY_TOL);

    let r4_path = assets().join("adapters/r4.safetensors");
    let r4 = unet.load_lora(&r4_path).unwrap();
    assert_eq!(
        r4.len(),
        unet.linear_modules()
            .iter()
            .filter(|m| {
                ["to_q", "to_k", "to_v", "to_out.0"]
                    .iter()
                    .any(|t| m.name.ends_with(t))
            })
            .count()
    );
    let with = unet.forward(&input, Some(&r4)).unwrap().to_host(&*be());
    let d = max_abs(&with, &onnx(&[adapter("r4.safetensors", 1.0)]));
    eprintln!("trainer vs ONNX UNet, r4: max |diff| {d:.2e}");
    assert!(d <= PARITY_TOL, "r4: {d:.2e}");
    assert!(max_abs(&with, &base) > 1e-2, "the adapter must matter");

    // LoRA off is the base model, bit for bit, whichever entry point
    let off = unet.forward(&input, None).unwrap().to_host(&*be());
    assert_eq!(off, base);
    let (train_off, _) = unet.forward_train(&input, None, false).unwrap();
    assert_eq!(train_off.to_host(&*be()), base);
    // and a fresh adapter (B = 0) too
    let fresh = unet.new_lora(&LoraConfig::default()).unwrap();
    assert_eq!(
        unet.forward(&input, Some(&fresh)).unwrap().to_host(&*be()),
        base
    );
}

#[test]
fn lora_gradients_equal_torch_peft_r4_and_r8() {
    let g = tiny_golden();
    let unet = tiny();
    for (name, scale) in [("r4", 1.0f32), ("r8", 2.0)] {
        let lora = unet
            .load_lora(&assets().join(format!("adapters/{name}.safetensors")))
            .unwrap();
        assert!(lora.iter().all(|(_, _, p)| p.scale == scale));
        check_grads(unet, g, name, &lora, false);
    }
}

#[test]
fn checkpointing_gives_the_same_gradients() {
    let g = tiny_golden();
    let unet = tiny();
    let lora = unet
        .load_lora(&assets().join("adapters/r4.safetensors"))
        .unwrap();
    check_grads(unet, g, "r4", &lora, true);
}

fn sd2like() -> (UNet<Cpu>, HashMap<String, Golden>) {
    let unet = UNet::load(
        be(),
        &golden_path("trainer/unet_sd2like_config.json"),
        &golden_path("trainer/unet_sd2like_weights.safetensors"),
    )
    .expect("SD-2-like UNet loads");
    (unet, load_golden("trainer/unet_sd2like.safetensors"))
}

#[test]
fn sd2_style_unet_forward_and_gradients() {
    let (unet, g) = sd2like();
    let cfg: &UNetConfig = unet.config();
    assert!(cfg.use_linear_projection && cfg.upcast_attention && !cfg.flip_sin_to_cos);
    assert_eq!(cfg.down[1].transformer_depth, 2);
    let (x, c) = (t(&g["sample"]), t(&g["encoder_hidden_states"]));
    let ts = g["timestep"].f32();
    let input = UNetInput {
        sample: &x,
        timesteps: &ts,
        ehs: &c,
    };
    let base = unet.forward(&input, None).unwrap().to_host(&*be());
    let d = max_abs(&base, &g["out_base"].f32());
    eprintln!("sd2like base vs diffusers: max |diff| {d:.2e}");
    assert!(d <= PARITY_TOL);
    let mut pairs = HostPairs::new();
    for (k, v) in &g {
        if let Some(m) = k
            .strip_prefix("lora.lora.unet.")
            .and_then(|r| r.strip_suffix(".lora_A.weight"))
        {
            let b = &g[&format!("lora.lora.unet.{m}.lora_B.weight")];
            pairs.insert(m.to_string(), (v.f32(), b.f32(), 2, 1.5));
        }
    }
    let lora = LoraSet::from_host(&*be(), unet.linear_modules(), &pairs).unwrap();
    check_grads(&unet, &g, "lora", &lora, false);
}

#[test]
fn mismatched_inputs_and_parameters_are_errors() {
    let unet = tiny();
    let b = &*be();
    let x = Tensor::from_host(b, &vec![0.0; 2 * 4 * 8 * 8], &[2, 4, 8, 8]);
    let c = Tensor::from_host(b, &vec![0.0; 2 * 5 * 32], &[2, 5, 32]);
    let bad_t = UNetInput {
        sample: &x,
        timesteps: &[1.0, 2.0, 3.0],
        ehs: &c,
    };
    assert!(unet.forward(&bad_t, None).is_err());
    let c3 = Tensor::from_host(b, &vec![0.0; 2 * 5 * 16], &[2, 5, 16]);
    let bad_c = UNetInput {
        sample: &x,
        timesteps: &[1.0],
        ehs: &c3,
    };
    assert!(unet.forward(&bad_c, None).is_err());
    // backward must see the parameters the forward used
    let mut lora = unet.new_lora(&LoraConfig::default()).unwrap();
    let ok = UNetInput {
        sample: &x,
        timesteps: &[5.0],
        ehs: &c,
    };
    let (out, cache) = unet.forward_train(&ok, Some(&lora), false).unwrap();
    for (_, p) in lora.params_mut() {
        p.scale *= 1.0;
    }
    let mut grads = LoraGrads::zeros(b, &lora);
    assert!(unet.backward(cache, &out, Some(&lora), &mut grads).is_err());
    let unknown = LoraConfig {
        targets: vec!["conv1".into()],
        ..LoraConfig::default()
    };
    assert!(
        unet.new_lora(&unknown).is_err(),
        "LoRA on a 3x3 convolution is refused"
    );
}

#[test]
fn lora_on_every_linear_kind_gets_gradients() {
    // Targets beyond attention: feed-forward, proj_in/out, resnet time projections and the time
    // embedding MLP. Non-zero B so that every A gradient is non-zero too.
    let unet = tiny();
    let b = &*be();
    let cfg = LoraConfig {
        targets: [
            "to_q",
            "to_k",
            "to_v",
            "to_out.0",
            "ff.net.0.proj",
            "ff.net.2",
            "proj_in",
            "proj_out",
            "time_emb_proj",
            "linear_1",
            "linear_2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        rank: 2,
        alpha: 2.0,
        ..LoraConfig::default()
    };
    let mut lora = unet.new_lora(&cfg).unwrap();
    assert_eq!(
        lora.len(),
        unet.linear_modules().len(),
        "every linear module adapted"
    );
    let mut k = 0u32;
    for (_, p) in lora.params_mut() {
        for v in p.b.iter_mut() {
            k = k.wrapping_mul(1664525).wrapping_add(1013904223);
            *v = ((k >> 8) as f32 / 16_777_216.0 - 0.5) * 0.2;
        }
    }
    let g = tiny_golden();
    let (x, c) = (t(&g["sample"]), t(&g["encoder_hidden_states"]));
    let ts = g["timestep"].f32();
    let input = UNetInput {
        sample: &x,
        timesteps: &ts,
        ehs: &c,
    };
    let (_, cache) = unet.forward_train(&input, Some(&lora), false).unwrap();
    let mut grads = LoraGrads::zeros(b, &lora);
    unet.backward(cache, &t(&g["g"]), Some(&lora), &mut grads)
        .unwrap();
    for (k, v) in grads.to_host(b, "") {
        assert!(v.iter().any(|&x| x != 0.0), "zero gradient for {k}");
    }
}
