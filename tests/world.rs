//! The shapes world: grammar round trip, sampler and splits, renderer geometry (analytic areas),
//! the attribute checker's accuracy on renders (clean, degraded, mismatched), the annotator
//! model's Bradley–Terry marginals, and the ImageRewardDB writer read back by `load_pairs`.

use dpoimg::data::{load_pairs, ImageSource, LoadOptions, RgbImage};
use dpoimg::world::rng::WorldRng;
use dpoimg::world::{
    check, render, render_prompt, write_imagereward, AnnotatorModel, Attribute, Color, Layout,
    Object, Placed, Position, PromptGroup, PromptSampler, RenderOptions, Scene, Shape, Size, Split,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Command;

#[test]
fn grammar_round_trips_every_sampled_scene() {
    let sampler = PromptSampler::with_seed(11);
    let (mut one, mut two) = (0, 0);
    for i in 0..3000 {
        let s = sampler.scene(i);
        let text = s.to_string();
        let back = Scene::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(back, s, "{text}");
        match s {
            Scene::One { .. } => one += 1,
            Scene::Two { .. } => two += 1,
        }
    }
    // two_prob 0.2: 600 expected, binomial sd 22.
    assert!(
        (500..700).contains(&two),
        "two-object scenes: {two} of {}",
        one + two
    );
    // Case and spacing do not matter.
    let s = Scene::parse("  A Large RED   triangle at the TOP left on a gray background ").unwrap();
    assert_eq!(
        s,
        Scene::One {
            object: Object {
                color: Color::Red,
                shape: Shape::Triangle
            },
            size: Some(Size::Large),
            position: Position::new(0, 0),
            background: Some(Color::Gray),
        }
    );
    assert_eq!(
        s.to_string(),
        "a large red triangle at the top left on a gray background"
    );
}

#[test]
fn parse_errors_name_the_word_and_the_fix() {
    let cases = [
        ("a magenta circle", "magenta", "red, green, blue"),
        ("a red hexagon", "hexagon", "circle, square, triangle"),
        ("a red circle on a red background", "both red", "background"),
        (
            "a red circle left of a red square",
            "both objects are red",
            "two different",
        ),
        (
            "a small red circle above a blue square",
            "sizes",
            "drop the size",
        ),
        ("a red circle at the middle", "middle", "top left"),
        (
            "a red circle in the center please",
            "please",
            "end the prompt",
        ),
        ("red circle", "`a`", "write `a`"),
        ("a red circle left a blue square", "`of`", "write `of`"),
        (
            "a red circle on a pink background",
            "pink",
            "white, black, gray",
        ),
    ];
    for (prompt, problem, fix) in cases {
        let e = Scene::parse(prompt).expect_err(prompt).to_string();
        assert!(e.contains(problem), "{prompt}: {e}");
        assert!(e.contains(fix), "{prompt}: {e}");
        assert!(e.contains(prompt.trim()), "{prompt}: {e}");
    }
}

#[test]
fn sampler_is_deterministic_and_splits_are_by_prompt() {
    let a = PromptSampler::with_seed(3).distinct(None, 2000).unwrap();
    let b = PromptSampler::with_seed(3).distinct(None, 2000).unwrap();
    let c = PromptSampler::with_seed(4).distinct(None, 2000).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    let texts: HashSet<String> = a.iter().map(|s| s.to_string()).collect();
    assert_eq!(texts.len(), 2000, "prompts are distinct");
    let mut per: BTreeMap<Split, usize> = BTreeMap::new();
    for t in &texts {
        *per.entry(Split::of_prompt(t)).or_default() += 1;
    }
    let frac = |s| per.get(&s).copied().unwrap_or(0) as f64 / 2000.0;
    // 80/10/10 by hash: binomial sd 0.9 % (train) and 0.7 % (others).
    assert!((0.76..0.84).contains(&frac(Split::Train)), "{per:?}");
    assert!((0.07..0.13).contains(&frac(Split::Validation)), "{per:?}");
    assert!((0.07..0.13).contains(&frac(Split::Test)), "{per:?}");
    // A split filter returns only that split, and the split ignores case and spacing.
    for s in PromptSampler::with_seed(3)
        .distinct(Some(Split::Test), 50)
        .unwrap()
    {
        let t = s.to_string();
        assert_eq!(Split::of_prompt(&t), Split::Test);
        assert_eq!(
            Split::of_prompt(&format!("  {}", t.to_uppercase())),
            Split::Test
        );
    }
    // Asking for more distinct prompts than the grammar has is an error, not a hang.
    let e = PromptSampler::with_seed(0)
        .distinct(None, 100_000)
        .unwrap_err();
    assert!(e.to_string().contains("distinct prompts"), "{e}");
    let bad = PromptSampler {
        two_prob: 1.5,
        ..Default::default()
    };
    assert!(bad
        .distinct(None, 1)
        .unwrap_err()
        .to_string()
        .contains("two_prob"));
}

/// Object coverage of each pixel recovered from the red channel (red object on black).
fn coverage_area(img: &RgbImage) -> f64 {
    let (bg, fg) = (20.0, 220.0);
    let unit2 = (32.0 / img.width as f64).powi(2);
    img.data
        .chunks_exact(3)
        .map(|p| (p[0] as f64 - bg) / (fg - bg) * unit2)
        .sum()
}

#[test]
fn renderer_areas_match_the_geometry() {
    // Analytic areas: square s², circle π s²/4, triangle s²/2. Regular-grid supersampling puts
    // each straight edge on a multiple of 1/ss pixel, so a square's side is off by up to 1/ss
    // pixel per axis: relative area error ≤ 2 / (ss · side in pixels), plus 0.5 % for u8
    // rounding. Curved and slanted edges average out and do better.
    let mut worst: f64 = 0.0;
    let mut r = WorldRng::new(5);
    for shape in Shape::ALL {
        for _ in 0..20 {
            let side = r.range(7.0, 16.0);
            let layout = Layout {
                background: Color::Black,
                objects: vec![Placed {
                    object: Object {
                        color: Color::Red,
                        shape,
                    },
                    cx: r.range(9.0, 23.0),
                    cy: r.range(9.0, 23.0),
                    side,
                }],
                size: None,
                position: None,
            };
            let want = match shape {
                Shape::Square => side * side,
                Shape::Circle => std::f64::consts::PI * side * side / 4.0,
                Shape::Triangle => side * side / 2.0,
            };
            for (size, supersample) in [(32, 4), (32, 16), (64, 4)] {
                let img = render(&layout, &RenderOptions { size, supersample }).unwrap();
                let rel = (coverage_area(&img) - want).abs() / want;
                let side_px = side * size as f64 / 32.0;
                let tol = 2.0 / (supersample as f64 * side_px) + 0.005;
                worst = worst.max(rel / tol);
                assert!(
                    rel < tol,
                    "{shape:?} side {side:.2} at {size}px/{supersample}: {rel:.4} > {tol:.4}"
                );
            }
        }
    }
    eprintln!("renderer: worst area error {worst:.3} of its bound");
}

#[test]
fn renderer_is_deterministic_antialiased_and_resolution_consistent() {
    let scene = Scene::parse("a red circle above a blue triangle on a white background").unwrap();
    let o32 = RenderOptions::default();
    let (l1, a) = render_prompt(&scene, 9, &o32).unwrap();
    let (l2, b) = render_prompt(&scene, 9, &o32).unwrap();
    assert_eq!(l1, l2);
    assert_eq!(a, b);
    let (_, c) = render_prompt(&scene, 10, &o32).unwrap();
    assert_ne!(a, c, "another seed moves the objects");
    let palette: HashSet<[u8; 3]> = Color::ALL.iter().map(|c| c.rgb()).collect();
    let off_palette = |img: &RgbImage| {
        img.data
            .chunks_exact(3)
            .filter(|p| !palette.contains(&[p[0], p[1], p[2]]))
            .count()
    };
    assert!(off_palette(&a) > 20, "edges are anti-aliased");
    let aliased = render(
        &l1,
        &RenderOptions {
            size: 32,
            supersample: 1,
        },
    )
    .unwrap();
    assert_eq!(
        off_palette(&aliased),
        0,
        "one sample per pixel draws pure colours"
    );
    // A 64x64 render with 2x2 samples uses exactly the 32x32 4x4 sample points: averaging 2x2
    // blocks gives the 32x32 render up to u8 rounding (±1).
    let big = render(
        &l1,
        &RenderOptions {
            size: 64,
            supersample: 2,
        },
    )
    .unwrap();
    for y in 0..32 {
        for x in 0..32 {
            for k in 0..3 {
                let s: f64 = [(0, 0), (1, 0), (0, 1), (1, 1)]
                    .iter()
                    .map(|(dx, dy)| big.data[((2 * y + dy) * 64 + 2 * x + dx) * 3 + k] as f64)
                    .sum::<f64>()
                    / 4.0;
                let v = a.data[(y * 32 + x) * 3 + k] as f64;
                assert!((s - v).abs() <= 1.0, "({x},{y}) channel {k}: {s} vs {v}");
            }
        }
    }
    for (size, ss) in [(4, 4), (32, 0), (2048, 4)] {
        let e = render(
            &l1,
            &RenderOptions {
                size,
                supersample: ss,
            },
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains(if ss == 0 { "supersample" } else { "size" }),
            "{e}"
        );
    }
}

/// 3x3 binomial blur, then Gaussian noise of `sigma` levels, clipped.
fn degrade(img: &RgbImage, sigma: f64, rng: &mut WorldRng) -> RgbImage {
    let (w, h) = (img.width as usize, img.height as usize);
    let mut out = img.clone();
    let k = [1.0, 2.0, 1.0];
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let (mut acc, mut norm) = (0.0, 0.0);
                for (dy, ky) in k.iter().enumerate() {
                    for (dx, kx) in k.iter().enumerate() {
                        let (yy, xx) = (y as isize + dy as isize - 1, x as isize + dx as isize - 1);
                        if yy < 0 || xx < 0 || yy >= h as isize || xx >= w as isize {
                            continue;
                        }
                        acc += ky * kx * img.data[(yy as usize * w + xx as usize) * 3 + c] as f64;
                        norm += ky * kx;
                    }
                }
                let v = acc / norm + sigma * rng.normal();
                out.data[(y * w + x) * 3 + c] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

#[derive(Default)]
struct Tally {
    all: (usize, usize),
    attrs: BTreeMap<&'static str, (usize, usize)>,
    score_sum: f64,
}

impl Tally {
    fn add(&mut self, r: &dpoimg::world::CheckResult) {
        self.all.0 += r.all_correct as usize;
        self.all.1 += 1;
        self.score_sum += r.score;
        assert!((0.0..=1.0).contains(&r.score), "score {}", r.score);
        assert_eq!(
            r.all_correct,
            r.score == 1.0,
            "score 1 exactly when all correct"
        );
        for (a, ok) in &r.attributes {
            let e = self.attrs.entry(a.name()).or_default();
            e.0 += *ok as usize;
            e.1 += 1;
        }
    }
    fn rate(&self) -> f64 {
        self.all.0 as f64 / self.all.1 as f64
    }
    fn report(&self, what: &str) -> String {
        let attrs: Vec<String> = self
            .attrs
            .iter()
            .map(|(k, (c, n))| format!("{k} {:.4} ({n})", *c as f64 / *n as f64))
            .collect();
        format!(
            "{what}: all-correct {:.4} of {}, mean score {:.3}; {}",
            self.rate(),
            self.all.1,
            self.score_sum / self.all.1 as f64,
            attrs.join(", ")
        )
    }
}

#[test]
fn checker_reads_renders_back() {
    const N: u64 = 2000;
    let sampler = PromptSampler::with_seed(7);
    let scenes: Vec<Scene> = (0..N).map(|i| sampler.scene(i)).collect();
    let opts = RenderOptions::default();
    let images: Vec<RgbImage> = scenes
        .iter()
        .enumerate()
        .map(|(i, s)| render_prompt(s, 1000 + i as u64, &opts).unwrap().1)
        .collect();
    let mut clean = Tally::default();
    let mut noisy = Tally::default();
    let mut other = Tally::default();
    let mut heavy = Tally::default();
    let mut rng = WorldRng::new(1);
    let mut failures = Vec::new();
    for (i, (s, img)) in scenes.iter().zip(&images).enumerate() {
        let r = check(s, img).unwrap();
        if !r.all_correct && failures.len() < 5 {
            failures.push(format!("{s}: {:?} read {:?}", r.attributes, r.reading));
        }
        clean.add(&r);
        let nr = check(s, &degrade(img, 10.0, &mut rng)).unwrap();
        if std::env::var("WORLD_DEBUG").is_ok() && nr.get(Attribute::Color) == Some(false) {
            eprintln!("noisy colour miss {s}: {:?}", nr.reading);
        }
        noisy.add(&nr);
        if i < 500 {
            // Report only: two blur passes (5x5 binomial) and noise σ = 20.
            let once = degrade(img, 0.0, &mut rng);
            heavy.add(&check(s, &degrade(&once, 20.0, &mut rng)).unwrap());
        }
        // Another scene's picture (a fixed derangement: the next one).
        other.add(&check(s, &images[(i + 1) % images.len()]).unwrap());
    }
    eprintln!("{}", clean.report("clean 32x32"));
    eprintln!("{}", noisy.report("blur 3x3 + noise sigma 10"));
    eprintln!("{}", other.report("another prompt's image"));
    eprintln!("{}", heavy.report("report only: 5x5 blur + noise sigma 20"));
    assert!(
        clean.rate() >= 0.999,
        "{}\n{}",
        clean.report("clean"),
        failures.join("\n")
    );
    assert!(noisy.rate() >= 0.99, "{}", noisy.report("noisy"));
    assert!(
        (0.001..0.015).contains(&other.rate()),
        "{}",
        other.report("other")
    );
    assert!(other.score_sum / (N as f64) < 0.8);
    assert!(heavy.rate() >= 0.5, "{}", heavy.report("heavy"));

    // Other resolutions: the checker works in canvas units.
    let mut big = Tally::default();
    let o64 = RenderOptions {
        size: 64,
        supersample: 2,
    };
    for (i, s) in scenes.iter().take(300).enumerate() {
        big.add(&check(s, &render_prompt(s, i as u64, &o64).unwrap().1).unwrap());
    }
    eprintln!("{}", big.report("clean 64x64"));
    assert!(big.rate() >= 0.99, "{}", big.report("64x64"));
}

#[test]
fn checker_grades_specific_mistakes() {
    let opts = RenderOptions::default();
    let want = Scene::parse("a large red square at the top left on a white background").unwrap();
    let variant = |text: &str| {
        let s = Scene::parse(text).unwrap();
        check(&want, &render_prompt(&s, 3, &opts).unwrap().1).unwrap()
    };
    let right = variant("a large red square at the top left on a white background");
    assert!(right.all_correct && right.score == 1.0);
    let cases = [
        (
            "a large blue square at the top left on a white background",
            Attribute::Color,
        ),
        (
            "a large red circle at the top left on a white background",
            Attribute::Shape,
        ),
        (
            "a small red square at the top left on a white background",
            Attribute::Size,
        ),
        (
            "a large red square at the bottom right on a white background",
            Attribute::Position,
        ),
        (
            "a large red square at the top left on a black background",
            Attribute::Background,
        ),
    ];
    for (text, wrong) in cases {
        let r = variant(text);
        for (a, ok) in &r.attributes {
            assert_eq!(*ok, *a != wrong, "{text}: {a:?} in {:?}", r.attributes);
        }
        assert!(
            r.score < 1.0 && r.score >= 0.6,
            "{text}: one wrong of five: {}",
            r.score
        );
    }
    // Position credit falls with grid distance.
    let near = variant("a large red square at the top on a white background");
    let far = variant("a large red square at the bottom right on a white background");
    assert!(near.score > far.score, "{} vs {}", near.score, far.score);
    // Relations, both ways.
    let rel = Scene::parse("a red circle left of a blue square").unwrap();
    let img = |t: &str| {
        render_prompt(&Scene::parse(t).unwrap(), 4, &opts)
            .unwrap()
            .1
    };
    assert_eq!(
        check(&rel, &img("a red circle left of a blue square"))
            .unwrap()
            .get(Attribute::Relation),
        Some(true)
    );
    assert_eq!(
        check(&rel, &img("a red circle right of a blue square"))
            .unwrap()
            .get(Attribute::Relation),
        Some(false)
    );
    let r = check(&rel, &img("a red circle above a blue square")).unwrap();
    assert_eq!(
        r.get(Attribute::Relation),
        Some(false),
        "above is not left of"
    );
    // An empty picture: no object, every object attribute wrong, score from the background only.
    let blank = RgbImage {
        width: 32,
        height: 32,
        data: [240u8, 240, 240].repeat(1024),
    };
    let r = check(&want, &blank).unwrap();
    assert!(r.reading.objects.is_empty());
    assert_eq!(r.score, 0.2);
    let bad = RgbImage {
        width: 32,
        height: 32,
        data: vec![0; 10],
    };
    assert!(check(&want, &bad)
        .unwrap_err()
        .to_string()
        .contains("expected 3072"));
}

#[test]
fn annotators_follow_bradley_terry() {
    // One rater, no spread: P(i above j) = σ((s_i − s_j)/T) and, for the top of three,
    // Plackett–Luce's softmax(s/T).
    let m = AnnotatorModel {
        temperature: 0.1,
        raters: 1,
        rater_spread: 0.0,
        ..Default::default()
    };
    let scores = [0.5, 0.7, 0.6];
    let draws = 20_000u64;
    let mut above = 0usize;
    let mut top = [0usize; 3];
    for d in 0..draws {
        let (_, ranks) = m.rank("a red circle", &scores, d);
        above += (ranks[1] < ranks[0]) as usize;
        top[ranks.iter().position(|&r| r == 1).unwrap()] += 1;
    }
    let sig = 1.0 / (1.0 + (-(0.7f64 - 0.5) / 0.1).exp());
    let got = above as f64 / draws as f64;
    // Binomial sd 0.0023: tolerance 0.01 is > 4 sd.
    assert!((got - sig).abs() < 0.01, "P(0.7 above 0.5) {got} vs {sig}");
    let z: f64 = scores.iter().map(|s| (s / 0.1).exp()).sum();
    for i in 0..3 {
        let want = (scores[i] / 0.1).exp() / z;
        let got = top[i] as f64 / draws as f64;
        assert!((got - want).abs() < 0.012, "top {i}: {got} vs {want}");
    }
    // Equal scores tie; the pool's temperatures spread log-normally around the setting.
    let (_, r) = m.rank("x", &[1.0, 0.2, 1.0, 1.0], 0);
    assert_eq!(r[0], r[2]);
    assert_eq!(r[0], r[3]);
    assert!(r[1] > r[0]);
    let pool = AnnotatorModel::default().rater_temperatures();
    assert_eq!(pool.len(), 8);
    assert!(pool.iter().all(|t| *t > 0.01 && *t < 1.0), "{pool:?}");
    assert!(pool.windows(2).any(|w| w[0] != w[1]));
}

/// 4–9 images per prompt: clean renders and renders of perturbed scenes (wrong colour,
/// shape, position or relation), standing in for a model's good and bad samples.
fn groups(n: usize) -> Vec<PromptGroup> {
    let scenes = PromptSampler::with_seed(21).distinct(None, n).unwrap();
    let opts = RenderOptions::default();
    let mut rng = WorldRng::new(2);
    scenes
        .iter()
        .enumerate()
        .map(|(g, s)| {
            let count = 4 + g % 6;
            let images = (0..count)
                .map(|k| {
                    let seed = (g * 10 + k) as u64;
                    let drawn = if rng.bernoulli(0.5) {
                        *s
                    } else {
                        perturb(s, &mut rng)
                    };
                    render_prompt(&drawn, seed, &opts).unwrap().1
                })
                .collect();
            PromptGroup {
                prompt: s.to_string(),
                images,
                text_chunks: Vec::new(),
            }
        })
        .collect()
}

fn perturb(s: &Scene, rng: &mut WorldRng) -> Scene {
    let mut out = *s;
    for _ in 0..100 {
        out = *s;
        match &mut out {
            Scene::One {
                object, position, ..
            } => match rng.below(3) {
                0 => object.color = rng.choose(&Color::OBJECT),
                1 => object.shape = rng.choose(&Shape::ALL),
                _ => *position = Some(rng.choose(&Position::ALL)),
            },
            Scene::Two {
                first, relation, ..
            } => match rng.below(2) {
                0 => first.shape = rng.choose(&Shape::ALL),
                _ => *relation = rng.choose(&dpoimg::world::Relation::ALL),
            },
        }
        if out != *s && out.validate().is_ok() {
            break;
        }
    }
    out
}

#[test]
fn imagereward_layout_reads_back_with_the_expected_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("world-db");
    let gs = groups(60);
    let summary = write_imagereward(&root, &gs, &AnnotatorModel::default()).unwrap();
    let by_path: HashMap<String, &dpoimg::world::WrittenRow> = summary
        .rows
        .iter()
        .map(|r| (r.image_path.clone(), r))
        .collect();
    let mut prompts_seen: HashMap<String, Split> = HashMap::new();
    let (mut agree, mut total) = (0usize, 0usize);
    for split in Split::ALL {
        let counts = &summary.splits[&split];
        // Expected pairs recomputed from the written ranks, independently of the summary.
        let mut ranks: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
        for r in summary.rows.iter().filter(|r| r.split == split) {
            ranks.entry(&r.prompt_id).or_default().push(r.rank);
            assert_eq!(Split::of_prompt(&r.prompt), split);
            if let Some(prev) = prompts_seen.insert(r.prompt.clone(), split) {
                assert_eq!(prev, split, "{} in two splits", r.prompt);
            }
        }
        let (mut pairs, mut ties) = (0, 0);
        for rs in ranks.values() {
            for a in 0..rs.len() {
                for b in a + 1..rs.len() {
                    if rs[a] == rs[b] {
                        ties += 1
                    } else {
                        pairs += 1
                    }
                }
            }
        }
        assert_eq!((pairs, ties), (counts.pairs, counts.ties), "{split:?}");
        assert_eq!(ranks.len(), counts.prompts);
        let opts = LoadOptions {
            split: Some(split.name().to_string()),
            check_images: true,
            ..Default::default()
        };
        let (loaded, report) = load_pairs(&root, &opts).unwrap();
        eprintln!("{split:?}: {report}");
        assert_eq!(report.rows_read, counts.rows);
        assert_eq!(report.pairs, counts.pairs);
        assert_eq!(report.skipped(dpoimg::data::SkipReason::Tie), counts.ties);
        for p in &loaded {
            let key = |src: &ImageSource| match src {
                ImageSource::File(f) => f.strip_prefix(&root).unwrap().display().to_string(),
                other => panic!("expected loose files, got {}", other.describe()),
            };
            let (w, l) = (by_path[&key(&p.chosen)], by_path[&key(&p.rejected)]);
            assert!(w.rank < l.rank);
            assert_eq!(p.prompt, w.prompt);
            total += 1;
            agree += (w.checker_score > l.checker_score) as usize;
        }
    }
    assert_eq!(prompts_seen.len(), 60);
    assert!(summary.splits[&Split::Train].pairs > 0);
    // Annotators mostly agree with the checker, but not always (rater noise).
    let rate = agree as f64 / total as f64;
    eprintln!("annotator agreement with the checker: {rate:.3} of {total} pairs");
    assert!((0.65..0.95).contains(&rate), "{rate}");

    // Bad inputs: a non-empty folder, too few images, a duplicate prompt, a foreign prompt.
    let e = write_imagereward(&root, &gs[..1], &AnnotatorModel::default()).unwrap_err();
    assert!(e.to_string().contains("not empty"), "{e}");
    let mut few = gs[..1].to_vec();
    few[0].images.truncate(3);
    let e = write_imagereward(&dir.path().join("a"), &few, &AnnotatorModel::default()).unwrap_err();
    assert!(e.to_string().contains("4 to 9"), "{e}");
    let dup = vec![gs[0].clone(), gs[0].clone()];
    let e = write_imagereward(&dir.path().join("b"), &dup, &AnnotatorModel::default()).unwrap_err();
    assert!(e.to_string().contains("appears twice"), "{e}");
    let mut foreign = gs[..1].to_vec();
    foreign[0].prompt = "a photo of a cat".into();
    let e =
        write_imagereward(&dir.path().join("c"), &foreign, &AnnotatorModel::default()).unwrap_err();
    assert!(e.to_string().contains("photo"), "{e}");
    let bad = AnnotatorModel {
        temperature: 0.0,
        ..Default::default()
    };
    let e = write_imagereward(&dir.path().join("d"), &gs[..1], &bad).unwrap_err();
    assert!(e.to_string().contains("temperature"), "{e}");
}

/// Each image's text chunks (a sampled image's provenance) reach the dataset's PNG unchanged and
/// in order, next to the same pixels; images given none get none; a count that does not match
/// the images is refused before anything is written.
#[test]
fn annotate_keeps_each_images_text_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let mut gs = groups(2);
    let chunks = |k: usize| {
        vec![
            ("prompt".to_string(), format!("image {k}")),
            ("guidance".to_string(), "1".to_string()),
            ("seed".to_string(), (100 + k).to_string()),
        ]
    };
    gs[0].text_chunks = (0..gs[0].images.len()).map(chunks).collect();
    let root = dir.path().join("ds");
    let summary = write_imagereward(&root, &gs, &AnnotatorModel::default()).unwrap();
    let n0 = gs[0].images.len();
    let first: Vec<_> = summary
        .rows
        .iter()
        .filter(|r| r.prompt == gs[0].prompt)
        .collect();
    assert_eq!(first.len(), n0);
    for (k, row) in first.iter().enumerate() {
        let bytes = std::fs::read(root.join(&row.image_path)).unwrap();
        assert_eq!(
            dpoimg::provenance::read_png_text(&bytes).unwrap(),
            chunks(k)
        );
        let pixels = dpoimg::data::decode_rgb8(&bytes).unwrap();
        assert_eq!(
            pixels.data, gs[0].images[k].data,
            "image {k}'s pixels changed"
        );
    }
    for row in summary.rows.iter().filter(|r| r.prompt == gs[1].prompt) {
        let bytes = std::fs::read(root.join(&row.image_path)).unwrap();
        assert!(dpoimg::provenance::read_png_text(&bytes)
            .unwrap()
            .is_empty());
    }

    let mut short = gs[..1].to_vec();
    short[0].text_chunks.pop();
    let out = dir.path().join("short");
    let e = write_imagereward(&out, &short, &AnnotatorModel::default()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("{n0} images but {} lists", n0 - 1)) && msg.contains("one list"),
        "{msg}"
    );
    assert!(!out.exists(), "nothing may be written for a refused group");
}

