//! `report.html`: one self-contained file (inline CSS, inline SVG plots, grids as data URIs; no
//! script, no external request) that opens anywhere, including an air-gapped machine.

use super::report::{EvalReport, PairStats};
use std::fmt::Write;
use std::path::Path;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

fn num(x: f64) -> String {
    if x.abs() >= 1e4 || (x != 0.0 && x.abs() < 1e-3) {
        format!("{x:.3e}")
    } else {
        format!("{x:.4}")
    }
}

fn opt(x: Option<f64>) -> String {
    x.map(num).unwrap_or_else(|| "–".into())
}

/// Colours for arms, in order.
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
];

/// Strip plot of every image's score, one row per arm, with the arm mean as a vertical tick.
fn distribution_svg(r: &EvalReport, metric: &str) -> String {
    let arms: Vec<&str> = r.arms.iter().map(|a| a.name.as_str()).collect();
    let per_arm: Vec<Vec<f64>> = arms
        .iter()
        .map(|a| {
            r.prompts
                .iter()
                .flat_map(|p| p.images[*a].iter().map(|i| i.scores[metric]))
                .collect()
        })
        .collect();
    let all = per_arm.iter().flatten();
    let (mut lo, mut hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| {
        (l.min(v), h.max(v))
    });
    if hi - lo < 1e-12 {
        lo -= 0.5;
        hi += 0.5;
    }
    let (left, width, row_h) = (110.0, 460.0, 36.0);
    let height = row_h * arms.len() as f64 + 40.0;
    let x = |v: f64| left + (v - lo) / (hi - lo) * width;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="plot plot-distribution" data-metric="{m}" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" viewBox="0 0 {w} {height}" role="img"><title>{m}: score distribution per arm</title>"#,
        m = esc(metric),
        w = left + width + 20.0
    );
    for (a, (name, v)) in arms.iter().zip(&per_arm).enumerate() {
        let y = 10.0 + row_h * a as f64 + row_h / 2.0;
        let col = COLOURS[a % COLOURS.len()];
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end" font-size="12">{}</text>"#,
            left - 8.0,
            y + 4.0,
            esc(name)
        );
        let _ = write!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{y}" y2="{y}" stroke="#ddd"/>"##,
            left + width
        );
        for (k, &val) in v.iter().enumerate() {
            // deterministic jitter so that equal scores stay visible
            let jy = y + ((k * 7919) % 17) as f64 - 8.0;
            let _ = write!(
                s,
                r#"<circle class="point" cx="{:.2}" cy="{jy:.2}" r="3" fill="{col}" fill-opacity="0.55"><title>{}</title></circle>"#,
                x(val),
                num(val)
            );
        }
        let m = crate::stats::numpy_mean(v);
        let _ = write!(
            s,
            r#"<line class="mean" x1="{0:.2}" x2="{0:.2}" y1="{1}" y2="{2}" stroke="black" stroke-width="2"><title>mean {3}</title></line>"#,
            x(m),
            y - 13.0,
            y + 13.0,
            num(m)
        );
    }
    let ay = height - 24.0;
    let _ = write!(
        s,
        r#"<line x1="{left}" x2="{}" y1="{ay}" y2="{ay}" stroke="black"/>"#,
        left + width
    );
    for k in 0..=4 {
        let v = lo + (hi - lo) * k as f64 / 4.0;
        let _ = write!(
            s,
            r#"<line x1="{0:.2}" x2="{0:.2}" y1="{ay}" y2="{1}" stroke="black"/><text x="{0:.2}" y="{2}" text-anchor="middle" font-size="11">{3}</text>"#,
            x(v),
            ay + 4.0,
            ay + 17.0,
            num(v)
        );
    }
    s.push_str("</svg>");
    s
}

/// A win-rate row: label, rate, CI low, CI high.
type WinRow = (String, Option<f64>, Option<f64>, Option<f64>);

