//! `experiment.json` and `report.html`: per-arm compute, the eval library's paired statistics
//! for every pair of arms, each trained arm's gain over base per unit of compute, the
//! reward-vs-compute curves (inline SVG) and where the blinded A/B pack is.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use super::config::{ArmTrain, ExperimentConfig, PlannedArm};
use super::{ArmState, CurvePoint};
use crate::eval::{EvalReport, PairStats};
use crate::finetune::Compute;

pub const FORMAT: &str = "dpoimg-experiment";
pub const VERSION: u32 = 1;

/// One arm: its training settings' implied compute, what it used, and its curve.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArmResult {
    pub name: String,
    /// `base`, `dpo`, `dpok` or `sft`.
    pub method: String,
    pub steps: usize,
    pub run_dir: Option<String>,
    pub adapter: Option<String>,
    pub adapter_sha256: Option<String>,
    /// What the settings imply (the budget check).
    pub planned: Compute,
    /// What the run counted (its `Outcome`).
    pub compute: Compute,
    /// Wall time of the training invocations, data loading and encoding included.
    pub training_wall_seconds_total: f64,
    pub final_loss: Option<f64>,
    /// DPOK: mean training reward of the last iterations' samples.
    pub final_reward: Option<f64>,
    /// Reward of the curve images vs compute, base model first.
    pub curve: Vec<CurvePoint>,
    /// Metric → mean over the held-out images.
    pub eval_means: BTreeMap<String, f64>,
}

