//! Training objectives on the UNet's predictions: Diffusion-DPO and SFT, each with its gradient
//! with respect to the model's prediction (the trainer's backward starts from there), plus the
//! regression target for epsilon- and v-prediction.
//!
//! Diffusion-DPO exactly as SalesforceAIResearch/DiffusionDPO `train.py`: the batch holds the
//! preferred images first and the rejected second, with shared noise ε and timestep t per pair;
//! per sample `m = mean_{C,H,W}(pred − target)²` (model) and `r` (reference = the same UNet with
//! LoRA off); `inside = −β/2 · ((m_w − m_l) − (r_w − r_l))`; `loss = mean(−log σ(inside))`;
//! implicit accuracy = fraction of pairs with `inside > 0`. At initialisation (model = reference)
//! `inside = 0` and the loss is ln 2.

/// What the UNet is trained to predict (the bundle's scheduler `prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Epsilon,
    VPrediction,
}

#[derive(Debug, thiserror::Error)]
pub enum LossError {
    #[error("{what}: expected {expected} values, got {got}")]
    Shape {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error(
        "the batch must hold preferred then rejected samples: an even, non-zero count (got {0})"
    )]
    OddBatch(usize),
    #[error("beta must be finite and > 0 (got {0})")]
    Beta(f64),
}

/// Regression target per sample: ε, or `v = √ᾱ_t·ε − √(1−ᾱ_t)·x₀` (diffusers' `get_velocity`).
/// `alphas_cumprod_t` holds ᾱ_t for each sample; `per` values per sample.
pub fn regression_target(
    target: Target,
    noise: &[f32],
    x0: &[f32],
    alphas_cumprod_t: &[f64],
    per: usize,
) -> Vec<f32> {
    match target {
        Target::Epsilon => noise.to_vec(),
        Target::VPrediction => noise
            .chunks_exact(per)
            .zip(x0.chunks_exact(per))
            .zip(alphas_cumprod_t)
            .flat_map(|((e, x), &a)| {
                let (sa, s1) = (a.sqrt() as f32, (1.0 - a).sqrt() as f32);
                e.iter().zip(x).map(move |(e, x)| sa * e - s1 * x)
            })
            .collect(),
    }
}

/// Per-batch numbers a training log shows.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct LossStats {
    pub loss: f64,
    /// Fraction of pairs where the model improved on the preferred sample more than on the
    /// rejected one, relative to the reference (`inside > 0`).
    pub implicit_acc: f64,
    /// Mean per-sample MSE of the model and of the reference over the whole batch.
    pub model_mse: f64,
    pub ref_mse: f64,
    /// Mean of `inside` = β/2 · (reference-relative improvement on preferred − on rejected): the
    /// implicit reward margin.
    pub reward_margin: f64,
}

fn mse_per_sample(pred: &[f32], target: &[f32], per: usize) -> Vec<f64> {
    pred.chunks_exact(per)
        .zip(target.chunks_exact(per))
        .map(|(p, t)| {
            p.iter()
                .zip(t)
                .map(|(a, b)| {
                    let d = f64::from(*a) - f64::from(*b);
                    d * d
                })
                .sum::<f64>()
                / per as f64
        })
        .collect()
}

fn check(what: &'static str, v: &[f32], expected: usize) -> Result<(), LossError> {
    if v.len() == expected {
        Ok(())
    } else {
        Err(LossError::Shape {
            what,
            expected,
            got: v.len(),
        })
    }
}

