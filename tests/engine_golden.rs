//! The ONNX Runtime pipeline against goldens computed by transformers/diffusers/peft
//! (tools/make_test_assets.py). Tolerances are DESIGN.md's: 1e-4 absolute for model outputs and
//! whole txt2img.

mod common;

use common::*;
use dpoimg::lora::AdapterRef;
use dpoimg::scheduler::{NoiseSource, SamplerKind};
use dpoimg::{CancelToken, GenerateRequest};

const MODEL_TOL: f64 = 1e-4;

#[test]
fn tokenizer_ids_equal_transformers() {
    let e = engine();
    let cases = load_json("tokenizer.json");
    let cases = cases.as_array().expect("list");
    assert!(cases.len() >= 8, "expected the full prompt table");
    for c in cases {
        let prompt = c["prompt"].as_str().unwrap();
        let want: Vec<i64> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(e.tokenize(prompt).unwrap(), want, "prompt {prompt:?}");
    }
}

#[test]
fn text_embeddings_equal_transformers() {
    let e = engine();
    let g = load_golden("text_embeddings.safetensors");
    let prompts = ["", "a red circle above a blue square"];
    let ids = g["input_ids"].i64();
    for (i, p) in prompts.iter().enumerate() {
        assert_eq!(
            e.tokenize(p).unwrap(),
            ids[i * 77..(i + 1) * 77],
            "ids of {p:?}"
        );
    }
    let (shape, emb) = e.encode_prompts(&prompts).unwrap();
    assert_eq!(shape, g["last_hidden_state"].shape);
    assert_close(
        "text encoder",
        &emb,
        &g["last_hidden_state"].data,
        MODEL_TOL,
    );
}

fn adapter(name: &str, strength: f32) -> AdapterRef {
    AdapterRef {
        adapter: engine()
            .load_adapter(&assets().join("adapters").join(name))
            .expect("adapter loads"),
        strength,
    }
}

fn unet_out(adapters: &[AdapterRef]) -> Vec<f32> {
    let e = engine();
    let g = load_golden("unet.safetensors");
    let lora = e.compose(adapters).unwrap();
    e.unet_forward(
        &g["sample"].shape,
        &g["sample"].f32(),
        &g["timestep"].f32(),
        &g["encoder_hidden_states"].shape,
        &g["encoder_hidden_states"].f32(),
        &lora,
    )
    .unwrap()
}

#[test]
fn unet_base_and_adapters_equal_peft() {
    let g = load_golden("unet.safetensors");
    let base = unet_out(&[]);
    assert_close("unet base", &base, &g["out_base"].data, MODEL_TOL);
    let r4 = unet_out(&[adapter("r4.safetensors", 1.0)]);
    assert_close("unet r4", &r4, &g["out_r4"].data, MODEL_TOL);
    // The adapter must matter, or this test proves nothing.
    assert!(max_abs_diff(&r4, &g["out_base"].data) > 1e-2);
    let r8 = unet_out(&[adapter("r8.safetensors", 1.0)]);
    assert_close("unet r8 (alpha 16)", &r8, &g["out_r8"].data, MODEL_TOL);
    let both = unet_out(&[
        adapter("r4.safetensors", 0.7),
        adapter("r8.safetensors", 0.5),
    ]);
    assert_close(
        "unet r4x0.7 + r8x0.5",
        &both,
        &g["out_r4_x0.7_r8_x0.5"].data,
        MODEL_TOL,
    );
    let zero = unet_out(&[adapter("r4.safetensors", 0.0)]);
    assert_eq!(zero, base, "strength 0 must be exactly the base model");
    assert_close("unet r4x0", &zero, &g["out_r4_x0"].data, MODEL_TOL);
    let kohya = unet_out(&[adapter("r4_kohya.safetensors", 1.0)]);
    assert_close(
        "unet kohya(LDM names) r4",
        &kohya,
        &g["out_r4"].data,
        MODEL_TOL,
    );
}

#[test]
fn adapter_switch_reuses_the_session() {
    // Alternate adapters on one engine: each result still equals its golden.
    let g = load_golden("unet.safetensors");
    for _ in 0..2 {
        assert_close(
            "r8",
            &unet_out(&[adapter("r8.safetensors", 1.0)]),
            &g["out_r8"].data,
            MODEL_TOL,
        );
        assert_close("base", &unet_out(&[]), &g["out_base"].data, MODEL_TOL);
        assert_close(
            "r4",
            &unet_out(&[adapter("r4.safetensors", 1.0)]),
            &g["out_r4"].data,
            MODEL_TOL,
        );
    }
}