/// A trained arm's gain over base on a metric, whole and per million UNet evaluations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PerCompute {
    pub arm: String,
    pub metric: String,
    /// Mean paired difference arm − base with its BCa CI (from the eval's statistics).
    pub gain: f64,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    pub wilcoxon_p: Option<f64>,
    pub unet_evals: u64,
    pub gain_per_million_evals: Option<f64>,
    pub ci_low_per_million_evals: Option<f64>,
    pub ci_high_per_million_evals: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlindPack {
    /// Relative to the experiment directory.
    pub dir: String,
    pub key: String,
    pub pairs: usize,
    pub arms: [String; 2],
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExperimentReport {
    pub format: String,
    pub version: u32,
    pub software: String,
    pub bundle: String,
    pub bundle_sha256: String,
    pub budget_unet_evals: Option<u64>,
    pub arms: Vec<ArmResult>,
    pub metrics: Vec<String>,
    /// Every metric × pair of arms (a − b), as `dpoimg eval` computed them.
    pub pairs: Vec<PairStats>,
    pub per_compute: Vec<PerCompute>,
    pub set_metrics: Vec<crate::eval::SetValue>,
    /// The `dpoimg eval` output directory (relative) and its report.
    pub eval_dir: String,
    pub eval_report: String,
    pub blind: Option<BlindPack>,
}

pub(crate) fn build(
    cfg: &ExperimentConfig,
    arms: &[PlannedArm],
    states: &BTreeMap<String, ArmState>,
    base_point: CurvePoint,
    eval: EvalReport,
    blind: Option<BlindPack>,
) -> ExperimentReport {
    let mut out = Vec::new();
    for a in arms {
        let st = states.get(&a.name);
        let o = st.and_then(|s| s.outcome.as_ref());
        let mut curve = vec![base_point.clone()];
        if let Some(s) = st {
            let mut pts = s.points.clone();
            pts.sort_by_key(|p| p.step);
            curve.extend(pts);
        }
        let method = match &a.train {
            None => "base",
            Some(ArmTrain::Dpo(c)) if c.objective == crate::finetune::Objective::Sft => "sft",
            Some(ArmTrain::Dpo(_)) => "dpo",
            Some(ArmTrain::Dpok(_)) => "dpok",
        };
        let run_dir = match &a.train {
            None => None,
            Some(ArmTrain::Dpo(c)) => Some(c.output.display().to_string()),
            Some(ArmTrain::Dpok(c)) => Some(c.output.display().to_string()),
        };
        out.push(ArmResult {
            name: a.name.clone(),
            method: method.into(),
            steps: a.steps(),
            run_dir,
            adapter: o.map(|o| o.adapter.display().to_string()),
            adapter_sha256: o.map(|o| o.adapter_sha256.clone()),
            planned: a.planned,
            compute: o.map(|o| o.compute).unwrap_or_default(),
            training_wall_seconds_total: st.map_or(0.0, |s| s.wall_seconds_total),
            final_loss: o.map(|o| o.final_loss),
            final_reward: o.and_then(|o| o.final_reward),
            curve: if a.train.is_some() {
                curve
            } else {
                vec![base_point.clone()]
            },
            eval_means: eval
                .overall
                .iter()
                .filter_map(|(metric, by_arm)| {
                    by_arm.get(&a.name).map(|s| (metric.clone(), s.mean))
                })
                .collect(),
        });
    }
    let mut per_compute = Vec::new();
    for a in out.iter().filter(|a| a.method != "base") {
        for p in eval.pairs.iter().filter(|p| p.a == "base" && p.b == a.name) {
            let evals = a.compute.unet_forward + a.compute.unet_backward;
            let per = |x: f64| (evals > 0).then(|| x / evals as f64 * 1e6);
            // eval pairs are base − arm: flip to the arm's gain
            per_compute.push(PerCompute {
                arm: a.name.clone(),
                metric: p.metric.clone(),
                gain: -p.mean_difference,
                ci_low: p.ci_high.map(|x| -x),
                ci_high: p.ci_low.map(|x| -x),
                wilcoxon_p: p.wilcoxon_p,
                unet_evals: evals,
                gain_per_million_evals: per(-p.mean_difference),
                ci_low_per_million_evals: p.ci_high.and_then(|x| per(-x)),
                ci_high_per_million_evals: p.ci_low.and_then(|x| per(-x)),
            });
        }
    }
    ExperimentReport {
        format: FORMAT.into(),
        version: VERSION,
        software: format!("dpoimg {}", env!("CARGO_PKG_VERSION")),
        bundle: eval.bundle.clone(),
        bundle_sha256: eval.bundle_sha256.clone(),
        budget_unet_evals: cfg.budget.unet_evals,
        arms: out,
        metrics: eval.metrics.clone(),
        pairs: eval.pairs.clone(),
        per_compute,
        set_metrics: eval.set_metrics.clone(),
        eval_dir: "eval".into(),
        eval_report: "eval/report.html".into(),
        blind,
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn num(x: f64) -> String {
    if x.abs() >= 1e5 || (x != 0.0 && x.abs() < 1e-3) {
        format!("{x:.3e}")
    } else {
        format!("{x:.4}")
    }
}

fn opt(x: Option<f64>) -> String {
    x.map_or("–".into(), num)
}

const COLORS: [&str; 4] = ["#555", "#1f77b4", "#d62728", "#2ca02c"];

/// Reward vs UNet evaluations, one polyline per trained arm (base is every line's first point),
/// with ±1 SEM whiskers.
fn curve_svg(arms: &[ArmResult]) -> String {
    let (w, h, l, r, t, b) = (640.0, 360.0, 70.0, 130.0, 20.0, 50.0);
    let pts: Vec<&CurvePoint> = arms.iter().flat_map(|a| &a.curve).collect();
    let x_of = |p: &CurvePoint| (p.unet_forward + p.unet_backward) as f64;
    let xmax = pts.iter().map(|p| x_of(p)).fold(1.0, f64::max);
    let (mut ymin, mut ymax) =
        pts.iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                (
                    lo.min(p.reward_mean - p.reward_sem),
                    hi.max(p.reward_mean + p.reward_sem),
                )
            });
    if !ymin.is_finite() || !ymax.is_finite() {
        (ymin, ymax) = (0.0, 1.0);
    } else if ymax <= ymin {
        ymin -= 0.5;
        ymax += 0.5;
    }
    let pad = (ymax - ymin) * 0.05;
    let (ymin, ymax) = (ymin - pad, ymax + pad);
    let sx = |x: f64| l + x / xmax * (w - l - r);
    let sy = |y: f64| t + (ymax - y) / (ymax - ymin) * (h - t - b);
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg class=\"plot plot-curve\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\
         <line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#000\"/><line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{}\" stroke=\"#000\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"12\">UNet evaluations (forward + backward)</text>\
         <text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\" font-size=\"12\">reward (curve prompts)</text>\
         <text x=\"{l}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">0</text><text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{}</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">{}</text><text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">{}</text>",
        h - b, w - r, h - b, h - b,
        (l + w - r) / 2.0, h - 10.0,
        (t + h - b) / 2.0, (t + h - b) / 2.0,
        h - b + 14.0, w - r, h - b + 14.0, xmax as u64,
        l - 4.0, sy(ymin) , num(ymin), l - 4.0, sy(ymax) + 10.0, num(ymax),
    );
    for (k, a) in arms.iter().filter(|a| a.method != "base").enumerate() {
        let c = COLORS[(k + 1) % COLORS.len()];
        let line: Vec<String> = a
            .curve
            .iter()
            .map(|p| format!("{:.1},{:.1}", sx(x_of(p)), sy(p.reward_mean)))
            .collect();
        let _ = write!(
            s,
            "<polyline class=\"curve\" fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"><title>{}</title></polyline>",
            line.join(" "),
            esc(&a.name)
        );
        for p in &a.curve {
            let (x, y) = (sx(x_of(p)), sy(p.reward_mean));
            let _ = write!(
                s,
                "<line class=\"sem\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{c}\"/>\
                 <circle class=\"curve-point\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3.5\" fill=\"{c}\"><title>{} step {}: reward {} ± {} at {} evaluations</title></circle>",
                sy(p.reward_mean - p.reward_sem),
                sy(p.reward_mean + p.reward_sem),
                esc(&a.name),
                p.step,
                num(p.reward_mean),
                num(p.reward_sem),
                x_of(p)
            );
        }
        let ly = t + 16.0 * k as f64 + 10.0;
        let _ = write!(
            s,
            "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"4\" fill=\"{c}\"/><text x=\"{}\" y=\"{}\" font-size=\"12\">{}</text>",
            w - r + 10.0,
            ly - 4.0,
            w - r + 26.0,
            ly,
            esc(&a.name)
        );
    }
    s.push_str("</svg>");
    s
}

