//! `eval.json`: the structure and the statistics that fill it.

use super::{EvalError, PromptEntry};
use crate::stats::{bootstrap_mean_ci, sign_test, wilcoxon, CiMethod};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const FORMAT: &str = "dpoimg-eval";
pub const VERSION: u32 = 1;

/// NaN (a degenerate statistic, as SciPy reports it) becomes null.
fn fin(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub images_per_prompt: u32,
    pub seed: u64,
    pub seed_rule: String,
    pub negative_prompt: String,
    pub sampler: String,
    pub steps: u32,
    pub guidance: f32,
    pub width: u32,
    pub height: u32,
    pub bootstrap_resamples: usize,
    pub bootstrap_seed: u64,
    pub bootstrap_method: String,
    pub confidence: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArmAdapterRecord {
    pub path: String,
    pub name: String,
    pub strength: f32,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArmRecord {
    pub name: String,
    /// Empty = the base model.
    pub adapters: Vec<ArmAdapterRecord>,
}

/// One generated image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Relative to the output directory.
    pub file: String,
    pub seed: u64,
    pub sha256: String,
    /// Metric name → score.
    pub scores: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromptResult {
    pub index: usize,
    pub category: Option<String>,
    pub prompt: String,
    /// Relative path of the grid PNG: one row per arm (in `arms` order), one column per image.
    pub grid: String,
    /// Arm name → images in seed order.
    pub images: BTreeMap<String, Vec<ImageRecord>>,
    /// Metric → arm → mean score over this prompt's images.
    pub means: BTreeMap<String, BTreeMap<String, f64>>,
}

/// Summary of one arm's scores on one metric.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (n − 1); null for n = 1.
    pub std: Option<f64>,
    pub min: f64,
    pub max: f64,
}

/// Paired comparison of arm `a` against arm `b` on one metric; differences are a − b.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairStats {
    pub metric: String,
    pub a: String,
    pub b: String,
    pub n: usize,
    pub mean_difference: f64,
    /// BCa bootstrap CI of the mean difference (`scipy.stats.bootstrap`, fixed seed); null when
    /// undefined (fewer than 2 pairs, or every difference equal).
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    pub wilcoxon_statistic: f64,
    pub wilcoxon_p: Option<f64>,
    pub wilcoxon_method: String,
    pub wins: u64,
    pub losses: u64,
    pub ties: u64,
    /// wins / (wins + losses); null when every pair ties.
    pub win_rate: Option<f64>,
    pub win_p: Option<f64>,
    pub win_ci_low: Option<f64>,
    pub win_ci_high: Option<f64>,
}

/// A set-level metric value: one arm (IS, FID vs reference) or a pair (FID between arms).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetValue {
    pub metric: String,
    pub arms: Vec<String>,
    pub value: f64,
    pub lower_is_better: bool,
}

/// Human votes of one arm pair, un-blinded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HumanPair {
    pub a: String,
    pub b: String,
    pub votes: u64,
    pub a_wins: u64,
    pub b_wins: u64,
    pub ties: u64,
    pub win_rate: Option<f64>,
    pub p: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HumanResults {
    pub votes_file: String,
    pub votes_sha256: String,
    pub pairs: Vec<HumanPair>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    pub format: String,
    pub version: u32,
    pub software: String,
    pub bundle: String,
    pub bundle_sha256: String,
    pub settings: Settings,
    pub arms: Vec<ArmRecord>,
    pub metrics: Vec<String>,
    pub images_generated: usize,
    pub images_reused: usize,
    pub prompts: Vec<PromptResult>,
    /// Metric → arm → summary over every image.
    pub overall: BTreeMap<String, BTreeMap<String, Summary>>,
    /// Category → metric → arm → mean (only when the prompt file has categories).
    pub categories: BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>>,
    /// Every metric × every pair of arms (a before b in `arms` order).
    pub pairs: Vec<PairStats>,
    pub set_metrics: Vec<SetValue>,
    pub human: Option<HumanResults>,
}

pub(super) struct Header {
    pub bundle: String,
    pub bundle_sha256: String,
    pub settings: Settings,
    pub arms: Vec<ArmRecord>,
    pub metrics: Vec<String>,
    pub images_generated: usize,
    pub images_reused: usize,
}

fn mean(v: &[f64]) -> f64 {
    crate::stats::numpy_mean(v)
}

fn summary(v: &[f64]) -> Summary {
    let m = mean(v);
    let std = (v.len() > 1).then(|| {
        (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() as f64 - 1.0)).sqrt()
    });
    Summary {
        n: v.len(),
        mean: m,
        std,
        min: v.iter().copied().fold(f64::INFINITY, f64::min),
        max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    }
}

