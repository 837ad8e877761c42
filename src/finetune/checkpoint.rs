//! Checkpoints: everything a run needs to continue exactly where it stopped — LoRA weights,
//! AdamW moments and step, and the step counter (data order and noise are functions of the seed
//! and the step, see `order.rs`, so the counter is the whole RNG and data-cursor state).
//!
//! Layout: `<run>/checkpoints/step-00000100/{state.json, tensors.safetensors}` and
//! `<run>/checkpoints/latest` naming the newest. A checkpoint is written into a temporary
//! directory, fsynced, renamed into place, and only then named by `latest` (also atomic), so a
//! kill at any instant leaves the previous checkpoint intact and usable.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use super::FinetuneError;

pub const FORMAT: &str = "dpoimg-checkpoint/1";

/// The small JSON part of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointState {
    pub format: String,
    /// Optimiser steps completed.
    pub step: usize,
    /// [`super::DpoConfig::fingerprint`] of the run.
    pub fingerprint: String,
    /// LoRA `alpha / rank` of every module.
    pub lora_scale: f32,
    /// Lines of `metrics.jsonl` that belong to steps `< step`.
    pub metrics_lines: usize,
}

/// One module's tensors, host side.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleState {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub rank: usize,
    pub exp_avg_a: Vec<f32>,
    pub exp_avg_b: Vec<f32>,
    pub exp_avg_sq_a: Vec<f32>,
    pub exp_avg_sq_b: Vec<f32>,
}

/// A whole checkpoint in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub state: CheckpointState,
    pub modules: BTreeMap<String, ModuleState>,
}

