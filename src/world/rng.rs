//! The world's random numbers: SplitMix64, chosen because it is tiny, fast, fully specified
//! (Steele, Lea & Flood 2014) and so reproducible across platforms and versions without a
//! dependency. Every draw in the world (prompt sampling, layout jitter, annotators) comes from it.

/// A SplitMix64 generator.
#[derive(Debug, Clone)]
pub struct WorldRng {
    state: u64,
}

impl WorldRng {
    pub fn new(seed: u64) -> Self {
        WorldRng { state: seed }
    }

    /// A generator for item `index` of stream `seed`: independent streams per item, so sampling
    /// item 1000 does not require drawing items 0..999 first.
    pub fn for_item(seed: u64, stream: u64, index: u64) -> Self {
        let mut r = WorldRng::new(seed ^ stream.wrapping_mul(0xA24B_AED4_963E_E407));
        let a = r.next_u64();
        WorldRng::new(a ^ index.wrapping_mul(0x9FB2_1C65_1E98_DF25))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 53 bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in 0..n (n > 0), by rejection so that it is exactly uniform.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "below(0)");
        let n = n as u64;
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let v = self.next_u64();
            if v < zone {
                return (v % n) as usize;
            }
        }
    }

    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    pub fn choose<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// Standard normal (Box–Muller, one value per call).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Standard Gumbel: `-ln(-ln U)`. The difference of two is logistic, which is what makes
    /// Gumbel-perturbed sorting a Plackett–Luce ranking with Bradley–Terry pairwise marginals.
    pub fn gumbel(&mut self) -> f64 {
        let u = self.uniform().max(1e-300);
        -(-u.ln()).ln()
    }
}