/// Paired statistics of `a − b`.
pub(crate) fn pair_stats(
    metric: &str,
    a: &str,
    b: &str,
    xa: &[f64],
    xb: &[f64],
    s: &Settings,
) -> Result<PairStats, EvalError> {
    let d: Vec<f64> = xa.iter().zip(xb).map(|(x, y)| x - y).collect();
    let (ci_low, ci_high) = if d.len() >= 2 {
        let ci = bootstrap_mean_ci(
            &d,
            s.bootstrap_resamples,
            s.confidence,
            CiMethod::Bca,
            s.bootstrap_seed,
        )?;
        (fin(ci.low), fin(ci.high))
    } else {
        (None, None)
    };
    let w = wilcoxon(&d)?;
    let st = sign_test(&d, s.confidence)?;
    Ok(PairStats {
        metric: metric.into(),
        a: a.into(),
        b: b.into(),
        n: d.len(),
        mean_difference: mean(&d),
        ci_low,
        ci_high,
        wilcoxon_statistic: w.statistic,
        wilcoxon_p: fin(w.pvalue),
        wilcoxon_method: serde_json::to_value(w.method)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        wins: st.wins,
        losses: st.losses,
        ties: st.ties,
        win_rate: st.test.map(|t| t.proportion),
        win_p: st.test.map(|t| t.pvalue),
        win_ci_low: st.test.map(|t| t.ci_low),
        win_ci_high: st.test.map(|t| t.ci_high),
    })
}

/// Assembles the report; `records[arm][prompt][image]`.
pub(super) fn build(
    h: Header,
    prompts: &[PromptEntry],
    records: Vec<Vec<Vec<ImageRecord>>>,
    grids: Vec<String>,
    set_metrics: Vec<SetValue>,
) -> Result<EvalReport, EvalError> {
    let arm_names: Vec<String> = h.arms.iter().map(|a| a.name.clone()).collect();
    // scores[metric][arm] = every image in (prompt, image) order: the paired units.
    let mut scores: BTreeMap<&str, Vec<Vec<f64>>> = BTreeMap::new();
    for metric in &h.metrics {
        let per_arm = records
            .iter()
            .map(|arm| arm.iter().flatten().map(|r| r.scores[metric]).collect())
            .collect();
        scores.insert(metric, per_arm);
    }
    let mut prompt_results = Vec::new();
    for (p, entry) in prompts.iter().enumerate() {
        let mut means = BTreeMap::new();
        for metric in &h.metrics {
            let mut per = BTreeMap::new();
            for (a, name) in arm_names.iter().enumerate() {
                let v: Vec<f64> = records[a][p].iter().map(|r| r.scores[metric]).collect();
                per.insert(name.clone(), mean(&v));
            }
            means.insert(metric.clone(), per);
        }
        prompt_results.push(PromptResult {
            index: p,
            category: entry.category.clone(),
            prompt: entry.prompt.clone(),
            grid: grids[p].clone(),
            images: arm_names
                .iter()
                .cloned()
                .zip(records.iter().map(|arm| arm[p].clone()))
                .collect(),
            means,
        });
    }
    let mut overall = BTreeMap::new();
    for (metric, per_arm) in &scores {
        overall.insert(
            metric.to_string(),
            arm_names
                .iter()
                .cloned()
                .zip(per_arm.iter().map(|v| summary(v)))
                .collect(),
        );
    }
    let mut categories: BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>> = BTreeMap::new();
    let cats: std::collections::BTreeSet<&String> =
        prompts.iter().filter_map(|p| p.category.as_ref()).collect();
    for cat in cats {
        let mut per_metric = BTreeMap::new();
        for metric in &h.metrics {
            let mut per_arm = BTreeMap::new();
            for (a, name) in arm_names.iter().enumerate() {
                let v: Vec<f64> = prompts
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.category.as_ref() == Some(cat))
                    .flat_map(|(p, _)| records[a][p].iter().map(|r| r.scores[metric]))
                    .collect();
                per_arm.insert(name.clone(), mean(&v));
            }
            per_metric.insert(metric.clone(), per_arm);
        }
        categories.insert(cat.clone(), per_metric);
    }
    let mut pairs = Vec::new();
    for metric in &h.metrics {
        let per_arm = &scores[metric.as_str()];
        for a in 0..arm_names.len() {
            for b in a + 1..arm_names.len() {
                pairs.push(pair_stats(
                    metric,
                    &arm_names[a],
                    &arm_names[b],
                    &per_arm[a],
                    &per_arm[b],
                    &h.settings,
                )?);
            }
        }
    }
    Ok(EvalReport {
        format: FORMAT.into(),
        version: VERSION,
        software: format!("dpoimg {}", env!("CARGO_PKG_VERSION")),
        bundle: h.bundle,
        bundle_sha256: h.bundle_sha256,
        settings: h.settings,
        arms: h.arms,
        metrics: h.metrics,
        images_generated: h.images_generated,
        images_reused: h.images_reused,
        prompts: prompt_results,
        overall,
        categories,
        pairs,
        set_metrics,
        human: None,
    })
}
