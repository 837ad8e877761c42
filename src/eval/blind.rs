//! Blind A/B export for a human panel and un-blinding of its votes.
//!
//! The export directory holds only what raters may see: `pairs.jsonl` (one
//! `{"id","prompt","left","right"}` per line, in a shuffled order) and `images/<id>-L.png` /
//! `-R.png`, re-encoded **without** provenance chunks (which would name the adapter). Sides are
//! randomised and ids drawn from a seeded PCG64, so an export is reproducible from its seed.
//! The key (which arm is on which side) goes to a separate file that must lie outside the
//! export directory.

use super::report::{EvalReport, HumanPair, HumanResults};
use super::{decode_png_rgb, io_err, EvalError};
use crate::stats::{binomtest, pcg64::Pcg64};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

pub const KEY_FORMAT: &str = "dpoimg-blind-key";

/// One line of `pairs.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlindPair {
    pub id: String,
    pub prompt: String,
    pub left: String,
    pub right: String,
}

/// The secret side of one pair.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyEntry {
    pub id: String,
    pub left_arm: String,
    pub right_arm: String,
    pub prompt_index: usize,
    pub image_index: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlindKey {
    pub format: String,
    pub version: u32,
    pub bundle_sha256: String,
    pub blind_seed: u64,
    pub pairs: Vec<KeyEntry>,
}

/// A rater's choice.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    Left,
    Right,
    Tie,
}

/// One line of a votes file; other fields (e.g. `rater`) are allowed and ignored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Vote {
    pub id: String,
    pub choice: Choice,
}

fn is_inside(dir: &Path, path: &Path) -> bool {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match (dir.canonicalize(), parent.canonicalize()) {
        (Ok(d), Ok(p)) => p.starts_with(d),
        _ => false,
    }
}

/// Writes the blinded pair set of every pair of arms × every (prompt, image) unit of `report`
/// (images read from `eval_dir`) into the new or empty directory `dir`, and the key to `key_path`.
pub fn blind_export(
    eval_dir: &Path,
    report: &EvalReport,
    dir: &Path,
    key_path: &Path,
    seed: u64,
) -> Result<BlindKey, EvalError> {
    if report.arms.len() < 2 {
        return Err(EvalError::Setting {
            field: "blind-export",
            message: "needs at least two arms to pair".into(),
        });
    }
    if dir.exists()
        && std::fs::read_dir(dir)
            .map_err(|e| io_err(dir, e))?
            .next()
            .is_some()
    {
        return Err(io_err(
            dir,
            "blind export directory is not empty; give a new directory",
        ));
    }
    std::fs::create_dir_all(dir.join("images")).map_err(|e| io_err(dir, e))?;
    if is_inside(dir, key_path) {
        return Err(EvalError::Key {
            path: key_path.to_path_buf(),
            message: "the key must not be inside the blind export directory (raters would see it)"
                .into(),
        });
    }
    // Units: (arm a, arm b, prompt, image).
    let mut units = Vec::new();
    for a in 0..report.arms.len() {
        for b in a + 1..report.arms.len() {
            for p in &report.prompts {
                for i in 0..report.settings.images_per_prompt as usize {
                    units.push((a, b, p.index, i));
                }
            }
        }
    }
    let mut rng = Pcg64::from_seed(seed);
    for k in (1..units.len()).rev() {
        let j = rng.integers(k as u64 + 1) as usize;
        units.swap(k, j);
    }
    let mut ids = HashSet::new();
    let mut lines = String::new();
    let mut key = Vec::new();
    for (a, b, p, i) in units {
        let id = loop {
            let id = format!("{:016x}", rng.next_u64());
            if ids.insert(id.clone()) {
                break id;
            }
        };
        let swap = rng.next_u64() >> 63 == 1;
        let (l, r) = if swap { (b, a) } else { (a, b) };
        let prompt = &report.prompts[p];
        let mut files = Vec::new();
        for (arm, side) in [(l, "L"), (r, "R")] {
            let name = &report.arms[arm].name;
            let rec = &prompt.images[name][i];
            let src = eval_dir.join(&rec.file);
            let bytes = std::fs::read(&src).map_err(|e| io_err(&src, e))?;
            if crate::hash::sha256_hex(&bytes) != rec.sha256 {
                return Err(io_err(
                    &src,
                    "changed since eval.json was written (sha256 differs); rerun `dpoimg eval`",
                ));
            }
            let img = decode_png_rgb(&bytes).ok_or_else(|| io_err(&src, "not an 8-bit RGB PNG"))?;
            let rel = format!("images/{id}-{side}.png");
            let png = crate::provenance::encode_png(&img, None).map_err(|e| io_err(&src, e))?;
            crate::fsutil::atomic_write(&dir.join(&rel), &png)
                .map_err(|e| io_err(&dir.join(&rel), e))?;
            files.push(rel);
        }
        let line = BlindPair {
            id: id.clone(),
            prompt: prompt.prompt.clone(),
            left: files[0].clone(),
            right: files[1].clone(),
        };
        lines.push_str(&serde_json::to_string(&line).expect("serialises"));
        lines.push('\n');
        key.push(KeyEntry {
            id,
            left_arm: report.arms[l].name.clone(),
            right_arm: report.arms[r].name.clone(),
            prompt_index: p,
            image_index: i,
            seed: prompt.images[&report.arms[l].name][i].seed,
        });
    }
    let pairs_path = dir.join("pairs.jsonl");
    crate::fsutil::atomic_write(&pairs_path, lines.as_bytes())
        .map_err(|e| io_err(&pairs_path, e))?;
    let key = BlindKey {
        format: KEY_FORMAT.into(),
        version: 1,
        bundle_sha256: report.bundle_sha256.clone(),
        blind_seed: seed,
        pairs: key,
    };
    let bytes = serde_json::to_vec_pretty(&key).expect("serialises");
    crate::fsutil::atomic_write(key_path, &bytes).map_err(|e| io_err(key_path, e))?;
    Ok(key)
}

