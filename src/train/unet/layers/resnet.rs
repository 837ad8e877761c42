//! diffusers `ResnetBlock2D` (default time-embedding mode, SiLU):
//! `h = conv1(silu(GN1(x))) + time_emb_proj(silu(emb))`, `y = conv2(silu(GN2(h)))`,
//! `out = (shortcut(x) + y) / output_scale_factor`. Dropout is the identity (p = 0 in SD training).

use super::super::super::backend::Backend;
use super::super::super::lora::LoraGrads;
use super::super::super::tensor::Tensor;
use super::super::super::TrainError;
use super::super::weights::Loader;
use super::{Conv2d, Ctx, GroupNorm, Linear, LinearCache};

pub struct Resnet<B: Backend> {
    norm1: GroupNorm<B>,
    conv1: Conv2d<B>,
    pub time_emb_proj: Option<Linear<B>>,
    norm2: GroupNorm<B>,
    conv2: Conv2d<B>,
    conv_shortcut: Option<Conv2d<B>>,
    out_scale: f32,
    pub cin: usize,
    pub cout: usize,
}

/// The two GroupNorm inputs and their statistics; the SiLU inputs are recomputed from them in
/// backward (fused GroupNorm+SiLU), and convolutions need no activations for their input
/// gradient.
pub struct ResnetCache<B: Backend> {
    x: Tensor<B>,
    st1: B::Buf,
    h: B::Buf,
    st2: B::Buf,
    ct: Option<LinearCache<B>>,
}

impl<B: Backend> Resnet<B> {
    /// `temb`: width of the (already SiLU'd) time embedding, None for a block without one.
    pub fn load(
        ld: &Loader<'_, B>,
        cin: usize,
        cout: usize,
        temb: Option<usize>,
        groups: usize,
        eps: f32,
        out_scale: f32,
    ) -> Result<Self, TrainError> {
        Ok(Resnet {
            norm1: GroupNorm::load(ld, "norm1", cin, groups, eps)?,
            conv1: Conv2d::load(ld, "conv1", cin, cout, 3, 1, [1; 4])?,
            time_emb_proj: temb
                .map(|t| Linear::load(ld, "time_emb_proj", t, cout))
                .transpose()?,
            norm2: GroupNorm::load(ld, "norm2", cout, groups, eps)?,
            conv2: Conv2d::load(ld, "conv2", cout, cout, 3, 1, [1; 4])?,
            conv_shortcut: (cin != cout)
                .then(|| Conv2d::load(ld, "conv_shortcut", cin, cout, 1, 1, [0; 4]))
                .transpose()?,
            out_scale,
            cin,
            cout,
        })
    }

    /// `x [n, cin, h, w]`, `emb_act [n, temb]` (= SiLU of the time embedding) → `[n, cout, h, w]`.
    pub fn forward(
        &self,
        cx: Ctx<'_, B>,
        x: &Tensor<B>,
        emb_act: Option<&Tensor<B>>,
    ) -> (Tensor<B>, ResnetCache<B>) {
        let be = cx.be;
        let s = x.shape();
        let (n, h, w) = (s[0], s[2], s[3]);
        let hw = h * w;
        let (a, st1) = self.norm1.forward(be, x.buf(), n, hw, true);
        let (mut hb, _, _) = self.conv1.forward(be, &a, n, h, w);
        drop(a);
        let ct = self.time_emb_proj.as_ref().map(|lin| {
            let e = emb_act.expect("resnet with time_emb_proj needs the time embedding");
            let (t, ct) = lin.forward(cx, e.buf(), n);
            be.add_broadcast(&mut hb, &t, 1, n * self.cout, hw);
            ct
        });
        let (b2, st2) = self.norm2.forward(be, &hb, n, hw, true);
        let (mut y, _, _) = self.conv2.forward(be, &b2, n, h, w);
        drop(b2);
        match &self.conv_shortcut {
            Some(sc) => be.add_assign(&mut y, &sc.forward(be, x.buf(), n, h, w).0),
            None => be.add_assign(&mut y, x.buf()),
        }
        if self.out_scale != 1.0 {
            be.scale(&mut y, 1.0 / self.out_scale);
        }
        let cache = ResnetCache {
            x: x.clone(),
            st1,
            h: hb,
            st2,
            ct,
        };
        (Tensor::new(be, y, &[n, self.cout, h, w]), cache)
    }

    /// Returns `dx` and, when `want_demb`, the gradient w.r.t. `emb_act`. The time embedding is
    /// added to every pixel of a channel, so its gradient is `dh` summed over the pixels; it is
    /// computed only when a LoRA on `time_emb_proj` or upstream of it needs it.
    pub fn backward(
        &self,
        cx: Ctx<'_, B>,
        c: &ResnetCache<B>,
        emb_act: Option<&Tensor<B>>,
        dout: &B::Buf,
        want_demb: bool,
        grads: &mut LoraGrads<B>,
    ) -> (B::Buf, Option<B::Buf>) {
        let be = cx.be;
        let s = c.x.shape();
        let (n, h, w) = (s[0], s[2], s[3]);
        let hw = h * w;
        let mut d = dout.clone();
        if self.out_scale != 1.0 {
            be.scale(&mut d, 1.0 / self.out_scale);
        }
        let db2 = self.conv2.backward(be, &d, n, h, w);
        let dh = self.norm2.backward(be, &c.h, &c.st2, &db2, n, hw, true);
        drop(db2);
        let mut demb = None;
        if let (Some(lin), Some(ct)) = (&self.time_emb_proj, &c.ct) {
            if ct.lora_active() || want_demb {
                let dt = be.sum_inner(&dh, n * self.cout, hw);
                let e = emb_act.map(|t| t.buf());
                demb = lin.backward(cx, e, ct, &dt, n, want_demb, grads);
            }
        }
        let da = self.conv1.backward(be, &dh, n, h, w);
        drop(dh);
        let mut dx = self.norm1.backward(be, c.x.buf(), &c.st1, &da, n, hw, true);
        match &self.conv_shortcut {
            Some(sc) => be.add_assign(&mut dx, &sc.backward(be, &d, n, h, w)),
            None => be.add_assign(&mut dx, &d),
        }
        (dx, demb)
    }
}
