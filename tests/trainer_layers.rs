//! Every layer of the trainer's UNet, forward and backward, against torch autograd (+ peft for
//! LoRA): goldens from tools/make_trainer_goldens.py in tests/assets/golden/trainer/.
//!
//! For each case: the layer is built from the golden's weights, run forward on the golden input,
//! then backward on the golden upstream gradient `g`; the output, the input gradient(s) and every
//! LoRA gradient must match with relative error `‖got − want‖ / ‖want‖ ≤ 1e-5` (all in f32, as
//! torch). The set of LoRA gradients must equal the set torch produced.

mod common;

use common::{golden_path, load_golden, load_json, Golden};
use dpoimg::train::backend::Backend;
use dpoimg::train::lora::HostPairs;
use dpoimg::train::unet::layers::{
    sinusoidal_embedding, Attention, Conv2d, Ctx, Downsample, FeedForward, GroupNorm, LayerNorm,
    Linear, Resnet, TimeEmbedding, Transformer2D, TransformerBlock, Upsample,
};
use dpoimg::train::unet::weights::{build, Loader, Weights};
use dpoimg::train::{Cpu, LinearInfo, LoraGrads, LoraSet, Tensor, TrainError};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;

const TOL: f64 = 1e-5;

fn be() -> &'static Cpu {
    static BE: OnceLock<Cpu> = OnceLock::new();
    BE.get_or_init(|| Cpu::new(2))
}

fn goldens() -> &'static HashMap<String, Golden> {
    static G: OnceLock<HashMap<String, Golden>> = OnceLock::new();
    G.get_or_init(|| load_golden("trainer/layers.safetensors"))
}

fn weights() -> &'static Weights {
    static W: OnceLock<Weights> = OnceLock::new();
    W.get_or_init(|| {
        Weights::load(&golden_path("trainer/layers.safetensors")).expect("layer goldens load")
    })
}

fn meta() -> &'static Value {
    static M: OnceLock<Value> = OnceLock::new();
    M.get_or_init(|| load_json("trainer/layers.json"))
}

/// Case names of one layer kind (at least one must exist).
fn cases(kind: &str) -> Vec<String> {
    let names: Vec<String> = meta()
        .as_object()
        .expect("layers.json is an object")
        .iter()
        .filter(|(_, m)| m["kind"] == kind)
        .map(|(k, _)| k.clone())
        .collect();
    assert!(!names.is_empty(), "no golden case of kind {kind}");
    names
}

fn m(case: &str, field: &str) -> usize {
    meta()[case][field]
        .as_u64()
        .unwrap_or_else(|| panic!("{case}.{field}")) as usize
}

fn g(case: &str, key: &str) -> &'static Golden {
    goldens()
        .get(&format!("{case}.{key}"))
        .unwrap_or_else(|| panic!("golden tensor {case}.{key} missing"))
}

fn tensor(case: &str, key: &str) -> Tensor<Cpu> {
    let t = g(case, key);
    Tensor::from_host(be(), &t.f32(), &t.shape)
}

/// Relative error ‖got − want‖ / ‖want‖ (f64), with the max abs difference for the log.
fn check(what: &str, got: &[f32], want: &Golden, tol: f64) {
    assert_eq!(got.len(), want.data.len(), "{what}: length");
    let (mut num, mut den, mut max) = (0f64, 0f64, 0f64);
    for (&a, &b) in got.iter().zip(&want.data) {
        let d = a as f64 - b;
        num += d * d;
        den += b * b;
        max = max.max(d.abs());
    }
    let rel = (num / den.max(1e-30)).sqrt();
    eprintln!("{what}: rel {rel:.2e}, max |diff| {max:.2e}");
    assert!(rel <= tol, "{what}: relative error {rel:.3e} > {tol:.0e}");
}

