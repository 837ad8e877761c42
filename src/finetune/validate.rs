//! Held-out preference metrics of an adapter: on fixed draws (timestep and noise per pair and
//! repeat, from a seed), the denoising error of the adapted model and of the base model on the
//! preferred and the rejected image. The batch numbers a run logs are noisy (a few pairs, random
//! timesteps); these are the same quantities averaged over many fixed draws, so two adapters (or
//! an adapter and the base model) compare on exactly the same inputs.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::order::micro_draws;
use super::prepare::prepare;
use super::{DpoConfig, Event, FinetuneError};
use crate::loss::Target;
use crate::train::{Cpu, LoraSet, Tensor, UNet, UNetInput};
use crate::CancelToken;

/// Averages over every (pair, repeat).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct PairMetrics {
    pub draws: usize,
    /// Fraction of draws where `(m_w − r_w) − (m_l − r_l) < 0`: the adapter denoises the
    /// preferred image better, relative to the base model, than the rejected one.
    pub implicit_acc: f64,
    /// Mean `m_w − r_w`: change of the denoising error on preferred images (negative = better).
    pub preferred_delta: f64,
    /// Mean `m_l − r_l`: the same on rejected images.
    pub rejected_delta: f64,
    /// Mean DPO loss at `beta`.
    pub loss: f64,
}

/// Evaluates `adapter` (None = the base model, all deltas 0) on the pairs `cfg` describes (data,
/// filters, bundle, cache), `repeats` fixed draws per pair from `seed`.
pub fn evaluate(
    cfg: &DpoConfig,
    adapter: Option<&std::path::Path>,
    repeats: usize,
    seed: u64,
    beta: f64,
) -> Result<PairMetrics, FinetuneError> {
    let cancel = CancelToken::new();
    let prep = prepare(cfg, &mut |_: &Event| {}, &cancel)?;
    let be = Arc::new(Cpu::new(cfg.threads));
    let unet = UNet::from_bundle(be.clone(), &prep.bundle)?;
    let lora = match adapter {
        Some(p) => Some(LoraSet::load_file(
            &*be,
            unet.linear_modules(),
            p,
            crate::engine::layers_per_block(&prep.bundle)?,
        )?),
        None => None,
    };
    let target_kind = match prep
        .scheduler
        .prediction_type()
        .map_err(crate::engine::EngineError::from)?
    {
        crate::scheduler::PredictionType::VPrediction => Target::VPrediction,
        _ => Target::Epsilon,
    };
    let alphas = prep.scheduler.alphas_cumprod();
    let t_max = prep.scheduler.num_train_timesteps;
    let (mut acc, mut dw, mut dl, mut loss, mut n) = (0.0, 0.0, 0.0, 0.0, 0usize);
    for (i, pk) in prep.pairs.iter().enumerate() {
        let (shape, w) = prep.cache.latent(&pk.chosen)?;
        let (_, l) = prep.cache.latent(&pk.rejected)?;
        let (eshape, e) = prep.cache.text(&pk.text)?;
        let per = w.len();
        for r in 0..repeats {
            let d = micro_draws(seed, (i * repeats + r) as u64, 1, per, 0..t_max, 0.0);
            let t = d.timesteps[0];
            let x0 = [w.clone(), l.clone()].concat();
            let noise = [d.noise.clone(), d.noise.clone()].concat();
            let mut noisy = vec![0f32; 2 * per];
            for s in 0..2 {
                let rg = s * per..(s + 1) * per;
                crate::scheduler::add_noise(
                    &alphas,
                    &x0[rg.clone()],
                    &noise[rg.clone()],
                    t,
                    &mut noisy[rg],
                );
            }
            let target =
                crate::loss::regression_target(target_kind, &noise, &x0, &[alphas[t]; 2], per);
            let mut xs = vec![2];
            xs.extend(&shape);
            let mut es = vec![2];
            es.extend(&eshape);
            let x = Tensor::from_host(&*be, &noisy, &xs);
            let c = Tensor::from_host(&*be, &[e.clone(), e.clone()].concat(), &es);
            let ts = [t as f32; 2];
            let input = UNetInput {
                sample: &x,
                timesteps: &ts,
                ehs: &c,
            };
            let base = unet.forward(&input, None)?.to_host(&*be);
            let model = match &lora {
                Some(set) => unet.forward(&input, Some(set))?.to_host(&*be),
                None => base.clone(),
            };
            let mse = |p: &[f32], s: usize| {
                p[s * per..(s + 1) * per]
                    .iter()
                    .zip(&target[s * per..(s + 1) * per])
                    .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
                    .sum::<f64>()
                    / per as f64
            };
            let (mw, ml, rw, rl) = (mse(&model, 0), mse(&model, 1), mse(&base, 0), mse(&base, 1));
            let diff = (mw - rw) - (ml - rl);
            if diff < 0.0 {
                acc += 1.0;
            }
            dw += mw - rw;
            dl += ml - rl;
            loss += crate::loss::dpo_from_mse(&[mw], &[ml], &[rw], &[rl], beta);
            n += 1;
        }
    }
    let k = n.max(1) as f64;
    Ok(PairMetrics {
        draws: n,
        implicit_acc: acc / k,
        preferred_delta: dw / k,
        rejected_delta: dl / k,
        loss: loss / k,
    })
}
