//! Diffusion-DPO and SFT losses and gradients against torch autograd
//! (tools/make_loss_goldens.py, train.py's formula).

mod common;

use common::*;
use dpoimg::loss::{dpo_loss, sft_loss};

#[test]
fn dpo_loss_and_gradient_equal_torch() {
    let meta = load_json("loss/dpo.json");
    let g = load_golden("loss/dpo.safetensors");
    let batch = 2 * meta["n_pairs"].as_u64().unwrap() as usize;
    let (model, reference, target) = (
        g["model_pred"].f32(),
        g["ref_pred"].f32(),
        g["target"].f32(),
    );
    for c in meta["cases"].as_array().unwrap() {
        let beta = c["beta"].as_f64().unwrap();
        let key = c["key"].as_str().unwrap();
        let (s, grad) = dpo_loss(&model, &reference, &target, batch, beta).unwrap();
        // Same f32 inputs, both sides reduce in f64: 1e-9 relative on the loss; the gradient is
        // returned in f32, so 1e-6 relative there.
        let want = c["loss"].as_f64().unwrap();
        assert!(
            (s.loss - want).abs() <= 1e-9 * want.abs(),
            "{key}: loss {} vs {want}",
            s.loss
        );
        assert_eq!(s.implicit_acc, c["implicit_acc"].as_f64().unwrap(), "{key}");
        assert!((s.model_mse - c["model_mse"].as_f64().unwrap()).abs() < 1e-7);
        assert!((s.ref_mse - c["ref_mse"].as_f64().unwrap()).abs() < 1e-7);
        let gref = &g[&format!("{key}.grad")];
        let scale = gref.data.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert!(scale > 0.0);
        let d = max_abs_diff(&grad, &gref.data);
        assert!(
            d <= 1e-6 * scale,
            "{key}: grad max diff {d:e} (scale {scale:e})"
        );
        let inside = &g[&format!("{key}.inside")].data;
        let margin: f64 = inside.iter().sum::<f64>() / inside.len() as f64;
        assert!((s.reward_margin - margin).abs() <= 1e-9 * margin.abs().max(1e-3));
    }
    // ln 2 at initialisation (model == reference).
    let (s, _) = dpo_loss(&reference, &reference, &target, batch, 5000.0).unwrap();
    assert!((s.loss - std::f64::consts::LN_2).abs() < 1e-12);
    assert!((meta["init_loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-12);
}

#[test]
fn sft_loss_and_gradient_equal_torch() {
    let meta = load_json("loss/dpo.json");
    let g = load_golden("loss/dpo.safetensors");
    let batch = 2 * meta["n_pairs"].as_u64().unwrap() as usize;
    let (s, grad) = sft_loss(&g["model_pred"].f32(), &g["target"].f32(), batch).unwrap();
    let want = meta["sft_loss"].as_f64().unwrap();
    assert!((s.loss - want).abs() <= 1e-9 * want, "{} vs {want}", s.loss);
    let gref = &g["sft.grad"];
    let scale = gref.data.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert!(max_abs_diff(&grad, &gref.data) <= 1e-6 * scale);
}

#[test]
fn bad_shapes_are_errors() {
    assert!(dpo_loss(&[0.0; 8], &[0.0; 8], &[0.0; 8], 3, 1.0).is_err());
    assert!(dpo_loss(&[0.0; 8], &[0.0; 6], &[0.0; 8], 2, 1.0).is_err());
    assert!(dpo_loss(&[0.0; 8], &[0.0; 8], &[0.0; 8], 2, f64::NAN).is_err());
    assert!(sft_loss(&[0.0; 8], &[0.0; 8], 0).is_err());
}
