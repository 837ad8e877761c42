//! The run's metrics log: one JSON object per optimiser step in `<run>/metrics.jsonl`, appended
//! and flushed as the run goes. On resume the file is cut back to the checkpoint's step, so a
//! resumed run's log has the same lines as an uninterrupted one (timings aside).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::FinetuneError;

/// What one optimiser step reports (averaged over its micro-batches).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct StepMetrics {
    /// 1-based optimiser step.
    pub step: usize,
    pub total_steps: usize,
    pub loss: f64,
    /// Fraction of pairs where the model beats the reference on the preferred image by more
    /// than on the rejected one (DPO; 0 for SFT).
    pub implicit_acc: f64,
    pub model_mse: f64,
    pub ref_mse: f64,
    pub reward_margin: f64,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub pairs_seen: u64,
    /// Wall time of this step in seconds.
    pub step_seconds: f64,
}

fn io(path: &Path, e: impl std::fmt::Display) -> FinetuneError {
    FinetuneError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Appends to `metrics.jsonl`.
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
    lines: usize,
}

impl MetricsLog {
    /// Opens the log keeping its first `keep` lines (all others belong to steps after the
    /// checkpoint being resumed, or to a run started afresh when `keep = 0`).
    pub fn open(run: &Path, keep: usize) -> Result<Self, FinetuneError> {
        let path = run.join("metrics.jsonl");
        let mut kept = Vec::new();
        if keep > 0 {
            let f = std::fs::File::open(&path).map_err(|e| io(&path, e))?;
            for line in std::io::BufReader::new(f).lines().take(keep) {
                kept.extend(line.map_err(|e| io(&path, e))?.into_bytes());
                kept.push(b'\n');
            }
        }
        crate::fsutil::atomic_write(&path, &kept).map_err(|e| io(&path, e))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        let lines = kept.iter().filter(|&&b| b == b'\n').count();
        Ok(MetricsLog { path, file, lines })
    }

    pub fn append(&mut self, m: &StepMetrics) -> Result<(), FinetuneError> {
        self.append_json(m)
    }

    /// Appends any serialisable record as one line (DPOK logs its own metrics type).
    pub fn append_json<T: Serialize>(&mut self, m: &T) -> Result<(), FinetuneError> {
        let mut line = serde_json::to_vec(m).expect("metrics serialise");
        line.push(b'\n');
        self.file.write_all(&line).map_err(|e| io(&self.path, e))?;
        self.file.flush().map_err(|e| io(&self.path, e))?;
        self.lines += 1;
        Ok(())
    }

    /// Makes the appended lines durable (before a checkpoint names them).
    pub fn sync(&self) -> Result<(), FinetuneError> {
        self.file.sync_data().map_err(|e| io(&self.path, e))
    }

    pub fn lines(&self) -> usize {
        self.lines
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads a metrics log back (plots, tests, the daemon's job status).
pub fn read(path: &Path) -> Result<Vec<StepMetrics>, FinetuneError> {
    let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| io(path, format!("line {}: {e}", i + 1))))
        .collect()
}