/// Builds a layer from `<case>.w<sep>...`.
fn load<T>(
    case: &str,
    sub: bool,
    f: impl FnOnce(&Loader<'_, Cpu>) -> Result<T, TrainError>,
) -> (T, Vec<LinearInfo>) {
    let root = if sub {
        format!("{case}.w.")
    } else {
        format!("{case}.w")
    };
    build(be(), weights(), &root, f).unwrap_or_else(|e| panic!("{case}: {e}"))
}

/// The case's peft LoRA tensors as a set for the layer's linear modules.
fn lora(case: &str, linears: &[LinearInfo]) -> LoraSet<Cpu> {
    let (rank, alpha) = (m(case, "rank"), meta()[case]["alpha"].as_f64().unwrap());
    let prefix = format!("{case}.lora.");
    let mut pairs = HostPairs::new();
    for (k, v) in goldens() {
        if let Some(module) = k
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".lora_A.weight"))
        {
            let b = g(case, &format!("lora.{module}.lora_B.weight"));
            pairs.insert(
                module.to_string(),
                (v.f32(), b.f32(), rank, (alpha / rank as f64) as f32),
            );
        }
    }
    assert!(!pairs.is_empty(), "{case}: no LoRA tensors");
    LoraSet::from_host(be(), linears, &pairs).unwrap_or_else(|e| panic!("{case}: {e}"))
}

/// Every LoRA gradient torch computed, and no other, matches.
fn check_grads(case: &str, grads: &LoraGrads<Cpu>) {
    let got = grads.to_host(be(), "");
    let prefix = format!("{case}.grad.");
    let want: BTreeSet<String> = goldens()
        .keys()
        .filter_map(|k| k.strip_prefix(&prefix).map(String::from))
        .collect();
    let have: BTreeSet<String> = got.keys().cloned().collect();
    assert_eq!(have, want, "{case}: LoRA gradient names");
    for (k, v) in &got {
        check(
            &format!("{case} d {k}"),
            v,
            g(case, &format!("grad.{k}")),
            TOL,
        );
    }
}

fn host(t: &Tensor<Cpu>) -> Vec<f32> {
    t.to_host(be())
}

#[test]
fn conv2d() {
    for case in cases("conv2d") {
        let (k, stride, pad) = (m(&case, "kernel"), m(&case, "stride"), m(&case, "padding"));
        let (cin, cout) = (m(&case, "cin"), m(&case, "cout"));
        let (conv, _) = load(&case, false, |ld| {
            Conv2d::load(ld, "", cin, cout, k, stride, [pad; 4])
        });
        let x = g(&case, "x");
        let (n, h, w) = (x.shape[0], x.shape[2], x.shape[3]);
        let (y, _, _) = conv.forward(be(), &x.f32(), n, h, w);
        check(&format!("{case} out"), &y, g(&case, "out"), TOL);
        let dx = conv.backward(be(), &g(&case, "g").f32(), n, h, w);
        check(&format!("{case} dx"), &dx, g(&case, "dx"), TOL);
    }
}

#[test]
fn group_norm() {
    for case in cases("group_norm") {
        let silu = meta()[&case]["silu"].as_bool().unwrap();
        let eps = meta()[&case]["eps"].as_f64().unwrap() as f32;
        let (c, groups) = (m(&case, "channels"), m(&case, "groups"));
        let (gn, _) = load(&case, false, |ld| GroupNorm::load(ld, "", c, groups, eps));
        let x = g(&case, "x");
        let (n, hw) = (x.shape[0], x.shape[2] * x.shape[3]);
        let xb = x.f32();
        let (y, st) = gn.forward(be(), &xb, n, hw, silu);
        check(&format!("{case} out"), &y, g(&case, "out"), TOL);
        let dx = gn.backward(be(), &xb, &st, &g(&case, "g").f32(), n, hw, silu);
        check(&format!("{case} dx"), &dx, g(&case, "dx"), TOL);
    }
}

#[test]
fn silu() {
    for case in cases("silu") {
        let x = g(&case, "x").f32();
        check(&format!("{case} out"), &be().silu(&x), g(&case, "out"), TOL);
        let dx = be().silu_backward(&x, &g(&case, "g").f32());
        check(&format!("{case} dx"), &dx, g(&case, "dx"), TOL);
    }
}

