//! `Engine::generate_batch` (the daemon's batching) against `Engine::generate`: every request of
//! a batch gets the image it gets alone with the same seed. `generate` itself is checked against
//! diffusers in engine_golden.rs, so this ties batched output to the reference too.

mod common;

use common::*;
use dpoimg::lora::AdapterRef;
use dpoimg::scheduler::SamplerKind;
use dpoimg::{CancelToken, EngineError, GenerateRequest};

fn req(prompt: &str, seed: u64, count: u32, sampler: SamplerKind) -> GenerateRequest {
    let mut r = GenerateRequest::new(prompt);
    r.seed = seed;
    r.count = count;
    r.steps = Some(4);
    r.guidance = Some(5.0);
    r.sampler = Some(sampler);
    r
}

fn alone(r: &GenerateRequest) -> dpoimg::Generated {
    engine()
        .generate(r, &mut |_| true, &CancelToken::new())
        .expect("generates alone")
}

/// Largest |difference| of the decoded float pixels and the number of differing 8-bit values.
fn compare(a: &dpoimg::Generated, b: &dpoimg::Generated) -> (f32, usize) {
    assert_eq!(a.pixels.len(), b.pixels.len());
    let d = a
        .pixels
        .iter()
        .zip(&b.pixels)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    let bytes = a
        .images
        .iter()
        .zip(&b.images)
        .map(|(x, y)| x.rgb.iter().zip(&y.rgb).filter(|(p, q)| p != q).count())
        .sum();
    (d, bytes)
}

/// Batched pixels may differ from the solo run only by float reordering inside ONNX Runtime's
/// batched kernels: 1e-5 absolute on [0, 1] pixels (a 1/255 step is 3.9e-3).
const PIXEL_TOL: f32 = 1e-5;

#[test]
fn batched_requests_equal_their_solo_images() {
    let e = engine();
    let r4 = e
        .load_adapter(&assets().join("adapters/r4.safetensors"))
        .unwrap();
    for sampler in [SamplerKind::EulerAncestral, SamplerKind::DpmPp2m] {
        let mut reqs = vec![
            req("a red circle above a blue square", 1, 1, sampler),
            req("a green triangle", 2, 2, sampler),
            req("", 3, 1, sampler),
        ];
        reqs[1].negative_prompt = "blurry".into();
        for r in &mut reqs {
            r.adapters = vec![AdapterRef {
                adapter: r4.clone(),
                strength: 0.7,
            }];
        }
        let cancels: Vec<CancelToken> = (0..reqs.len()).map(|_| CancelToken::new()).collect();
        let mut steps_seen = vec![0u32; reqs.len()];
        let out = e
            .generate_batch(
                &reqs,
                &mut |i, p| {
                    steps_seen[i] = steps_seen[i].max(p.step);
                    true
                },
                &cancels,
            )
            .unwrap();
        assert_eq!(steps_seen, vec![4; 3], "every request sees every step");
        for (i, (r, got)) in reqs.iter().zip(out).enumerate() {
            let got = got.unwrap();
            assert_eq!(
                got.timings.unet_calls, 4,
                "one UNet call per step for the batch"
            );
            let want = alone(r);
            let (d, bytes) = compare(&got, &want);
            eprintln!(
                "{sampler} request {i}: max |pixel diff| {d:.3e}, differing 8-bit values {bytes}"
            );
            assert!(
                d <= PIXEL_TOL,
                "{sampler} request {i}: {d:.3e} > {PIXEL_TOL:.0e}"
            );
            assert_eq!(bytes, 0, "{sampler} request {i}: PNG pixels differ");
        }
    }
}

#[test]
fn incompatible_requests_are_refused_and_cancel_is_per_request() {
    let e = engine();
    let a = req("a", 1, 1, SamplerKind::Ddim);
    let mut b = req("b", 2, 1, SamplerKind::Ddim);
    b.steps = Some(5);
    let cancels = vec![CancelToken::new(), CancelToken::new()];
    let err = e
        .generate_batch(&[a.clone(), b], &mut |_, _| true, &cancels)
        .unwrap_err();
    assert!(err.to_string().contains("differs from request 0"), "{err}");

    // Request 1 leaves at step 2; request 0 still gets its solo image.
    let c = req("c", 3, 1, SamplerKind::Ddim);
    let cancels = vec![CancelToken::new(), CancelToken::new()];
    let out = e
        .generate_batch(
            &[a.clone(), c],
            &mut |i, p| !(i == 1 && p.step == 2),
            &cancels,
        )
        .unwrap();
    assert!(matches!(out[1], Err(EngineError::Cancelled)));
    let (d, bytes) = compare(out[0].as_ref().unwrap(), &alone(&a));
    assert!(
        d <= PIXEL_TOL && bytes == 0,
        "survivor differs: {d:.3e}, {bytes}"
    );

    // All leave: the call stops.
    let cancels = vec![CancelToken::new()];
    let err = e
        .generate_batch(&[a], &mut |_, p| p.step < 1, &cancels)
        .unwrap_err();
    assert!(matches!(err, EngineError::Cancelled), "{err}");
}