/// −log σ(x), stable for large |x|.
fn neg_log_sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        (-x).exp().ln_1p()
    } else {
        -x + x.exp().ln_1p()
    }
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Diffusion-DPO loss and `dL/d(model_pred)`. `model_pred`, `ref_pred` and `target` hold
/// `batch` samples of `per` values each: preferred `[0, batch/2)`, rejected `[batch/2, batch)`.
pub fn dpo_loss(
    model_pred: &[f32],
    ref_pred: &[f32],
    target: &[f32],
    batch: usize,
    beta: f64,
) -> Result<(LossStats, Vec<f32>), LossError> {
    if batch == 0 || !batch.is_multiple_of(2) {
        return Err(LossError::OddBatch(batch));
    }
    if !(beta.is_finite() && beta > 0.0) {
        return Err(LossError::Beta(beta));
    }
    let n = model_pred.len() / batch;
    check("model_pred", model_pred, batch * n)?;
    check("ref_pred", ref_pred, batch * n)?;
    check("target", target, batch * n)?;
    let pairs = batch / 2;
    let m = mse_per_sample(model_pred, target, n);
    let r = mse_per_sample(ref_pred, target, n);
    let mut stats = LossStats {
        model_mse: m.iter().sum::<f64>() / batch as f64,
        ref_mse: r.iter().sum::<f64>() / batch as f64,
        ..Default::default()
    };
    let mut grad = vec![0f32; model_pred.len()];
    for j in 0..pairs {
        let (w, l) = (j, j + pairs);
        let inside = -0.5 * beta * ((m[w] - m[l]) - (r[w] - r[l]));
        stats.loss += neg_log_sigmoid(inside) / pairs as f64;
        stats.reward_margin += inside / pairs as f64;
        if inside > 0.0 {
            stats.implicit_acc += 1.0 / pairs as f64;
        }
        // dL/dinside = −σ(−inside)/P; dinside/dm_w = −β/2, dinside/dm_l = +β/2;
        // dm/dpred = 2(pred − target)/n.  ⇒ dpred_w = σ(−inside)·β/(P·n)·(pred_w − target_w),
        // dpred_l = −σ(−inside)·β/(P·n)·(pred_l − target_l).
        let coef = sigmoid(-inside) * beta / (pairs as f64 * n as f64);
        for (sample, sign) in [(w, 1.0), (l, -1.0)] {
            let range = sample * n..(sample + 1) * n;
            for ((g, p), t) in grad[range.clone()]
                .iter_mut()
                .zip(&model_pred[range.clone()])
                .zip(&target[range])
            {
                *g = (sign * coef * (f64::from(*p) - f64::from(*t))) as f32;
            }
        }
    }
    Ok((stats, grad))
}

/// Supervised fine-tuning baseline (`--sft`): MSE on the preferred half only, and its gradient
/// (zero on the rejected half).
pub fn sft_loss(
    model_pred: &[f32],
    target: &[f32],
    batch: usize,
) -> Result<(LossStats, Vec<f32>), LossError> {
    if batch == 0 || !batch.is_multiple_of(2) {
        return Err(LossError::OddBatch(batch));
    }
    let n = model_pred.len() / batch;
    check("model_pred", model_pred, batch * n)?;
    check("target", target, batch * n)?;
    let half = batch / 2 * n;
    let count = half as f64;
    let mut loss = 0.0;
    let mut grad = vec![0f32; model_pred.len()];
    for i in 0..half {
        let d = f64::from(model_pred[i]) - f64::from(target[i]);
        loss += d * d / count;
        grad[i] = (2.0 * d / count) as f32;
    }
    let m = mse_per_sample(model_pred, target, n);
    Ok((
        LossStats {
            loss,
            model_mse: m.iter().sum::<f64>() / batch as f64,
            ..Default::default()
        },
        grad,
    ))
}

/// The DPO loss from already-reduced per-sample MSEs (`m_w, m_l, r_w, r_l` per pair).
pub fn dpo_from_mse(mw: &[f64], ml: &[f64], rw: &[f64], rl: &[f64], beta: f64) -> f64 {
    let p = mw.len() as f64;
    (0..mw.len())
        .map(|j| neg_log_sigmoid(-0.5 * beta * ((mw[j] - ml[j]) - (rw[j] - rl[j]))) / p)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_scalar_golden() {
        // DESIGN.md: model on winners [0.1, 0.2], on losers [0.1002, 0.1999], reference on
        // winners [0.1001, 0.2001], on losers [0.1002, 0.2], beta 5000.
        let v = dpo_from_mse(
            &[0.1, 0.2],
            &[0.1002, 0.1999],
            &[0.1001, 0.2001],
            &[0.1002, 0.2],
            5000.0,
        );
        assert!((v - 0.634543300219).abs() < 1e-11, "{v}");
    }

    #[test]
    fn stable_for_large_arguments() {
        assert!((neg_log_sigmoid(1000.0)).abs() < 1e-300 + 1e-12);
        assert!((neg_log_sigmoid(-1000.0) - 1000.0).abs() < 1e-9);
    }
}