#[test]
fn linear_with_lora() {
    for case in cases("linear") {
        let (inf, outf) = (m(&case, "in_features"), m(&case, "out_features"));
        let module = meta()[&case]["module"].as_str().unwrap().to_string();
        let (lin, linears) = load(&case, true, |ld| Linear::load(ld, &module, inf, outf));
        assert_eq!(linears[0].name, module);
        let set = lora(&case, &linears);
        let cx = Ctx::new(be(), Some(&set));
        let x = g(&case, "x").f32();
        let rows = x.len() / inf;
        let (y, cache) = lin.forward(cx, &x, rows);
        check(&format!("{case} out"), &y, g(&case, "out"), TOL);
        let mut grads = LoraGrads::zeros(be(), &set);
        let dx = lin
            .backward(
                cx,
                Some(&x),
                &cache,
                &g(&case, "g").f32(),
                rows,
                true,
                &mut grads,
            )
            .unwrap();
        check(&format!("{case} dx"), &dx, g(&case, "dx"), TOL);
        check_grads(&case, &grads);
        // Without LoRA the layer is the plain linear map: the LoRA delta must have mattered.
        let (y0, _) = lin.forward(Ctx::new(be(), None), &x, rows);
        assert!(y0.iter().zip(&y).any(|(a, b)| (a - b).abs() > 1e-3));
    }
}

#[test]
fn layer_norm() {
    for case in cases("layer_norm") {
        let dim = m(&case, "dim");
        let eps = meta()[&case]["eps"].as_f64().unwrap() as f32;
        let (ln, _) = load(&case, false, |ld| LayerNorm::load(ld, "", dim, eps));
        let x = g(&case, "x").f32();
        let rows = x.len() / dim;
        let (y, st) = ln.forward(be(), &x, rows);
        check(&format!("{case} out"), &y, g(&case, "out"), TOL);
        let dx = ln.backward(be(), &x, &st, &g(&case, "g").f32(), rows);
        check(&format!("{case} dx"), &dx, g(&case, "dx"), TOL);
    }
}

#[test]
fn attention_self_and_cross_with_lora() {
    for case in cases("attention") {
        let ctx_dim = meta()[&case]["context_dim"].as_u64().map(|v| v as usize);
        let (qd, heads, dh) = (
            m(&case, "query_dim"),
            m(&case, "heads"),
            m(&case, "dim_head"),
        );
        let (attn, linears) = load(&case, true, |ld| {
            Attention::load(ld, qd, ctx_dim, heads, dh)
        });
        let set = lora(&case, &linears);
        let cx = Ctx::new(be(), Some(&set));
        let x = tensor(&case, "x");
        let ctx = ctx_dim.map(|_| tensor(&case, "ctx"));
        let (y, cache) = attn.forward(cx, &x, ctx.as_ref());
        check(&format!("{case} out"), &y, g(&case, "out"), TOL);
        let mut grads = LoraGrads::zeros(be(), &set);
        let dx = attn.backward(cx, &cache, ctx.as_ref(), &g(&case, "g").f32(), &mut grads);
        check(&format!("{case} dx"), &dx, g(&case, "dx"), TOL);
        check_grads(&case, &grads);
        assert_eq!(set.len(), 4, "{case}: LoRA on q, k, v and out");
    }
}

#[test]
fn geglu_feed_forward_with_lora() {
    for case in cases("feed_forward") {
        let dim = m(&case, "dim");
        let (ff, linears) = load(&case, true, |ld| FeedForward::load(ld, dim));
        assert_eq!(ff.inner, m(&case, "inner"));
        let set = lora(&case, &linears);
        let cx = Ctx::new(be(), Some(&set));
        let (y, cache) = ff.forward(cx, &tensor(&case, "x"));
        check(&format!("{case} out"), &y, g(&case, "out"), TOL);
        let mut grads = LoraGrads::zeros(be(), &set);
        let dx = ff.backward(cx, &cache, &g(&case, "g").f32(), &mut grads);
        check(&format!("{case} dx"), &dx, g(&case, "dx"), TOL);
        check_grads(&case, &grads);
    }
}

