//! The trainable LoRA parameters and their gradients, kept apart from the frozen UNet.
//!
//! peft semantics: a targeted linear layer computes `y = x·Wᵀ + b + scale·(x·Aᵀ)·Bᵀ` with
//! `A [rank, in]`, `B [out, rank]`, `scale = alpha/rank`. Keeping the parameters outside the model
//! makes "the reference model = the same UNet with LoRA off" a matter of passing `None`, and lets
//! the optimiser own and mutate them between steps.

use super::backend::Backend;
use super::TrainError;
use crate::lora::LoraAdapter;
use crate::rng::TorchRng;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// One linear (or 1×1-convolution) module of a model, by its diffusers path; LoRA can target it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearInfo {
    pub name: String,
    pub in_features: usize,
    pub out_features: usize,
}

/// How `A` is initialised (`B` always starts at zero, so a new adapter is the base model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoraInit {
    /// peft's default (`init_lora_weights=True`): `kaiming_uniform_(a=√5)` as `nn.Linear` does,
    /// i.e. `U(−1/√in, 1/√in)`.
    #[default]
    KaimingUniform,
    /// peft's `init_lora_weights="gaussian"`: `N(0, 1/rank)`.
    Gaussian,
}

/// Which modules to adapt and how.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// Module-name suffixes matched on a `.` boundary, as peft's `target_modules` list.
    pub targets: Vec<String>,
    pub rank: usize,
    pub alpha: f32,
    pub init: LoraInit,
    pub seed: u64,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            targets: ["to_q", "to_k", "to_v", "to_out.0"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            rank: 4,
            alpha: 4.0,
            init: LoraInit::KaimingUniform,
            seed: 0,
        }
    }
}

/// peft's `target_modules` rule: the module's name is the target or ends with `.target`.
pub fn target_matches(name: &str, target: &str) -> bool {
    name == target
        || (name.len() > target.len()
            && name.ends_with(target)
            && name.as_bytes()[name.len() - target.len() - 1] == b'.')
}

/// Host LoRA tensors by module name: `(A [rank·in], B [out·rank], rank, scale)`.
pub type HostPairs = BTreeMap<String, (Vec<f32>, Vec<f32>, usize, f32)>;

/// One adapted module's parameters.
pub struct LoraParams<B: Backend> {
    /// `[rank, in_features]`, row-major.
    pub a: B::Buf,
    /// `[out_features, rank]`, row-major.
    pub b: B::Buf,
    pub rank: usize,
    /// `alpha / rank` (times an adapter strength, where one was folded in).
    pub scale: f32,
}

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

/// The LoRA parameters of one model, indexed like the model's [`LinearInfo`] list.
pub struct LoraSet<B: Backend> {
    modules: Vec<LinearInfo>,
    slots: Vec<Option<LoraParams<B>>>,
    uid: u64,
    version: u64,
}

impl<B: Backend> std::fmt::Debug for LoraSet<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraSet")
            .field("adapted", &self.len())
            .field("params", &self.num_params())
            .finish()
    }
}

impl<B: Backend> LoraSet<B> {
    fn empty(modules: &[LinearInfo]) -> Self {
        LoraSet {
            modules: modules.to_vec(),
            slots: modules.iter().map(|_| None).collect(),
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            version: 0,
        }
    }

