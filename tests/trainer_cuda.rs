//! The trainer's CUDA backend (feature `cuda`) against the CPU backend and the torch goldens.
//!
//! - every `Backend` primitive on CUDA equals the CPU backend to `‖cuda − cpu‖ / ‖cpu‖ ≤ 1e-5`
//!   (f32 both; the CPU backend is itself proven against torch in tests/trainer_layers.rs), on
//!   shapes that hit the kernels' edge cases (sizes not multiples of the tile or block, several
//!   grid-stride passes, chunked convolution and attention via a small scratch limit, GEMMs with
//!   transposes, strides, offsets, padded leading dimensions, accumulation and k = 0);
//! - determinism: the same call twice gives the same bits;
//! - the whole tiny UNet on CUDA: forward equals diffusers (`out_base`) to 1e-4 max abs, and for
//!   the r4 and r8 adapters the output, EVERY LoRA gradient and d(sample) equal torch+peft to 1e-4
//!   relative (the tolerances of tests/trainer_unet.rs), with and without checkpointing; the
//!   SD-2-style UNet likewise.
//!
//! On a machine without an NVIDIA driver (CI) `Cuda::new(0)` fails and every GPU test prints why
//! and returns; the one test that needs no GPU checks that this failure is a clear error naming
//! the missing library rather than a panic. `scripts/device-check.sh` runs this file on a GPU.
#![cfg(feature = "cuda")]

mod common;

use common::{assets, bundle_dir, golden_path, load_golden, max_abs, Golden};
use dpoimg::train::backend::{AttnDims, Backend, ConvGeom, Gemm, GroupNormDims};
use dpoimg::train::lora::HostPairs;
use dpoimg::train::{Cpu, Cuda, LoraGrads, LoraSet, Tensor, UNet, UNetInput};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

const OP_TOL: f64 = 1e-5;
const PARITY_TOL: f64 = 1e-4;
const GRAD_TOL: f64 = 1e-4;

/// The CUDA backend on device 0, or `None` (with the reason printed once) when there is none.
fn gpu() -> Option<Arc<Cuda>> {
    static BE: OnceLock<Result<Arc<Cuda>, String>> = OnceLock::new();
    match BE.get_or_init(|| Cuda::new(0).map(Arc::new).map_err(|e| e.to_string())) {
        Ok(b) => Some(b.clone()),
        Err(e) => {
            require_cuda_or_skip(&format!("no usable CUDA device ({e})"));
            None
        }
    }
}

/// Skips (printing why), unless `DPOIMG_REQUIRE_CUDA=1` (set by scripts/device-check.sh), where a
/// skipped GPU test would be a silent pass: then it fails.
fn require_cuda_or_skip(why: &str) {
    if std::env::var("DPOIMG_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
        panic!("DPOIMG_REQUIRE_CUDA=1 but {why}");
    }
    eprintln!("SKIPPED: {why}");
}

fn cpu() -> &'static Cpu {
    static BE: OnceLock<Cpu> = OnceLock::new();
    BE.get_or_init(|| Cpu::new(2))
}

#[test]
fn missing_cuda_is_a_clear_error_not_a_panic() {
    let missing = dpoimg::train::backend::cuda_missing_libraries();
    match Cuda::new(0) {
        Ok(be) => {
            assert!(missing.is_empty(), "opened despite missing {missing:?}");
            eprintln!("CUDA present: {}", be.name());
        }
        Err(e) => {
            let msg = e.to_string();
            eprintln!("Cuda::new(0) without a usable GPU: {msg}");
            assert!(msg.starts_with("cuda:0: "), "names the device: {msg}");
            if missing.iter().any(|m| m.contains("libcuda")) {
                assert!(
                    msg.contains("no CUDA driver (libcuda.so.1) found")
                        && msg.contains("--device cpu"),
                    "names the driver and the fix: {msg}"
                );
            }
            // Asking again stays an error (no poisoned state, no panic on the second call).
            assert!(Cuda::new(0).is_err());
            assert!(Cuda::new(7).is_err());
        }
    }
}