#[test]
fn upsample_nearest_and_conv() {
    for case in cases("upsample") {
        let c = m(&case, "channels");
        let out_hw = &meta()[&case]["out_hw"];
        let out_hw = (
            out_hw[0].as_u64().unwrap() as usize,
            out_hw[1].as_u64().unwrap() as usize,
        );
        let (up, _) = load(&case, true, |ld| Upsample::load(ld, c));
        let x = tensor(&case, "x");
        let y = up.forward(be(), &x, out_hw);
        check(&format!("{case} out"), &host(&y), g(&case, "out"), TOL);
        let dx = up.backward(be(), &g(&case, "g").f32(), x.shape(), out_hw);
        check(&format!("{case} dx"), &dx, g(&case, "dx"), TOL);
    }
}

#[test]
fn downsample_stride2_conv() {
    for case in cases("downsample") {
        let (c, pad) = (m(&case, "channels"), m(&case, "padding"));
        let (down, _) = load(&case, true, |ld| Downsample::load(ld, c, pad));
        let x = tensor(&case, "x");
        let y = down.forward(be(), &x);
        assert_eq!(y.shape(), g(&case, "out").shape.as_slice(), "{case} shape");
        check(&format!("{case} out"), &host(&y), g(&case, "out"), TOL);
        let dx = down.backward(be(), &g(&case, "g").f32(), x.shape());
        check(&format!("{case} dx"), &dx, g(&case, "dx"), TOL);
    }
}

#[test]
fn timestep_sinusoids() {
    for case in cases("timestep_sinusoid") {
        let flip = meta()[&case]["flip_sin_to_cos"].as_bool().unwrap();
        let shift = meta()[&case]["freq_shift"].as_f64().unwrap() as f32;
        let got = sinusoidal_embedding(&g(&case, "t").f32(), m(&case, "dim"), flip, shift);
        // sin/cos of arguments near 1000 in f32: an absolute bound is the meaningful one here.
        let want = g(&case, "out");
        let max = got
            .iter()
            .zip(&want.data)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        eprintln!("{case}: max |diff| {max:.2e}");
        assert!(max <= 1e-6, "{case}: max |diff| {max:.2e}");
    }
}

#[test]
fn time_embedding_mlp_with_lora() {
    for case in cases("time_embedding") {
        let (inf, dim) = (m(&case, "in_dim"), m(&case, "dim"));
        let (te, linears) = load(&case, true, |ld| TimeEmbedding::load(ld, inf, dim));
        let set = lora(&case, &linears);
        let cx = Ctx::new(be(), Some(&set));
        let (y, cache) = te.forward(cx, &tensor(&case, "x"));
        check(&format!("{case} out"), &host(&y), g(&case, "out"), TOL);
        let mut grads = LoraGrads::zeros(be(), &set);
        let dx = te
            .backward(cx, &cache, &g(&case, "g").f32(), true, &mut grads)
            .unwrap();
        check(&format!("{case} dx"), &dx, g(&case, "dx"), TOL);
        check_grads(&case, &grads);
    }
}

#[test]
fn resnet_block_with_time_embedding() {
    for case in cases("resnet") {
        let (cin, cout, temb, groups) = (
            m(&case, "cin"),
            m(&case, "cout"),
            m(&case, "temb"),
            m(&case, "groups"),
        );
        let eps = meta()[&case]["eps"].as_f64().unwrap() as f32;
        let (res, linears) = load(&case, true, |ld| {
            Resnet::load(ld, cin, cout, Some(temb), groups, eps, 1.0)
        });
        let set = (m(&case, "rank") > 0).then(|| lora(&case, &linears));
        let cx = Ctx::new(be(), set.as_ref());
        let temb_in = g(&case, "temb").f32();
        let emb_act = Tensor::from_host(be(), &be().silu(&temb_in), &g(&case, "temb").shape);
        let (y, cache) = res.forward(cx, &tensor(&case, "x"), Some(&emb_act));
        check(&format!("{case} out"), &host(&y), g(&case, "out"), TOL);
        let mut grads = match &set {
            Some(s) => LoraGrads::zeros(be(), s),
            None => LoraGrads::none(),
        };
        let (dx, demb) = res.backward(
            cx,
            &cache,
            Some(&emb_act),
            &g(&case, "g").f32(),
            true,
            &mut grads,
        );
        check(&format!("{case} dx"), &dx, g(&case, "dx"), TOL);
        // the block applies SiLU to temb itself; the golden gradient is w.r.t. temb before it
        let dtemb = be().silu_backward(&temb_in, &demb.expect("d emb requested"));
        check(&format!("{case} dtemb"), &dtemb, g(&case, "dtemb"), TOL);
        if set.is_some() {
            check_grads(&case, &grads);
        }
    }
}