    /// A fresh adapter on every module matching `cfg.targets`: A random (seeded), B zero.
    /// Every target must match at least one linear module.
    pub fn new(be: &B, modules: &[LinearInfo], cfg: &LoraConfig) -> Result<Self, TrainError> {
        if cfg.rank == 0 {
            return Err(TrainError::Lora("rank must be at least 1".into()));
        }
        if !cfg.alpha.is_finite() {
            return Err(TrainError::Lora(format!(
                "alpha {} is not finite",
                cfg.alpha
            )));
        }
        for t in &cfg.targets {
            if !modules.iter().any(|m| target_matches(&m.name, t)) {
                return Err(TrainError::Lora(format!(
                    "target `{t}` matches no linear module of this UNet (LoRA is supported on linear and 1x1-convolution layers)"
                )));
            }
        }
        let mut set = Self::empty(modules);
        let mut rng = TorchRng::new(cfg.seed);
        for (slot, m) in set.slots.iter_mut().zip(modules) {
            if !cfg.targets.iter().any(|t| target_matches(&m.name, t)) {
                continue;
            }
            let n = cfg.rank * m.in_features;
            let a: Vec<f32> = match cfg.init {
                LoraInit::KaimingUniform => {
                    let bound = 1.0 / (m.in_features as f32).sqrt();
                    (0..n)
                        .map(|_| (rng.uniform_f32() * 2.0 - 1.0) * bound)
                        .collect()
                }
                LoraInit::Gaussian => {
                    let std = 1.0 / cfg.rank as f32;
                    rng.randn(n).into_iter().map(|v| v * std).collect()
                }
            };
            *slot = Some(LoraParams {
                a: be.upload(&a),
                b: be.zeros(m.out_features * cfg.rank),
                rank: cfg.rank,
                scale: cfg.alpha / cfg.rank as f32,
            });
        }
        Ok(set)
    }

    /// From host tensors: module name → `(A [rank·in], B [out·rank], rank, scale)`.
    pub fn from_host(
        be: &B,
        modules: &[LinearInfo],
        pairs: &HostPairs,
    ) -> Result<Self, TrainError> {
        let mut set = Self::empty(modules);
        for (name, (a, b, rank, scale)) in pairs {
            let id = set.index_of(name).ok_or_else(|| {
                TrainError::Lora(format!(
                    "module `{name}` is not a linear module of this UNet"
                ))
            })?;
            let m = &modules[id];
            if *rank == 0 || a.len() != rank * m.in_features || b.len() != m.out_features * rank {
                return Err(TrainError::Lora(format!(
                    "module `{name}`: A has {} and B {} values, expected rank {rank} × {} and {} × rank",
                    a.len(),
                    b.len(),
                    m.in_features,
                    m.out_features
                )));
            }
            set.slots[id] = Some(LoraParams {
                a: be.upload(a),
                b: be.upload(b),
                rank: *rank,
                scale: *scale,
            });
        }
        Ok(set)
    }

    /// From an adapter read by [`crate::lora`] (diffusers/peft or kohya keys), at strength 1.
    pub fn from_adapter(
        be: &B,
        modules: &[LinearInfo],
        adapter: &LoraAdapter,
    ) -> Result<Self, TrainError> {
        let pairs = adapter
            .modules
            .iter()
            .map(|(k, p)| (k.clone(), (p.a.clone(), p.b.clone(), p.rank, p.scale)))
            .collect();
        Self::from_host(be, modules, &pairs)
    }

    /// Reads an adapter file. Every linear module of the model is a valid key, so adapters on other
    /// targets than attention load too. `layers_per_block` resolves kohya's LDM-style names.
    pub fn load_file(
        be: &B,
        modules: &[LinearInfo],
        path: &Path,
        layers_per_block: usize,
    ) -> Result<Self, TrainError> {
        let spec = crate::bundle::LoraSpec {
            targets: vec![],
            modules: modules
                .iter()
                .map(|m| crate::bundle::LoraModule {
                    name: m.name.clone(),
                    in_features: m.in_features,
                    out_features: m.out_features,
                })
                .collect(),
        };
        let adapter = LoraAdapter::load(path, &spec, layers_per_block)
            .map_err(|e| TrainError::Lora(e.to_string()))?;
        Self::from_adapter(be, modules, &adapter)
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.modules.iter().position(|m| m.name == name)
    }

    /// Parameters of linear module `id`, if adapted.
    pub fn get(&self, id: usize) -> Option<&LoraParams<B>> {
        self.slots.get(id).and_then(|s| s.as_ref())
    }