fn dpoimg(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dpoimg"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_prompts_render_check_annotate() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, a, err) = dpoimg(&[
        "world", "prompts", "--count", "6", "--seed", "5", "--split", "test",
    ]);
    assert!(ok, "{err}");
    let prompts: Vec<&str> = a.lines().collect();
    assert_eq!(prompts.len(), 6);
    assert!(prompts.iter().all(|p| Split::of_prompt(p) == Split::Test));
    let (_, b, _) = dpoimg(&[
        "world", "prompts", "--count", "6", "--seed", "5", "--split", "test",
    ]);
    assert_eq!(a, b);
    let list = dir.path().join("prompts.txt");
    std::fs::write(&list, &a).unwrap();
    let out = dir.path().join("imgs");
    let (ok, _, err) = dpoimg(&[
        "world",
        "render",
        "--prompts",
        list.to_str().unwrap(),
        "--per-prompt",
        "4",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let index = out.join("index.json");
    let (ok, json, err) = dpoimg(&["world", "check", "--index", index.to_str().unwrap()]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["summary"]["images"], 24);
    assert_eq!(v["summary"]["all_correct"], 1.0);
    // A wrong prompt for a rendered file fails the check.
    let first = out.join("00000-0.png");
    let (ok, json, _) = dpoimg(&[
        "world",
        "check",
        "--prompt",
        "a cyan triangle at the bottom right on a black background",
        first.to_str().unwrap(),
    ]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(
        v["summary"]["all_correct"].as_f64().unwrap() < 1.0 || prompts[0].contains("cyan triangle")
    );
    let db = dir.path().join("db");
    let (ok, json, err) = dpoimg(&[
        "world",
        "annotate",
        "--index",
        index.to_str().unwrap(),
        "-o",
        db.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["splits"]["test"]["prompts"], 6);
    // A WebP (or JPEG) source has no PNG text chunks: it is annotated all the same, with none.
    let webp = dir.path().join("webp");
    std::fs::create_dir_all(&webp).unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/assets/score-images/square.webp");
    std::fs::copy(src, webp.join("s.webp")).unwrap();
    let entry = serde_json::json!({"file": "s.webp", "prompt": prompts[0]});
    let webp_index = webp.join("index.json");
    std::fs::write(
        &webp_index,
        serde_json::json!({"images": vec![entry; 4]}).to_string(),
    )
    .unwrap();
    let webp_db = dir.path().join("webp-db");
    let (ok, _, err) = dpoimg(&[
        "world",
        "annotate",
        "--index",
        webp_index.to_str().unwrap(),
        "-o",
        webp_db.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let written = webp_db.join("images/test/test_1/000000-0.png");
    let text = dpoimg::provenance::read_png_text(&std::fs::read(written).unwrap()).unwrap();
    assert!(text.is_empty(), "{text:?}");
    // All clean renders score 1: every pair ties, so the loader finds no pairs.
    let e = load_pairs(
        &db,
        &LoadOptions {
            split: Some("test".into()),
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("24 rows read, 0 pairs; skipped 36 tie pairs"),
        "{e}"
    );
    // Bad input is named.
    let (ok, _, err) = dpoimg(&[
        "world",
        "render",
        "--prompt",
        "a blue dog",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("a blue dog") && err.contains("shape"), "{err}");
}