/// NVRTC needs no GPU: wherever libnvrtc loads (a GPU machine, or a CPU machine with the
/// nvidia-cuda-nvrtc wheel on LD_LIBRARY_PATH), the kernel module must compile, for the H100/H200
/// architecture and for NVRTC's default, and define every kernel the backend loads.
#[test]
fn kernels_compile_with_nvrtc() {
    use dpoimg::train::backend::cuda::{compile_kernels, kernel_names};
    for cc in [Some((9, 0)), Some((8, 0)), None] {
        match compile_kernels(cc) {
            Err(e) if e.starts_with("no NVRTC") => {
                require_cuda_or_skip(&e);
                return;
            }
            Err(e) => panic!("{cc:?}: {e}"),
            Ok(ptx) => {
                for name in kernel_names() {
                    assert!(
                        ptx.contains(&format!(".entry {name}(")),
                        "{cc:?}: kernel {name} missing from the PTX"
                    );
                }
                eprintln!(
                    "NVRTC {cc:?}: {} kernels, {} bytes of PTX",
                    kernel_names().len(),
                    ptx.len()
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Primitives: CUDA vs CPU.

/// Deterministic pseudo-random values in `[lo, hi)`.
fn rand(n: usize, seed: u32, lo: f32, hi: f32) -> Vec<f32> {
    let mut k = seed.wrapping_mul(2654435761).wrapping_add(12345);
    (0..n)
        .map(|_| {
            k = k.wrapping_mul(1664525).wrapping_add(1013904223);
            lo + (hi - lo) * ((k >> 8) as f32 / 16_777_216.0)
        })
        .collect()
}

fn rel(what: &str, got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (mut num, mut den) = (0f64, 0f64);
    for (&a, &b) in got.iter().zip(want) {
        assert!(a.is_finite(), "{what}: non-finite CUDA value");
        num += (a as f64 - b as f64).powi(2);
        den += (b as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

fn same(what: &str, got: &[f32], want: &[f32]) {
    let e = rel(what, got, want);
    eprintln!("{what}: rel {e:.2e}");
    assert!(e <= OP_TOL, "{what}: relative error {e:.3e} > {OP_TOL:.0e}");
}

/// Runs one primitive on both backends through host vectors.
struct Pair<'a> {
    g: &'a Cuda,
}

impl Pair<'_> {
    fn up(&self, v: &[f32]) -> (<Cuda as Backend>::Buf, Vec<f32>) {
        (self.g.upload(v), cpu().upload(v))
    }
    fn cmp(&self, what: &str, g: &<Cuda as Backend>::Buf, c: &Vec<f32>) {
        assert_eq!(self.g.len(g), c.len(), "{what}: length");
        same(what, &self.g.download(g), &cpu().download(c));
    }
}

#[test]
fn gemm_variants_equal_cpu() {
    let Some(g) = gpu() else { return };
    let p = Pair { g: &g };
    // (m, n, k, trans_a, trans_b, batch, extra leading-dimension padding, offsets, alpha, beta)
    // (m, n, k), (trans_a, trans_b), batch, extra leading-dimension padding, offset, alpha,
    // accumulate
    type Case = (
        (usize, usize, usize),
        (bool, bool),
        usize,
        usize,
        usize,
        f32,
        bool,
    );
    let cases: &[Case] = &[
        ((1, 1, 1), (false, false), 1, 0, 0, 1.0, false),
        ((7, 13, 5), (false, false), 1, 0, 0, 1.0, false),
        ((33, 65, 129), (false, true), 1, 0, 0, 0.5, false),
        ((64, 40, 31), (true, false), 3, 2, 5, 1.0, true),
        ((17, 9, 300), (true, true), 4, 3, 1, -2.0, true),
        ((5, 320, 77), (false, true), 2, 0, 7, 1.0, false),
    ];
    for (i, &((m, n, k), (ta, tb), batch, pad, off, alpha, acc)) in cases.iter().enumerate() {
        let mut gm = Gemm::new(m, n, k);
        if ta {
            gm = gm.trans_a();
        }
        if tb {
            gm = gm.trans_b();
        }
        gm.lda += pad;
        gm.ldb += pad;
        gm.ldc += pad;
        gm = gm.alpha(alpha);
        if acc {
            gm = gm.accumulate();
        }
        let ar = if ta { k } else { m };
        let br = if tb { n } else { k };
        // batch strides: A shared (0) in odd cases, B and C dense per batch
        let sa = if i % 2 == 1 { 0 } else { ar * gm.lda };
        gm = gm.batched(batch, sa, br * gm.ldb, m * gm.ldc);
        gm.offset_a = off;
        gm.offset_b = 2 * off;
        gm.offset_c = off;
        let (ea, eb, ec) = gm.extents();
        let (a, ac) = p.up(&rand(ea + 3, 10 + i as u32, -1.0, 1.0));
        let (b, bc) = p.up(&rand(eb, 20 + i as u32, -1.0, 1.0));
        let (mut c, mut cc) = p.up(&rand(ec + 2, 30 + i as u32, -1.0, 1.0));
        g.gemm(&gm, &a, &b, &mut c);
        cpu().gemm(&gm, &ac, &bc, &mut cc);
        p.cmp(&format!("gemm case {i} {gm:?}"), &c, &cc);
    }
    // k = 0: C = beta·C (overwrite → zeros, accumulate → unchanged)
    for acc in [false, true] {
        let mut gm = Gemm::new(3, 4, 0).batched(2, 0, 0, 12);
        if acc {
            gm = gm.accumulate();
        }
        let (a, ac) = p.up(&[0.0]);
        let (mut c, mut cc) = p.up(&rand(24, 99, 0.5, 1.0));
        g.gemm(&gm, &a, &a, &mut c);
        cpu().gemm(&gm, &ac, &ac, &mut cc);
        assert_eq!(g.download(&c), cpu().download(&cc), "gemm k = 0");
    }
}

#[test]
fn elementwise_and_layout_ops_equal_cpu() {
    let Some(g) = gpu() else { return };
    let p = Pair { g: &g };
    // buffers: empty, zeros, round trip, and clones are deep copies (Tensor::buf_mut relies on it)
    assert_eq!(g.len(&g.upload(&[])), 0);
    assert!(g.download(&g.upload(&[])).is_empty());
    assert_eq!(g.download(&g.zeros(0)), Vec::<f32>::new());
    assert_eq!(g.download(&g.zeros(1000)), vec![0.0; 1000]);
    let host = rand(1025, 0, -1.0, 1.0);
    let buf = g.upload(&host);
    assert_eq!(g.download(&buf), host);
    let mut copy = buf.clone();
    g.scale(&mut copy, 2.0);
    assert_eq!(g.download(&buf), host, "a clone must not share memory");
    let n = 300_001; // many blocks, not a multiple of 256
    let (x, xc) = p.up(&rand(n, 1, -6.0, 6.0));
    let (y, yc) = p.up(&rand(n, 2, -1.0, 1.0));
    p.cmp("add", &g.add(&x, &y), &cpu().add(&xc, &yc));
    let (mut a, mut ac) = (x.clone(), xc.clone());
    g.add_assign(&mut a, &y);
    cpu().add_assign(&mut ac, &yc);
    p.cmp("add_assign", &a, &ac);
    g.scale(&mut a, -0.37);
    cpu().scale(&mut ac, -0.37);
    p.cmp("scale", &a, &ac);
    p.cmp("silu", &g.silu(&x), &cpu().silu(&xc));
    p.cmp(
        "silu_backward",
        &g.silu_backward(&x, &y),
        &cpu().silu_backward(&xc, &yc),
    );
    // add_broadcast: linear bias (inner 1), conv bias, time embedding
    for (outer, mid, inner) in [(37, 320, 1), (3, 64, 81), (1, 6, 1000)] {
        let len = outer * mid * inner;
        let (mut t, mut tc) = p.up(&rand(len, 3, -1.0, 1.0));
        let (v, vc) = p.up(&rand(mid, 4, -1.0, 1.0));
        g.add_broadcast(&mut t, &v, outer, mid, inner);
        cpu().add_broadcast(&mut tc, &vc, outer, mid, inner);
        p.cmp(&format!("add_broadcast {outer}x{mid}x{inner}"), &t, &tc);
    }
    for (rows, inner) in [(1, 1), (5, 1000), (320, 77), (3, 70_000)] {
        let (t, tc) = p.up(&rand(rows * inner, 5, -1.0, 1.5));
        p.cmp(
            &format!("sum_inner {rows}x{inner}"),
            &g.sum_inner(&t, rows, inner),
            &cpu().sum_inner(&tc, rows, inner),
        );
    }
    for (batch, rows, cols) in [(1, 1, 1), (3, 33, 65), (2, 320, 64), (2, 7, 1000)] {
        let (t, tc) = p.up(&rand(batch * rows * cols, 6, -1.0, 1.0));
        let (gt, ct) = (
            g.transpose(&t, batch, rows, cols),
            cpu().transpose(&tc, batch, rows, cols),
        );
        assert_eq!(g.download(&gt), cpu().download(&ct), "transpose is a copy");
    }
    let (nn, ca, cb, inner) = (3, 5, 7, 37);
    let (ta, tac) = p.up(&rand(nn * ca * inner, 7, -1.0, 1.0));
    let (tb, tbc) = p.up(&rand(nn * cb * inner, 8, -1.0, 1.0));
    let (cat, catc) = (
        g.concat_channels(&ta, &tb, nn, ca, cb, inner),
        cpu().concat_channels(&tac, &tbc, nn, ca, cb, inner),
    );
    assert_eq!(g.download(&cat), cpu().download(&catc), "concat");
    let (sa, sb) = g.split_channels(&cat, nn, ca, cb, inner);
    assert_eq!(g.download(&sa), cpu().download(&tac), "split a");
    assert_eq!(g.download(&sb), cpu().download(&tbc), "split b");
    for (rows, inner) in [(1, 1), (77, 1280), (5, 333)] {
        let (h, hc) = p.up(&rand(rows * 2 * inner, 9, -5.0, 5.0));
        let (dy, dyc) = p.up(&rand(rows * inner, 10, -1.0, 1.0));
        p.cmp(
            &format!("geglu {rows}x{inner}"),
            &g.geglu(&h, rows, inner),
            &cpu().geglu(&hc, rows, inner),
        );
        p.cmp(
            &format!("geglu_backward {rows}x{inner}"),
            &g.geglu_backward(&h, &dy, rows, inner),
            &cpu().geglu_backward(&hc, &dyc, rows, inner),
        );
    }
    // nearest resize: exact 2x (the UNet), identity, and non-integer factors both ways
    for (nc, hw, out) in [
        (6, (5, 7), (10, 14)),
        (4, (8, 8), (8, 8)),
        (3, (5, 7), (8, 3)),
        (2, (9, 4), (4, 13)),
    ] {
        let (t, tc) = p.up(&rand(nc * hw.0 * hw.1, 11, -1.0, 1.0));
        let (gy, cy) = (
            g.resize_nearest(&t, nc, hw, out),
            cpu().resize_nearest(&tc, nc, hw, out),
        );
        assert_eq!(
            g.download(&gy),
            cpu().download(&cy),
            "resize {hw:?}->{out:?}"
        );
        let (d, dc) = p.up(&rand(nc * out.0 * out.1, 12, -1.0, 1.0));
        let (gd, cd) = (
            g.resize_nearest_backward(&d, nc, hw, out),
            cpu().resize_nearest_backward(&dc, nc, hw, out),
        );
        // same terms in the same order: bit-identical
        assert_eq!(
            g.download(&gd),
            cpu().download(&cd),
            "resize backward {hw:?}->{out:?}"
        );
    }
}

#[test]
fn norms_equal_cpu() {
    let Some(g) = gpu() else { return };
    let p = Pair { g: &g };
    // (n, c, hw, groups): SD's 32 groups, a group larger than one block pass, odd sizes
    for (n, c, hw, groups) in [
        (2, 64, 81, 32),
        (1, 32, 4096, 8),
        (3, 6, 5, 3),
        (2, 4, 1, 1),
    ] {
        let d = GroupNormDims {
            n,
            c,
            hw,
            groups,
            eps: 1e-5,
        };
        // an offset mean checks the two-pass variance
        let (x, xc) = p.up(&rand(n * c * hw, 13, 2.0, 5.0));
        let (ga, gac) = p.up(&rand(c, 14, 0.5, 1.5));
        let (be, bec) = p.up(&rand(c, 15, -0.5, 0.5));
        let (dy, dyc) = p.up(&rand(n * c * hw, 16, -1.0, 1.0));
        for silu in [false, true] {
            let what = format!("group_norm {n}x{c}x{hw}/{groups} silu {silu}");
            let (y, st) = g.group_norm(&x, &d, &ga, &be, silu);
            let (yc, stc) = cpu().group_norm(&xc, &d, &gac, &bec, silu);
            p.cmp(&what, &y, &yc);
            p.cmp(&format!("{what} stats"), &st, &stc);
            p.cmp(
                &format!("{what} backward"),
                &g.group_norm_backward(&x, &st, &ga, &be, &dy, &d, silu),
                &cpu().group_norm_backward(&xc, &stc, &gac, &bec, &dyc, &d, silu),
            );
        }
    }
    for (rows, dim) in [(77, 320), (5, 1280), (3, 7), (1, 1)] {
        let (x, xc) = p.up(&rand(rows * dim, 17, -3.0, 4.0));
        let (ga, gac) = p.up(&rand(dim, 18, 0.5, 1.5));
        let (be, bec) = p.up(&rand(dim, 19, -0.5, 0.5));
        let (dy, dyc) = p.up(&rand(rows * dim, 20, -1.0, 1.0));
        let (y, st) = g.layer_norm(&x, rows, dim, 1e-5, &ga, &be);
        let (yc, stc) = cpu().layer_norm(&xc, rows, dim, 1e-5, &gac, &bec);
        let what = format!("layer_norm {rows}x{dim}");
        p.cmp(&what, &y, &yc);
        p.cmp(&format!("{what} stats"), &st, &stc);
        p.cmp(
            &format!("{what} backward"),
            &g.layer_norm_backward(&x, &st, &ga, &dy, rows, dim),
            &cpu().layer_norm_backward(&xc, &stc, &gac, &dyc, rows, dim),
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn conv(
    n: usize,
    cin: usize,
    (h, w): (usize, usize),
    cout: usize,
    k: usize,
    stride: usize,
    pad: (usize, usize, usize, usize),
) -> ConvGeom {
    ConvGeom {
        n,
        cin,
        h,
        w,
        cout,
        kh: k,
        kw: k,
        stride,
        pad_top: pad.0,
        pad_left: pad.1,
        pad_bottom: pad.2,
        pad_right: pad.3,
    }
}

#[test]
fn convolutions_equal_cpu() {
    let Some(g) = gpu() else { return };
    let p = Pair { g: &g };
    let geoms = [
        conv(2, 4, (8, 8), 32, 3, 1, (1, 1, 1, 1)), // conv_in / resnet
        conv(3, 5, (9, 7), 6, 3, 2, (0, 0, 1, 1)),  // Downsample2D(padding=0)
        conv(2, 8, (9, 9), 8, 3, 2, (1, 1, 1, 1)),  // stride 2, padding 1
        conv(2, 16, (5, 6), 24, 1, 1, (0, 0, 0, 0)), // 1x1 shortcut (pointwise path)
        conv(1, 3, (6, 5), 2, 5, 1, (2, 1, 0, 2)),  // odd kernel, asymmetric padding
    ];
    for (limit, tag) in [(None, "one chunk"), (Some(1), "chunked per sample")] {
        if let Some(l) = limit {
            g.set_scratch_limit(l);
        }
        for (i, geo) in geoms.iter().enumerate() {
            let (x, xc) = p.up(&rand(
                geo.n * geo.cin * geo.h * geo.w,
                21 + i as u32,
                -1.0,
                1.0,
            ));
            let wl = geo.cout * geo.cin * geo.kh * geo.kw;
            let (w, wc) = p.up(&rand(wl, 31 + i as u32, -0.3, 0.3));
            let (b, bc) = p.up(&rand(geo.cout, 41 + i as u32, -0.5, 0.5));
            let what = format!("conv2d {geo:?} ({tag})");
            p.cmp(
                &what,
                &g.conv2d(&x, &w, None, geo),
                &cpu().conv2d(&xc, &wc, None, geo),
            );
            p.cmp(
                &format!("{what} + bias"),
                &g.conv2d(&x, &w, Some(&b), geo),
                &cpu().conv2d(&xc, &wc, Some(&bc), geo),
            );
            let yl = geo.n * geo.cout * geo.out_h() * geo.out_w();
            let (dy, dyc) = p.up(&rand(yl, 51 + i as u32, -1.0, 1.0));
            p.cmp(
                &format!("{what} backward"),
                &g.conv2d_backward_input(&dy, &w, geo),
                &cpu().conv2d_backward_input(&dyc, &wc, geo),
            );
        }
    }
    g.set_scratch_limit(1 << 26);
}

#[test]
fn attention_equals_cpu_and_is_deterministic() {
    let Some(g) = gpu() else { return };
    let p = Pair { g: &g };
    let dims = [
        (2, 2, 8, 64, 64),   // self-attention on an 8x8 map
        (2, 5, 8, 16, 77),   // cross-attention over 77 text tokens
        (1, 8, 40, 100, 33), // SD-1.5 head width, odd lengths
        (3, 1, 3, 7, 1),     // one key
    ];
    for (limit, tag) in [(None, "one block"), (Some(200), "query blocks")] {
        if let Some(l) = limit {
            g.set_scratch_limit(l);
        }
        for (i, &(batch, heads, dim_head, q_len, kv_len)) in dims.iter().enumerate() {
            let d = AttnDims {
                batch,
                heads,
                dim_head,
                q_len,
                kv_len,
                scale: 1.0 / (dim_head as f32).sqrt(),
            };
            let c = heads * dim_head;
            let s = 30 * i as u32;
            let (q, qc) = p.up(&rand(batch * q_len * c, s + 1, -2.0, 2.0));
            let (k, kc) = p.up(&rand(batch * kv_len * c, s + 2, -2.0, 2.0));
            let (v, vc) = p.up(&rand(batch * kv_len * c, s + 3, -1.0, 1.0));
            let (d_o, doc) = p.up(&rand(batch * q_len * c, s + 4, -1.0, 1.0));
            let what = format!("attention {d:?} ({tag})");
            let (o, lse) = g.attention(&q, &k, &v, &d);
            let (oc, lsec) = cpu().attention(&qc, &kc, &vc, &d);
            p.cmp(&what, &o, &oc);
            p.cmp(&format!("{what} lse"), &lse, &lsec);
            let (dq, dk, dv) = g.attention_backward(&q, &k, &v, &o, &lse, &d_o, &d);
            let (dqc, dkc, dvc) = cpu().attention_backward(&qc, &kc, &vc, &oc, &lsec, &doc, &d);
            p.cmp(&format!("{what} dq"), &dq, &dqc);
            p.cmp(&format!("{what} dk"), &dk, &dkc);
            p.cmp(&format!("{what} dv"), &dv, &dvc);
            // determinism: the same call, the same bits
            let (dq2, dk2, dv2) = g.attention_backward(&q, &k, &v, &o, &lse, &d_o, &d);
            assert_eq!(
                g.download(&dq),
                g.download(&dq2),
                "{what}: dq deterministic"
            );
            assert_eq!(
                g.download(&dk),
                g.download(&dk2),
                "{what}: dk deterministic"
            );
            assert_eq!(
                g.download(&dv),
                g.download(&dv2),
                "{what}: dv deterministic"
            );
        }
    }
    g.set_scratch_limit(1 << 26);
}

// ---------------------------------------------------------------------------------------------
// The whole UNet on CUDA against the torch goldens (as tests/trainer_unet.rs does on the CPU).

fn rel_golden(got: &[f32], want: &Golden) -> f64 {
    assert_eq!(got.len(), want.data.len(), "length");
    let (mut num, mut den) = (0f64, 0f64);
    for (&a, &b) in got.iter().zip(&want.data) {
        num += (a as f64 - b).powi(2);
        den += b * b;
    }
    (num / den.max(1e-30)).sqrt()
}

fn t(be: &Cuda, g: &Golden) -> Tensor<Cuda> {
    Tensor::from_host(be, &g.f32(), &g.shape)
}

/// forward_train + backward of sum(out · G) on CUDA against the `prefix.*` goldens.
fn check_grads(
    be: &Cuda,
    unet: &UNet<Cuda>,
    g: &HashMap<String, Golden>,
    prefix: &str,
    lora: &LoraSet<Cuda>,
    recompute: bool,
) {
    let (x, c) = (t(be, &g["sample"]), t(be, &g["encoder_hidden_states"]));
    let ts = g["timestep"].f32();
    let input = UNetInput {
        sample: &x,
        timesteps: &ts,
        ehs: &c,
    };
    let (out, cache) = unet.forward_train(&input, Some(lora), recompute).unwrap();
    let out_err = max_abs(&out.to_host(be), &g[&format!("{prefix}.out")].f32());
    eprintln!("cuda {prefix} (recompute {recompute}): out max |diff| vs torch+peft {out_err:.2e}");
    assert!(
        out_err <= PARITY_TOL,
        "{prefix}: out differs by {out_err:.2e}"
    );
    let mut grads = LoraGrads::zeros(be, lora);
    let d_sample = unet
        .backward(cache, &t(be, &g["g"]), Some(lora), &mut grads)
        .unwrap();
    let got = grads.to_host(be, "unet.");
    let gp = format!("{prefix}.grad.");
    let want: BTreeSet<String> = g
        .keys()
        .filter_map(|k| k.strip_prefix(&gp).map(String::from))
        .collect();
    let have: BTreeSet<String> = got.keys().cloned().collect();
    let lora_names: BTreeSet<String> = lora.to_host(be, "unet.").into_keys().collect();
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
        assert!(
            v.iter().any(|&x| x != 0.0),
            "{prefix}: zero gradient for {k}"
        );
        let e = rel_golden(v, &g[&format!("{gp}{k}")]);
        if e > worst.0 {
            worst = (e, k.clone());
        }
        assert!(e <= GRAD_TOL, "{prefix}: d {k}: relative error {e:.3e}");
    }
    let ds = rel_golden(&d_sample.to_host(be), &g[&format!("{prefix}.d_sample")]);
    eprintln!(
        "cuda {prefix}: {} LoRA gradients, worst relative error {:.2e} ({}); d sample {ds:.2e}",
        got.len(),
        worst.0,
        worst.1
    );
    assert!(ds <= GRAD_TOL, "{prefix}: d sample relative error {ds:.3e}");
}

fn tiny(be: &Arc<Cuda>) -> UNet<Cuda> {
    UNet::load(
        be.clone(),
        &bundle_dir().join("unet_config.json"),
        &bundle_dir().join("unet.safetensors"),
    )
    .expect("tiny UNet loads on CUDA")
}

#[test]
fn tiny_unet_forward_and_lora_gradients_equal_torch() {
    let Some(be) = gpu() else { return };
    let g = load_golden("trainer/unet_tiny.safetensors");
    let unet = tiny(&be);
    let (x, c) = (t(&be, &g["sample"]), t(&be, &g["encoder_hidden_states"]));
    let ts = g["timestep"].f32();
    let input = UNetInput {
        sample: &x,
        timesteps: &ts,
        ehs: &c,
    };
    let base = unet.forward(&input, None).unwrap().to_host(&*be);
    let d = max_abs(&base, &g["out_base"].f32());
    eprintln!("cuda trainer vs diffusers, base: max |diff| {d:.2e}");
    assert!(d <= PARITY_TOL, "base: {d:.2e}");
    // and against the CPU backend on the same weights
    let cpu_unet = UNet::load(
        Arc::new(Cpu::new(2)),
        &bundle_dir().join("unet_config.json"),
        &bundle_dir().join("unet.safetensors"),
    )
    .unwrap();
    let cb = cpu_unet.backend();
    let cx = Tensor::from_host(cb, &g["sample"].f32(), &g["sample"].shape);
    let cc = Tensor::from_host(
        cb,
        &g["encoder_hidden_states"].f32(),
        &g["encoder_hidden_states"].shape,
    );
    let cpu_base = cpu_unet
        .forward(
            &UNetInput {
                sample: &cx,
                timesteps: &ts,
                ehs: &cc,
            },
            None,
        )
        .unwrap()
        .to_host(cb);
    let d = max_abs(&base, &cpu_base);
    eprintln!("cuda vs cpu trainer, base: max |diff| {d:.2e}");
    assert!(d <= 1e-5, "cuda vs cpu base forward: {d:.2e}");
    for (name, scale) in [("r4", 1.0f32), ("r8", 2.0)] {
        let lora = unet
            .load_lora(&assets().join(format!("adapters/{name}.safetensors")))
            .unwrap();
        assert!(lora.iter().all(|(_, _, p)| p.scale == scale));
        check_grads(&be, &unet, &g, name, &lora, false);
    }
    let r4 = unet
        .load_lora(&assets().join("adapters/r4.safetensors"))
        .unwrap();
    check_grads(&be, &unet, &g, "r4", &r4, true);
}

#[test]
fn sd2_style_unet_equals_torch() {
    let Some(be) = gpu() else { return };
    let unet = UNet::load(
        be.clone(),
        &golden_path("trainer/unet_sd2like_config.json"),
        &golden_path("trainer/unet_sd2like_weights.safetensors"),
    )
    .expect("SD-2-like UNet loads on CUDA");
    let g = load_golden("trainer/unet_sd2like.safetensors");
    let (x, c) = (t(&be, &g["sample"]), t(&be, &g["encoder_hidden_states"]));
    let ts = g["timestep"].f32();
    let input = UNetInput {
        sample: &x,
        timesteps: &ts,
        ehs: &c,
    };
    let base = unet.forward(&input, None).unwrap().to_host(&*be);
    let d = max_abs(&base, &g["out_base"].f32());
    eprintln!("cuda sd2like base vs diffusers: max |diff| {d:.2e}");
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
    let lora = LoraSet::from_host(&*be, unet.linear_modules(), &pairs).unwrap();
    check_grads(&be, &unet, &g, "lora", &lora, false);
}