    /// Number of adapted modules.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn num_params(&self) -> usize {
        self.iter()
            .map(|(_, m, p)| p.rank * (m.in_features + m.out_features))
            .sum()
    }

    /// `(id, module, params)` of every adapted module, in model order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &LinearInfo, &LoraParams<B>)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|p| (i, &self.modules[i], p)))
    }

    /// Mutable parameters (for the optimiser). Marks the set as changed: a forward cache taken
    /// before this no longer matches it.
    pub fn params_mut(&mut self) -> impl Iterator<Item = (&LinearInfo, &mut LoraParams<B>)> {
        self.version += 1;
        let modules = &self.modules;
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(move |(i, s)| s.as_mut().map(|p| (&modules[i], p)))
    }

    /// Identity and version: a backward must see the very parameters its forward used.
    pub(crate) fn tag(&self) -> (u64, u64) {
        (self.uid, self.version)
    }

    pub(crate) fn uid(&self) -> u64 {
        self.uid
    }

    /// Host copies keyed `{prefix}{module}.lora_A.weight` / `.lora_B.weight` with their shapes —
    /// with `prefix = "unet."` the diffusers adapter-file convention.
    pub fn to_host(&self, be: &B, prefix: &str) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
        let mut out = BTreeMap::new();
        for (_, m, p) in self.iter() {
            out.insert(
                format!("{prefix}{}.lora_A.weight", m.name),
                (vec![p.rank, m.in_features], be.download(&p.a)),
            );
            out.insert(
                format!("{prefix}{}.lora_B.weight", m.name),
                (vec![m.out_features, p.rank], be.download(&p.b)),
            );
        }
        out
    }
}

/// Gradients of a loss w.r.t. every A and B of one [`LoraSet`] (same indexing). Backward passes
/// add into it, so micro-batches accumulate.
pub struct LoraGrads<B: Backend> {
    modules: Vec<LinearInfo>,
    slots: Vec<Option<(B::Buf, B::Buf)>>,
    uid: u64,
}

impl<B: Backend> LoraGrads<B> {
    /// Zero gradients shaped like `set`.
    pub fn zeros(be: &B, set: &LoraSet<B>) -> Self {
        LoraGrads {
            modules: set.modules.clone(),
            slots: set
                .slots
                .iter()
                .zip(&set.modules)
                .map(|(s, m)| {
                    s.as_ref().map(|p| {
                        (
                            be.zeros(p.rank * m.in_features),
                            be.zeros(m.out_features * p.rank),
                        )
                    })
                })
                .collect(),
            uid: set.uid,
        }
    }

    /// Gradients for a pass without LoRA (nothing to record).
    pub fn none() -> Self {
        LoraGrads {
            modules: vec![],
            slots: vec![],
            uid: 0,
        }
    }

    pub(crate) fn uid(&self) -> u64 {
        self.uid
    }

    /// Adds `(dA, dB)` to module `id`'s gradients.
    pub(crate) fn add(&mut self, be: &B, id: usize, da: &B::Buf, db: &B::Buf) {
        let (ga, gb) = self.slots[id]
            .as_mut()
            .expect("LoRA gradient for a module the set does not adapt");
        be.add_assign(ga, da);
        be.add_assign(gb, db);
    }

    /// `(dA, dB)` of module `id`, if adapted.
    pub fn get(&self, id: usize) -> Option<(&B::Buf, &B::Buf)> {
        self.slots
            .get(id)
            .and_then(|s| s.as_ref().map(|(a, b)| (a, b)))
    }

    /// Resets every gradient to zero.
    pub fn zero(&mut self, be: &B) {
        for (a, b) in self.slots.iter_mut().flatten() {
            be.scale(a, 0.0);
            be.scale(b, 0.0);
        }
    }

    /// Host copies keyed like [`LoraSet::to_host`].
    pub fn to_host(&self, be: &B, prefix: &str) -> BTreeMap<String, Vec<f32>> {
        let mut out = BTreeMap::new();
        for (m, s) in self.modules.iter().zip(&self.slots) {
            if let Some((a, b)) = s {
                out.insert(format!("{prefix}{}.lora_A.weight", m.name), be.download(a));
                out.insert(format!("{prefix}{}.lora_B.weight", m.name), be.download(b));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_target_rule() {
        assert!(target_matches("a.attn1.to_q", "to_q"));
        assert!(target_matches("a.attn1.to_out.0", "to_out.0"));
        assert!(target_matches("to_q", "to_q"));
        assert!(!target_matches("a.attn1.xto_q", "to_q"));
        assert!(!target_matches("a.attn1.to_q.x", "to_q"));
    }
}