#[test]
fn merged_weights_equal_peft_fuse() {
    let e = engine();
    let bundle = e.bundle();
    let lora = e.compose(&[adapter("r4.safetensors", 1.0)]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged.safetensors");
    let n =
        dpoimg::lora::merge_into_unet(&bundle.path(&bundle.manifest().unet.weights), &lora, &out)
            .unwrap();
    assert_eq!(n, bundle.manifest().unet.lora.modules.len());
    let want = load_golden("merged_r4.safetensors");
    let bytes = std::fs::read(&out).unwrap();
    let got = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut checked = 0;
    for (k, w) in &want {
        let v = got
            .tensor(k)
            .unwrap_or_else(|_| panic!("merged file lacks {k}"));
        let vals: Vec<f32> = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let d = max_abs_diff(&vals, &w.data);
        assert!(d <= 1e-5, "{k}: max |diff| {d:.3e}");
        checked += 1;
    }
    assert!(checked > 50, "compared {checked} tensors");
}

/// Replays the reference's noise tensors in order and checks none is left over.
struct Replay {
    tensors: Vec<Vec<f32>>,
    next: usize,
}

impl NoiseSource for Replay {
    fn fill_normal(&mut self, out: &mut [f32]) {
        let t = self
            .tensors
            .get(self.next)
            .unwrap_or_else(|| panic!("noise draw {} not in the golden", self.next));
        assert_eq!(
            t.len(),
            out.len(),
            "noise draw {} has the wrong size",
            self.next
        );
        out.copy_from_slice(t);
        self.next += 1;
    }
}

#[test]
fn txt2img_equals_diffusers_pipeline() {
    let e = engine();
    let cases = load_json("txt2img.json");
    let g = load_golden("txt2img.safetensors");
    let cases = cases.as_array().expect("list");
    assert!(cases.len() >= 6);
    for c in cases {
        let name = c["case"].as_str().unwrap();
        let mut req = GenerateRequest::new(c["prompt"].as_str().unwrap());
        req.negative_prompt = c["negative_prompt"].as_str().unwrap_or("").to_string();
        req.steps = Some(c["steps"].as_u64().unwrap() as u32);
        req.guidance = Some(c["guidance"].as_f64().unwrap() as f32);
        req.sampler = Some(
            c["sampler"]
                .as_str()
                .unwrap()
                .parse::<SamplerKind>()
                .unwrap(),
        );
        req.width = Some(c["width"].as_u64().unwrap() as u32);
        req.height = Some(c["height"].as_u64().unwrap() as u32);
        req.count = c["count"].as_u64().unwrap() as u32;
        if let Some(a) = c["adapter"].as_str() {
            req.adapters.push(adapter(a, 1.0));
        }
        let init = g[&format!("{name}.init_latents")].f32();
        // The reference drew its latents with torch.randn(generator=manual_seed(latents_seed)):
        // the documented RNG must give the same numbers, so `--seed` reproduces diffusers.
        let seed = c["latents_seed"].as_u64().unwrap();
        let seeded = dpoimg::rng::TorchRng::new(seed).randn(init.len());
        let d = seeded
            .iter()
            .zip(&init)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            d <= 1e-6,
            "{name}: TorchRng({seed}) differs from torch.randn by {d:e}"
        );
        req.init_latents = Some(init);
        let mut noise = Replay {
            tensors: (0..)
                .map_while(|k| g.get(&format!("{name}.noise.{k}")).map(|t| t.f32()))
                .collect(),
            next: 0,
        };
        let out = e
            .generate_with_noise(&req, &mut noise, &mut |_| true, &CancelToken::new())
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(noise.next, noise.tensors.len(), "{name}: noise draws used");
        assert_close_scaled(
            &format!("{name} latents"),
            &out.latents,
            &g[&format!("{name}.final_latents")].data,
            MODEL_TOL,
        );
        assert_close(
            &format!("{name} image"),
            &out.pixels,
            &g[&format!("{name}.image")].data,
            MODEL_TOL,
        );
    }
}

#[test]
fn same_seed_same_image_and_cancel_works() {
    let e = engine();
    let mut req = GenerateRequest::new("a red circle above a blue square");
    req.seed = 42;
    req.steps = Some(3);
    let a = e
        .generate(&req, &mut |_| true, &CancelToken::new())
        .unwrap();
    let b = e
        .generate(&req, &mut |_| true, &CancelToken::new())
        .unwrap();
    assert_eq!(a.images[0].rgb, b.images[0].rgb);
    assert_eq!(a.latents, b.latents);
    req.seed = 43;
    let c = e
        .generate(&req, &mut |_| true, &CancelToken::new())
        .unwrap();
    assert_ne!(a.latents, c.latents);
    // Progress callback returning false cancels.
    let mut calls = 0;
    let r = e.generate(
        &req,
        &mut |p| {
            calls += 1;
            p.step < 1
        },
        &CancelToken::new(),
    );
    assert!(matches!(r, Err(dpoimg::EngineError::Cancelled)), "{r:?}");
    assert!(calls >= 2);
    // A token cancelled from another thread stops the work.
    let token = CancelToken::new();
    let t2 = token.clone();
    std::thread::spawn(move || t2.cancel()).join().unwrap();
    assert!(matches!(
        e.generate(&req, &mut |_| true, &token),
        Err(dpoimg::EngineError::Cancelled)
    ));
}

#[test]
fn engine_is_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<dpoimg::Engine>();
    let e = engine();
    let mut req = GenerateRequest::new("a blue square");
    req.seed = 7;
    req.steps = Some(2);
    let want = e
        .generate(&req, &mut |_| true, &CancelToken::new())
        .unwrap()
        .latents;
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    e.generate(&req, &mut |_| true, &CancelToken::new())
                        .unwrap()
                        .latents
                })
            })
            .collect();
        for h in hs {
            assert_eq!(h.join().unwrap(), want);
        }
    });
}

#[test]
fn vae_encoder_equals_diffusers() {
    use dpoimg::engine::LatentMode;
    let e = engine();
    let g = load_golden("vae_encode.safetensors");
    let shape: [usize; 4] = g["pixels"].shape.clone().try_into().unwrap();
    let (lshape, z) = e
        .encode_images(shape, &g["pixels"].f32(), LatentMode::Mean)
        .unwrap();
    assert_eq!(lshape, g["latents_mean_scaled"].shape);
    assert_close(
        "vae encode (mean)",
        &z,
        &g["latents_mean_scaled"].data,
        MODEL_TOL,
    );
    let (_, z) = e
        .encode_images(shape, &g["pixels"].f32(), LatentMode::Sample { seed: 11 })
        .unwrap();
    assert_close(
        "vae encode (seeded sample)",
        &z,
        &g["latents_sample_seed11_scaled"].data,
        MODEL_TOL,
    );
    assert!(e
        .encode_images([1, 3, 15, 16], &[0.0; 240], LatentMode::Mean)
        .is_err());
}