/// One bar per pair: win rate of `a` over `b` with its Clopper-Pearson interval; 50 % marked.
fn winrate_svg(class: &str, title: &str, rows: &[WinRow]) -> String {
    let (left, width, row_h) = (190.0, 380.0, 28.0);
    let height = row_h * rows.len() as f64 + 40.0;
    let x = |v: f64| left + v * width;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="plot {class}" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" viewBox="0 0 {w} {height}" role="img"><title>{t}</title>"#,
        w = left + width + 20.0,
        t = esc(title)
    );
    for (i, (label, rate, lo, hi)) in rows.iter().enumerate() {
        let y = 10.0 + row_h * i as f64;
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end" font-size="12">{}</text>"#,
            left - 8.0,
            y + 15.0,
            esc(label)
        );
        if let Some(rate) = rate {
            let _ = write!(
                s,
                r##"<rect class="bar" x="{left}" y="{}" width="{:.2}" height="{}" fill="#1f77b4"><title>{}</title></rect>"##,
                y + 4.0,
                rate * width,
                row_h - 10.0,
                num(*rate)
            );
        }
        if let (Some(lo), Some(hi)) = (lo, hi) {
            let cy = y + row_h / 2.0 - 1.0;
            let _ = write!(
                s,
                r#"<line class="ci" x1="{:.2}" x2="{:.2}" y1="{cy}" y2="{cy}" stroke="black" stroke-width="1.5"/><line x1="{0:.2}" x2="{0:.2}" y1="{2}" y2="{3}" stroke="black"/><line x1="{1:.2}" x2="{1:.2}" y1="{2}" y2="{3}" stroke="black"/>"#,
                x(*lo),
                x(*hi),
                cy - 5.0,
                cy + 5.0
            );
        }
    }
    let ay = height - 24.0;
    let _ = write!(
        s,
        r#"<line class="half" x1="{0}" x2="{0}" y1="6" y2="{ay}" stroke="gray" stroke-dasharray="4 3"/>"#,
        x(0.5)
    );
    let _ = write!(
        s,
        r#"<line x1="{left}" x2="{}" y1="{ay}" y2="{ay}" stroke="black"/>"#,
        x(1.0)
    );
    for k in 0..=4 {
        let v = k as f64 / 4.0;
        let _ = write!(
            s,
            r#"<text x="{:.2}" y="{}" text-anchor="middle" font-size="11">{}%</text>"#,
            x(v),
            ay + 15.0,
            k * 25
        );
    }
    s.push_str("</svg>");
    s
}

fn pair_row(p: &PairStats) -> String {
    format!(
        "<tr><td>{}</td><td>{} vs {}</td><td>{}</td><td>{}</td><td>[{}, {}]</td><td>{}</td><td>{}</td><td>{}/{}/{}</td><td>{}</td><td>[{}, {}]</td><td>{}</td></tr>",
        esc(&p.metric), esc(&p.a), esc(&p.b), p.n, num(p.mean_difference), opt(p.ci_low), opt(p.ci_high),
        num(p.wilcoxon_statistic), opt(p.wilcoxon_p), p.wins, p.losses, p.ties, opt(p.win_rate), opt(p.win_ci_low), opt(p.win_ci_high), opt(p.win_p)
    )
}