fn io(path: &Path, e: impl std::fmt::Display) -> FinetuneError {
    FinetuneError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn bytes_of(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

pub fn dir_of(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

fn name_of(step: usize) -> String {
    format!("step-{step:08}")
}

/// Writes `ckpt` atomically and points `latest` at it; then removes all but the newest `keep`.
pub fn save(run: &Path, ckpt: &Checkpoint, keep: usize) -> Result<PathBuf, FinetuneError> {
    save_with_extras(run, ckpt, keep, &[])
}

/// [`save`] plus method-specific files `(name, bytes)` in the same directory, written and
/// fsynced inside the same atomic rename (DPOK keeps its replay buffer and baseline there).
pub fn save_with_extras(
    run: &Path,
    ckpt: &Checkpoint,
    keep: usize,
    extras: &[(&str, &[u8])],
) -> Result<PathBuf, FinetuneError> {
    let root = dir_of(run);
    std::fs::create_dir_all(&root).map_err(|e| io(&root, e))?;
    let name = name_of(ckpt.state.step);
    let fin = root.join(&name);
    let tmp = root.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;

    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (m, s) in &ckpt.modules {
        let out = s.b.len() / s.rank;
        let inp = s.a.len() / s.rank;
        for (suffix, shape, data) in [
            ("lora_A", vec![s.rank, inp], &s.a),
            ("lora_B", vec![out, s.rank], &s.b),
            ("exp_avg.lora_A", vec![s.rank, inp], &s.exp_avg_a),
            ("exp_avg.lora_B", vec![out, s.rank], &s.exp_avg_b),
            ("exp_avg_sq.lora_A", vec![s.rank, inp], &s.exp_avg_sq_a),
            ("exp_avg_sq.lora_B", vec![out, s.rank], &s.exp_avg_sq_b),
        ] {
            owned.push((format!("{m}.{suffix}"), shape, bytes_of(data)));
        }
    }
    let views: Vec<(String, TensorView<'_>)> = owned
        .iter()
        .map(|(k, shape, b)| {
            TensorView::new(Dtype::F32, shape.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| io(&tmp, e))
        })
        .collect::<Result<_, _>>()?;
    let blob = safetensors::serialize(views, None).map_err(|e| io(&tmp, e))?;
    let state = serde_json::to_vec_pretty(&ckpt.state).expect("state serialises");
    let result = (|| -> std::io::Result<()> {
        let files = [
            ("tensors.safetensors", blob.as_slice()),
            ("state.json", state.as_slice()),
        ];
        for (file, bytes) in extras.iter().chain(&files) {
            let mut f = std::fs::File::create(tmp.join(file))?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        sync_dir(&tmp)?;
        if fin.exists() {
            std::fs::remove_dir_all(&fin)?;
        }
        std::fs::rename(&tmp, &fin)?;
        sync_dir(&root)?;
        crate::fsutil::atomic_write(&root.join("latest"), name.as_bytes())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(io(&fin, e));
    }
    prune(&root, keep, &name);
    Ok(fin)
}

/// Completed checkpoints (those with a state file), oldest first.
fn list(root: &Path) -> Vec<(usize, PathBuf)> {
    let mut out: Vec<(usize, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            e.path()
                .join("state.json")
                .is_file()
                .then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    out
}

fn prune(root: &Path, keep: usize, newest: &str) {
    let all = list(root);
    let n = all.len();
    for (_, path) in all.into_iter().take(n.saturating_sub(keep)) {
        if path.file_name().is_some_and(|f| f != newest) {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
    // leftovers of runs killed while writing
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".step-") && name.contains(".tmp-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The newest checkpoint of a run, if any: the one `latest` names, else the highest complete one.
pub fn latest(run: &Path) -> Result<Option<PathBuf>, FinetuneError> {
    let root = dir_of(run);
    if !root.is_dir() {
        return Ok(None);
    }
    if let Ok(name) = std::fs::read_to_string(root.join("latest")) {
        let p = root.join(name.trim());
        if p.join("state.json").is_file() {
            return Ok(Some(p));
        }
    }
    Ok(list(&root).pop().map(|(_, p)| p))
}

/// Reads a checkpoint directory written by [`save`].
pub fn load(dir: &Path) -> Result<Checkpoint, FinetuneError> {
    let sp = dir.join("state.json");
    let text = std::fs::read(&sp).map_err(|e| io(&sp, e))?;
    let state: CheckpointState = serde_json::from_slice(&text)
        .map_err(|e| io(&sp, format!("not a checkpoint state: {e}")))?;
    if state.format != FORMAT {
        return Err(io(
            &sp,
            format!("format `{}`, this build reads `{FORMAT}`", state.format),
        ));
    }
    let tp = dir.join("tensors.safetensors");
    let bytes = std::fs::read(&tp).map_err(|e| io(&tp, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| io(&tp, e))?;
    let mut raw: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    for (name, t) in st.tensors() {
        if t.dtype() != Dtype::F32 {
            return Err(io(&tp, format!("tensor `{name}` is not float32")));
        }
        let data = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        raw.insert(name, (t.shape().to_vec(), data));
    }
    let mut modules = BTreeMap::new();
    let names: Vec<String> = raw
        .keys()
        .filter_map(|k| {
            k.strip_suffix(".lora_A")
                .filter(|m| !m.contains(".exp_avg"))
        })
        .map(str::to_string)
        .collect();
    for m in names {
        let mut take = |suffix: &str| {
            raw.remove(&format!("{m}.{suffix}"))
                .ok_or_else(|| io(&tp, format!("tensor `{m}.{suffix}` is missing")))
        };
        let (sa, a) = take("lora_A")?;
        let (_, b) = take("lora_B")?;
        let (_, exp_avg_a) = take("exp_avg.lora_A")?;
        let (_, exp_avg_b) = take("exp_avg.lora_B")?;
        let (_, exp_avg_sq_a) = take("exp_avg_sq.lora_A")?;
        let (_, exp_avg_sq_b) = take("exp_avg_sq.lora_B")?;
        modules.insert(
            m,
            ModuleState {
                rank: sa[0],
                a,
                b,
                exp_avg_a,
                exp_avg_b,
                exp_avg_sq_a,
                exp_avg_sq_b,
            },
        );
    }
    Ok(Checkpoint { state, modules })
}
