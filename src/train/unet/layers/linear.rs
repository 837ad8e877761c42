//! Linear layer (also every 1×1 convolution applied to tokens) with optional LoRA.
//!
//! Forward on `x [rows, in]`: `y = x·Wᵀ + b`, and with LoRA `u = x·Aᵀ`, `y += s·u·Bᵀ`
//! (`s = alpha/rank`, peft's order of operations).

use super::super::super::backend::{Backend, Gemm};
use super::super::super::lora::LoraGrads;
use super::super::super::TrainError;
use super::super::weights::Loader;
use super::Ctx;

pub struct Linear<B: Backend> {
    /// Index in the model's linear-module list (LoRA slot).
    pub id: usize,
    w: B::Buf,
    bias: Option<B::Buf>,
    pub in_features: usize,
    pub out_features: usize,
}

/// What backward needs beyond the input: `u = x·Aᵀ` when LoRA was active.
pub struct LinearCache<B: Backend> {
    u: Option<B::Buf>,
}

impl<B: Backend> LinearCache<B> {
    pub fn lora_active(&self) -> bool {
        self.u.is_some()
    }
}

impl<B: Backend> Linear<B> {
    /// Loads `name.weight` (`[out, in]`, or `[out, in, 1, 1]`) and `name.bias` when the file has
    /// one.
    pub fn load(
        ld: &Loader<'_, B>,
        name: &str,
        in_features: usize,
        out_features: usize,
    ) -> Result<Self, TrainError> {
        let w = ld.param(&format!("{name}.weight"), &[out_features, in_features])?;
        let bias_name = format!("{name}.bias");
        let bias = if ld.has(&bias_name) {
            Some(ld.param(&bias_name, &[out_features])?)
        } else {
            None
        };
        Ok(Linear {
            id: ld.register_linear(name, in_features, out_features),
            w,
            bias,
            in_features,
            out_features,
        })
    }

    /// `x [rows, in] → y [rows, out]`.
    pub fn forward(&self, cx: Ctx<'_, B>, x: &B::Buf, rows: usize) -> (B::Buf, LinearCache<B>) {
        let be = cx.be;
        let mut y = be.zeros(rows * self.out_features);
        be.gemm(
            &Gemm::new(rows, self.out_features, self.in_features).trans_b(),
            x,
            &self.w,
            &mut y,
        );
        if let Some(b) = &self.bias {
            be.add_broadcast(&mut y, b, rows, self.out_features, 1);
        }
        let u = cx.lora_for(self.id).map(|p| {
            let mut u = be.zeros(rows * p.rank);
            be.gemm(
                &Gemm::new(rows, p.rank, self.in_features).trans_b(),
                x,
                &p.a,
                &mut u,
            );
            be.gemm(
                &Gemm::new(rows, self.out_features, p.rank)
                    .trans_b()
                    .alpha(p.scale)
                    .accumulate(),
                &u,
                &p.b,
                &mut y,
            );
            u
        });
        (y, LinearCache { u })
    }

    /// Backward for upstream `dy [rows, out]`; `x` is the forward input (read only when LoRA was
    /// active). Adds the LoRA gradients to `grads` and returns `dx` when `want_dx`:
    /// - `dB = s·dyᵀ·u` (`[out, rank]`), since `y` depends on B through `s·u·Bᵀ`;
    /// - `du = s·dy·B`, then `dA = duᵀ·x` (`[rank, in]`), since `u = x·Aᵀ`;
    /// - `dx = dy·W + du·A` (the frozen path plus the low-rank path).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        cx: Ctx<'_, B>,
        x: Option<&B::Buf>,
        cache: &LinearCache<B>,
        dy: &B::Buf,
        rows: usize,
        want_dx: bool,
        grads: &mut LoraGrads<B>,
    ) -> Option<B::Buf> {
        let be = cx.be;
        let mut dx = want_dx.then(|| {
            let mut dx = be.zeros(rows * self.in_features);
            be.gemm(
                &Gemm::new(rows, self.in_features, self.out_features),
                dy,
                &self.w,
                &mut dx,
            );
            dx
        });
        if let Some(u) = &cache.u {
            let p = cx
                .lora_for(self.id)
                .expect("LoRA active in forward but not in backward");
            let x = x.expect("LoRA backward needs the layer input");
            let (r, inf, outf) = (p.rank, self.in_features, self.out_features);
            let mut db = be.zeros(outf * r);
            be.gemm(
                &Gemm::new(outf, r, rows).trans_a().alpha(p.scale),
                dy,
                u,
                &mut db,
            );
            let mut du = be.zeros(rows * r);
            be.gemm(&Gemm::new(rows, r, outf).alpha(p.scale), dy, &p.b, &mut du);
            let mut da = be.zeros(r * inf);
            be.gemm(&Gemm::new(r, inf, rows).trans_a(), &du, x, &mut da);
            if let Some(dx) = dx.as_mut() {
                be.gemm(&Gemm::new(rows, inf, r).accumulate(), &du, &p.a, dx);
            }
            grads.add(be, self.id, &da, &db);
        }
        dx
    }
}