/// Renders the report; grids are read from `dir` and inlined (a missing grid is shown as text).
pub fn render(dir: &Path, r: &EvalReport) -> String {
    let mut h = String::new();
    let _ = write!(h, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>dpoimg eval: {}</title><style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}}th{{background:#f3f3f3}}img.grid{{image-rendering:pixelated;min-width:240px}}.note{{color:#555;font-size:13px}}</style></head><body>", esc(&r.bundle));
    let _ = write!(h, "<h1>Evaluation of {}</h1><p class=\"note\">bundle sha256 {} · {} · {} images per prompt × {} prompts × {} arms ({} generated, {} reused) · {} steps, {} sampler, guidance {}, {}×{} · seed rule: {}</p>",
        esc(&r.bundle), esc(&r.bundle_sha256), esc(&r.software), r.settings.images_per_prompt, r.prompts.len(), r.arms.len(), r.images_generated, r.images_reused,
        r.settings.steps, esc(&r.settings.sampler), r.settings.guidance, r.settings.width, r.settings.height, esc(&r.settings.seed_rule));
    h.push_str("<h2>Arms</h2><table id=\"arms\"><tr><th>arm</th><th>adapters (name : strength : sha256)</th></tr>");
    for a in &r.arms {
        let ad = if a.adapters.is_empty() {
            "base model".to_string()
        } else {
            a.adapters
                .iter()
                .map(|x| {
                    format!(
                        "{} : {} : {}",
                        esc(&x.name),
                        x.strength,
                        &x.sha256[..x.sha256.len().min(12)]
                    )
                })
                .collect::<Vec<_>>()
                .join("<br>")
        };
        let _ = write!(h, "<tr><td>{}</td><td>{}</td></tr>", esc(&a.name), ad);
    }
    h.push_str("</table><h2>Overall</h2><table id=\"overall\"><tr><th>metric</th><th>arm</th><th>n</th><th>mean</th><th>std</th><th>min</th><th>max</th></tr>");
    for (metric, per) in &r.overall {
        for a in &r.arms {
            if let Some(s) = per.get(&a.name) {
                let _ = write!(h, "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", esc(metric), esc(&a.name), s.n, num(s.mean), opt(s.std), num(s.min), num(s.max));
            }
        }
    }
    h.push_str("</table>");
    if !r.set_metrics.is_empty() {
        h.push_str("<h2>Set metrics</h2><table id=\"set-metrics\"><tr><th>metric</th><th>arms</th><th>value</th></tr>");
        for v in &r.set_metrics {
            let _ = write!(
                h,
                "<tr><td>{} ({} is better)</td><td>{}</td><td>{}</td></tr>",
                esc(&v.metric),
                if v.lower_is_better { "lower" } else { "higher" },
                esc(&v.arms.join(" vs ")),
                num(v.value)
            );
        }
        h.push_str("</table>");
    }
    for metric in &r.metrics {
        let _ = write!(
            h,
            "<h2>{} — score distributions</h2>{}",
            esc(metric),
            distribution_svg(r, metric)
        );
        let rows: Vec<_> = r
            .pairs
            .iter()
            .filter(|p| &p.metric == metric)
            .map(|p| {
                (
                    format!("{} over {}", p.a, p.b),
                    p.win_rate,
                    p.win_ci_low,
                    p.win_ci_high,
                )
            })
            .collect();
        if !rows.is_empty() {
            let _ = write!(
                h,
                "<h3>{} — win rate (ties excluded) with {:.0} % Clopper-Pearson CI</h3>{}",
                esc(metric),
                r.settings.confidence * 100.0,
                winrate_svg("plot-winrate", &format!("{metric}: win rates"), &rows)
            );
        }
    }
    if !r.pairs.is_empty() {
        let _ = write!(h, "<h2>Paired statistics</h2><p class=\"note\">Differences a − b over paired (prompt, seed) units. CI: BCa bootstrap of the mean difference, {} resamples, seed {} (= scipy.stats.bootstrap). Wilcoxon: two-sided signed-rank (= scipy.stats.wilcoxon defaults). Win rate: a beats b, ties excluded, two-sided exact binomial test (= scipy.stats.binomtest).</p>", r.settings.bootstrap_resamples, r.settings.bootstrap_seed);
        h.push_str("<table id=\"pairs\"><tr><th>metric</th><th>pair</th><th>n</th><th>mean diff</th><th>CI</th><th>Wilcoxon W</th><th>Wilcoxon p</th><th>W/L/T</th><th>win rate</th><th>win CI</th><th>binomial p</th></tr>");
        for p in &r.pairs {
            h.push_str(&pair_row(p));
        }
        h.push_str("</table>");
    }
    if let Some(hu) = &r.human {
        let rows: Vec<_> = hu
            .pairs
            .iter()
            .map(|p| {
                (
                    format!("{} over {}", p.a, p.b),
                    p.win_rate,
                    p.ci_low,
                    p.ci_high,
                )
            })
            .collect();
        let _ = write!(h, "<h2>Human A/B votes</h2><p class=\"note\">{} (sha256 {}), un-blinded with the key; ties excluded from the win rate.</p>{}", esc(&hu.votes_file), esc(&hu.votes_sha256), winrate_svg("plot-winrate plot-human", "human win rates", &rows));
        h.push_str("<table id=\"human\"><tr><th>pair</th><th>votes</th><th>a wins</th><th>b wins</th><th>ties</th><th>win rate</th><th>CI</th><th>binomial p</th></tr>");
        for p in &hu.pairs {
            let _ = write!(h, "<tr><td>{} vs {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>[{}, {}]</td><td>{}</td></tr>", esc(&p.a), esc(&p.b), p.votes, p.a_wins, p.b_wins, p.ties, opt(p.win_rate), opt(p.ci_low), opt(p.ci_high), opt(p.p));
        }
        h.push_str("</table>");
    }
    if !r.categories.is_empty() {
        h.push_str(
            "<h2>Per category</h2><table id=\"categories\"><tr><th>category</th><th>metric</th>",
        );
        for a in &r.arms {
            let _ = write!(h, "<th>{}</th>", esc(&a.name));
        }
        h.push_str("</tr>");
        for (cat, per) in &r.categories {
            for (metric, arms) in per {
                let _ = write!(h, "<tr><td>{}</td><td>{}</td>", esc(cat), esc(metric));
                for a in &r.arms {
                    let _ = write!(
                        h,
                        "<td>{}</td>",
                        arms.get(&a.name).map(|v| num(*v)).unwrap_or_default()
                    );
                }
                h.push_str("</tr>");
            }
        }
        h.push_str("</table>");
    }
    let _ = write!(h, "<h2>Per prompt</h2><p class=\"note\">Grid rows: {} (top to bottom); columns: seeds in order.</p><table id=\"prompts\"><tr><th>#</th><th>prompt</th><th>grid</th><th>mean scores</th></tr>", esc(&r.arms.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", ")));
    for p in &r.prompts {
        let img = match std::fs::read(dir.join(&p.grid)) {
            Ok(bytes) => format!(
                "<img class=\"grid\" alt=\"grid {}\" src=\"data:image/png;base64,{}\">",
                p.index,
                base64(&bytes)
            ),
            Err(_) => format!("(grid {} missing)", esc(&p.grid)),
        };
        let mut means = String::new();
        for (metric, arms) in &p.means {
            let _ = write!(
                means,
                "{}: {}<br>",
                esc(metric),
                r.arms
                    .iter()
                    .map(|a| format!(
                        "{} {}",
                        esc(&a.name),
                        arms.get(&a.name).map(|v| num(*v)).unwrap_or_default()
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let cat = p
            .category
            .as_ref()
            .map(|c| format!("<b>[{}]</b> ", esc(c)))
            .unwrap_or_default();
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td></tr>",
            p.index,
            cat,
            esc(&p.prompt),
            img,
            means
        );
    }
    h.push_str("</table></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
    }
}