#[test]
fn transformer_block_with_lora() {
    for case in cases("transformer_block") {
        let (dim, heads, dh, cd) = (
            m(&case, "dim"),
            m(&case, "heads"),
            m(&case, "dim_head"),
            m(&case, "context_dim"),
        );
        let (blk, linears) = load(&case, true, |ld| {
            TransformerBlock::load(ld, dim, heads, dh, cd)
        });
        let set = lora(&case, &linears);
        assert_eq!(
            set.len(),
            8,
            "{case}: LoRA on both attentions' q, k, v, out"
        );
        let cx = Ctx::new(be(), Some(&set));
        let ehs = tensor(&case, "ctx");
        let (y, cache) = blk.forward(cx, &tensor(&case, "x"), &ehs);
        check(&format!("{case} out"), &host(&y), g(&case, "out"), TOL);
        let mut grads = LoraGrads::zeros(be(), &set);
        let dx = blk.backward(cx, &cache, &ehs, &g(&case, "g").f32(), &mut grads);
        check(&format!("{case} dx"), &dx, g(&case, "dx"), TOL);
        check_grads(&case, &grads);
    }
}

#[test]
fn transformer2d_conv_and_linear_projection() {
    for case in cases("transformer2d") {
        let (c, heads, dh, cd, groups, depth) = (
            m(&case, "channels"),
            m(&case, "heads"),
            m(&case, "dim_head"),
            m(&case, "context_dim"),
            m(&case, "groups"),
            m(&case, "layers"),
        );
        let (t2d, linears) = load(&case, true, |ld| {
            Transformer2D::load(ld, c, heads, dh, cd, groups, depth)
        });
        let set = lora(&case, &linears);
        let cx = Ctx::new(be(), Some(&set));
        let ehs = tensor(&case, "ctx");
        let (y, cache) = t2d.forward(cx, &tensor(&case, "x"), &ehs);
        check(&format!("{case} out"), &host(&y), g(&case, "out"), TOL);
        let mut grads = LoraGrads::zeros(be(), &set);
        let dx = t2d.backward(cx, &cache, &ehs, &g(&case, "g").f32(), &mut grads);
        check(&format!("{case} dx"), &dx, g(&case, "dx"), TOL);
        check_grads(&case, &grads);
    }
}

#[test]
fn skip_concatenation() {
    for case in cases("concat") {
        let (a, b) = (g(&case, "a"), g(&case, "b"));
        let (n, ca, cb) = (a.shape[0], m(&case, "ca"), m(&case, "cb"));
        let hw = a.shape[2] * a.shape[3];
        let y = be().concat_channels(&a.f32(), &b.f32(), n, ca, cb, hw);
        check(&format!("{case} out"), &y, g(&case, "out"), 0.0);
        let (da, db) = be().split_channels(&g(&case, "g").f32(), n, ca, cb, hw);
        check(&format!("{case} da"), &da, g(&case, "da"), 0.0);
        check(&format!("{case} db"), &db, g(&case, "db"), 0.0);
    }
}

/// A golden case whose kind no test reads would silently prove nothing.
#[test]
fn every_golden_case_is_tested() {
    let tested = [
        "conv2d",
        "group_norm",
        "silu",
        "linear",
        "layer_norm",
        "attention",
        "feed_forward",
        "upsample",
        "downsample",
        "timestep_sinusoid",
        "time_embedding",
        "resnet",
        "transformer_block",
        "transformer2d",
        "concat",
    ];
    for (case, m) in meta().as_object().unwrap() {
        let kind = m["kind"].as_str().unwrap();
        assert!(
            tested.contains(&kind),
            "golden case {case} (kind {kind}) is not tested"
        );
    }
}