fn read_key(path: &Path) -> Result<BlindKey, EvalError> {
    let bad = |m: String| EvalError::Key {
        path: path.to_path_buf(),
        message: m,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let key: BlindKey =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("not a blind key: {e}")))?;
    if key.format != KEY_FORMAT || key.version != 1 {
        return Err(bad(format!(
            "format {} v{} is not {KEY_FORMAT} v1",
            key.format, key.version
        )));
    }
    Ok(key)
}

/// Reads a votes file (JSONL, one `{"id": "...", "choice": "left"|"right"|"tie"}` per line;
/// blank lines skipped), un-blinds it with the key and stores the human win rates in `report`.
pub fn apply_votes(
    report: &mut EvalReport,
    votes_path: &Path,
    key_path: &Path,
) -> Result<(), EvalError> {
    let key = read_key(key_path)?;
    if key.bundle_sha256 != report.bundle_sha256 {
        return Err(EvalError::Key {
            path: key_path.to_path_buf(),
            message: "was made for another evaluation (bundle sha256 differs)".into(),
        });
    }
    let arms: Vec<&str> = report.arms.iter().map(|a| a.name.as_str()).collect();
    let order = |n: &str| arms.iter().position(|a| *a == n);
    let entries: HashMap<&str, &KeyEntry> = key.pairs.iter().map(|e| (e.id.as_str(), e)).collect();
    let text = std::fs::read_to_string(votes_path).map_err(|e| EvalError::Votes {
        path: votes_path.to_path_buf(),
        line: 0,
        message: e.to_string(),
    })?;
    // (a, b) in report order → (votes, a wins, b wins, ties)
    let mut tally: BTreeMap<(usize, usize), [u64; 4]> = BTreeMap::new();
    let mut count = 0;
    for (no, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |m: String| EvalError::Votes {
            path: votes_path.to_path_buf(),
            line: no + 1,
            message: m,
        };
        let v: Vote = serde_json::from_str(line).map_err(|e| {
            err(format!(
                "{e}; expected {{\"id\": \"<pair id>\", \"choice\": \"left\"|\"right\"|\"tie\"}}"
            ))
        })?;
        let e = entries.get(v.id.as_str()).ok_or_else(|| {
            err(format!(
                "unknown pair id {:?} (not in the key {})",
                v.id,
                key_path.display()
            ))
        })?;
        let (l, r) = match (order(&e.left_arm), order(&e.right_arm)) {
            (Some(l), Some(r)) => (l, r),
            _ => {
                return Err(err(format!(
                    "arms {} / {} of the key are not in this evaluation",
                    e.left_arm, e.right_arm
                )))
            }
        };
        let (a, b) = (l.min(r), l.max(r));
        let t = tally.entry((a, b)).or_default();
        t[0] += 1;
        let winner = match v.choice {
            Choice::Left => Some(l),
            Choice::Right => Some(r),
            Choice::Tie => None,
        };
        match winner {
            Some(w) if w == a => t[1] += 1,
            Some(_) => t[2] += 1,
            None => t[3] += 1,
        }
        count += 1;
    }
    if count == 0 {
        return Err(EvalError::Votes {
            path: votes_path.to_path_buf(),
            line: 0,
            message: "has no votes".into(),
        });
    }
    let mut pairs = Vec::new();
    for ((a, b), [votes, aw, bw, ties]) in tally {
        let t = if aw + bw > 0 {
            Some(binomtest(aw, aw + bw, report.settings.confidence)?)
        } else {
            None
        };
        pairs.push(HumanPair {
            a: arms[a].into(),
            b: arms[b].into(),
            votes,
            a_wins: aw,
            b_wins: bw,
            ties,
            win_rate: t.map(|t| t.proportion),
            p: t.map(|t| t.pvalue),
            ci_low: t.map(|t| t.ci_low),
            ci_high: t.map(|t| t.ci_high),
        });
    }
    let bytes = std::fs::read(votes_path).map_err(|e| io_err(votes_path, e))?;
    report.human = Some(HumanResults {
        votes_file: votes_path.display().to_string(),
        votes_sha256: crate::hash::sha256_hex(&bytes),
        pairs,
    });
    Ok(())
}