pub(crate) fn html(rep: &ExperimentReport) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Experiment on {b}</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#f4f4f4}}</style></head><body>\
         <h1>Experiment on {b}</h1><p>bundle sha256 <code>{sha}</code>; {sw}; compute budget per arm: {budget} UNet evaluations.</p>",
        b = esc(&rep.bundle),
        sha = esc(&rep.bundle_sha256),
        sw = esc(&rep.software),
        budget = rep.budget_unet_evals.map_or("none".into(), |b| b.to_string()),
    );
    s.push_str("<h2>Compute per arm</h2><table class=\"compute\"><tr><th>arm</th><th>steps</th><th>UNet forward</th><th>UNet backward</th><th>samples drawn</th><th>reward evals</th><th>step wall s</th><th>total wall s</th><th>final loss</th></tr>");
    for a in &rep.arms {
        let c = &a.compute;
        let _ = write!(
            s,
            "<tr class=\"arm\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&a.name), a.steps, c.unet_forward, c.unet_backward, c.samples_drawn, c.reward_evals,
            num(c.wall_seconds), num(a.training_wall_seconds_total), opt(a.final_loss)
        );
    }
    s.push_str("</table>");
    s.push_str("<h2>Reward vs compute</h2>");
    s.push_str(&curve_svg(&rep.arms));
    let conf = "95 %";
    let _ = write!(s, "<h2>Paired comparisons (held-out prompts, {conf} BCa CI)</h2><table class=\"pairs\"><tr><th>metric</th><th>A</th><th>B</th><th>n</th><th>mean A − B</th><th>CI</th><th>Wilcoxon p</th><th>win rate A</th><th>win CI</th></tr>");
    for p in &rep.pairs {
        let _ = write!(
            s,
            "<tr class=\"pair\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>[{}, {}]</td><td>{}</td><td>{}</td><td>[{}, {}]</td></tr>",
            esc(&p.metric), esc(&p.a), esc(&p.b), p.n, num(p.mean_difference),
            opt(p.ci_low), opt(p.ci_high), opt(p.wilcoxon_p), opt(p.win_rate),
            opt(p.win_ci_low), opt(p.win_ci_high)
        );
    }
    s.push_str("</table><h2>Gain over base per unit of compute</h2><table class=\"per-compute\"><tr><th>arm</th><th>metric</th><th>gain</th><th>CI</th><th>UNet evals</th><th>gain / 10⁶ evals</th><th>CI / 10⁶ evals</th></tr>");
    for p in &rep.per_compute {
        let _ = write!(
            s,
            "<tr class=\"gain\"><td>{}</td><td>{}</td><td>{}</td><td>[{}, {}]</td><td>{}</td><td>{}</td><td>[{}, {}]</td></tr>",
            esc(&p.arm), esc(&p.metric), num(p.gain), opt(p.ci_low), opt(p.ci_high), p.unet_evals,
            opt(p.gain_per_million_evals), opt(p.ci_low_per_million_evals), opt(p.ci_high_per_million_evals)
        );
    }
    s.push_str("</table>");
    if !rep.set_metrics.is_empty() {
        s.push_str("<h2>Set metrics</h2><table class=\"set\"><tr><th>metric</th><th>arms</th><th>value</th></tr>");
        for v in &rep.set_metrics {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&v.metric),
                esc(&v.arms.join(" vs ")),
                num(v.value)
            );
        }
        s.push_str("</table>");
    }
    let _ = write!(
        s,
        "<h2>Images and per-prompt results</h2><p><a href=\"{0}\">{0}</a> (the <code>dpoimg eval</code> report: distributions, win rates, grids).</p>",
        esc(&rep.eval_report)
    );
    match &rep.blind {
        Some(b) => {
            let _ = write!(
                s,
                "<h2>Blinded human A/B pack</h2><p class=\"blind\">{} pairs of {} vs {} in <code>{}</code>; key in <code>{}</code> (keep it from raters). Add votes with <code>dpoimg eval -o eval --votes votes.jsonl --key {}</code>.</p>",
                b.pairs, esc(&b.arms[0]), esc(&b.arms[1]), esc(&b.dir), esc(&b.key), esc(&b.key)
            );
        }
        None => s.push_str(
            "<h2>Blinded human A/B pack</h2><p>none (needs both the dpo and the dpok arm)</p>",
        ),
    }
    s.push_str("</body></html>\n");
    s
}
