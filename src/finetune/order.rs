//! Reproducible randomness without hidden state. Every random choice of a run is a pure function
//! of `(seed, what, index)`: the pair order of epoch `e`, and the timesteps, noise and caption
//! dropout of micro-batch `m`. A checkpoint therefore needs only the step counter to continue
//! with exactly the draws an uninterrupted run would make.

use crate::rng::TorchRng;

/// splitmix64 finaliser: decorrelates nearby `(seed, stream, index)` triples.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const STREAM_ORDER: u64 = 0x006f_7264_6572; // "order"
const STREAM_BATCH: u64 = 0x0062_6174_6368; // "batch"

/// A generator for one `(seed, stream, index)`. mt19937 takes 64-bit seeds here (torch's
/// `manual_seed` semantics), so the mixed value is used whole.
pub fn rng_for(seed: u64, stream: u64, index: u64) -> TorchRng {
    TorchRng::new(mix(mix(seed ^ stream).wrapping_add(index)))
}

/// Uniform integer in `0..n` (Lemire's nearly-divisionless method on 64-bit draws: unbiased).
pub fn below(rng: &mut TorchRng, n: u64) -> u64 {
    assert!(n > 0, "below(0)");
    let threshold = n.wrapping_neg() % n;
    loop {
        let m = u128::from(rng.random_u64()) * u128::from(n);
        if (m as u64) >= threshold {
            return (m >> 64) as u64;
        }
    }
}

/// Pair indices of epoch `epoch` (a Fisher–Yates shuffle of `0..n`).
pub fn epoch_order(seed: u64, epoch: u64, n: usize) -> Vec<usize> {
    let mut rng = rng_for(seed, STREAM_ORDER, epoch);
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = below(&mut rng, i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

/// Which pairs micro-batch `micro` trains on: positions `[micro·b, (micro+1)·b)` of the endless
/// sequence of epochs. Caches the current epoch's order.
pub struct PairOrder {
    seed: u64,
    n: usize,
    epoch: u64,
    order: Vec<usize>,
}

impl PairOrder {
    pub fn new(seed: u64, n: usize) -> Self {
        assert!(n > 0, "PairOrder over no pairs");
        PairOrder {
            seed,
            n,
            epoch: 0,
            order: epoch_order(seed, 0, n),
        }
    }

    /// Pair index at global position `pos`.
    pub fn at(&mut self, pos: u64) -> usize {
        let epoch = pos / self.n as u64;
        if epoch != self.epoch {
            self.epoch = epoch;
            self.order = epoch_order(self.seed, epoch, self.n);
        }
        self.order[(pos % self.n as u64) as usize]
    }

    pub fn batch(&mut self, micro: u64, pairs: usize) -> Vec<usize> {
        let start = micro * pairs as u64;
        (0..pairs as u64).map(|k| self.at(start + k)).collect()
    }
}

/// The draws of one micro-batch of `pairs` pairs with `per` latent values each: one timestep
/// and one noise tensor per pair (shared by its preferred and rejected sample, as in the
/// reference trainer), and which pairs train on the empty prompt.
pub struct MicroDraws {
    pub timesteps: Vec<usize>,
    /// `pairs · per` values.
    pub noise: Vec<f32>,
    pub drop_caption: Vec<bool>,
}

pub fn micro_draws(
    seed: u64,
    micro: u64,
    pairs: usize,
    per: usize,
    timesteps: std::ops::Range<usize>,
    caption_dropout: f64,
) -> MicroDraws {
    let mut rng = rng_for(seed, STREAM_BATCH, micro);
    // `start + below(len)`: the full range [0, T) draws exactly what it always drew
    let span = timesteps.len().max(1) as u64;
    let timesteps = (0..pairs)
        .map(|_| timesteps.start + below(&mut rng, span) as usize)
        .collect();
    let drop_caption = (0..pairs)
        .map(|_| caption_dropout > 0.0 && rng.uniform_f64() < caption_dropout)
        .collect();
    let noise = rng.randn(pairs * per);
    MicroDraws {
        timesteps,
        noise,
        drop_caption,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_order_is_a_permutation_and_differs_by_epoch() {
        let a = epoch_order(7, 0, 50);
        let b = epoch_order(7, 1, 50);
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
        assert_ne!(a, b);
        assert_eq!(a, epoch_order(7, 0, 50));
    }

    #[test]
    fn below_is_uniform_enough() {
        let mut rng = rng_for(1, 2, 3);
        let mut counts = [0usize; 10];
        for _ in 0..100_000 {
            counts[below(&mut rng, 10) as usize] += 1;
        }
        // each bin 10 000 ± 5 sigma (sigma ≈ 95)
        assert!(
            counts.iter().all(|&c| (9_525..=10_475).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn micro_batches_walk_through_epochs() {
        let mut o = PairOrder::new(3, 5);
        let first: Vec<usize> = (0..5).flat_map(|m| o.batch(m, 1)).collect();
        assert_eq!(first, epoch_order(3, 0, 5));
        let second: Vec<usize> = (5..10).flat_map(|m| o.batch(m, 1)).collect();
        assert_eq!(second, epoch_order(3, 1, 5));
        // random access agrees with sequential access
        let mut fresh = PairOrder::new(3, 5);
        assert_eq!(fresh.batch(7, 1), vec![second[2]]);
    }

    #[test]
    fn timestep_ranges_bound_the_draws_and_keep_the_noise() {
        let full = micro_draws(5, 3, 400, 4, 0..1000, 0.0);
        let high = micro_draws(5, 3, 400, 4, 400..1000, 0.0);
        assert!(high.timesteps.iter().all(|t| (400..1000).contains(t)));
        // both ends of the range are reached: the draw is not squeezed into a sub-range
        assert!(high.timesteps.iter().any(|&t| t < 430));
        assert!(high.timesteps.iter().any(|&t| t >= 970));
        assert!(full.timesteps.iter().any(|&t| t < 400));
        // the noise stream does not depend on the range (pairs see the same noise either way)
        assert_eq!(full.noise, high.noise);
        // a one-wide range pins the timestep
        let one = micro_draws(5, 3, 10, 4, 999..1000, 0.0);
        assert!(one.timesteps.iter().all(|&t| t == 999));
    }
}
