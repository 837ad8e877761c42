//! Inputs of an evaluation: the prompt file and the arm specifications.

use super::EvalError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One evaluation prompt; `category` comes from a TSV line `category<TAB>prompt`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptEntry {
    pub category: Option<String>,
    pub prompt: String,
}

/// Reads a prompt file: UTF-8, one prompt per line, or `category<TAB>prompt` (the first tab
/// splits; the prompt may contain more tabs). Blank lines and lines starting with `#` are
/// skipped; surrounding whitespace is trimmed.
pub fn read_prompts(path: &Path) -> Result<Vec<PromptEntry>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::PromptFile {
        path: path.to_path_buf(),
        message: if e.kind() == std::io::ErrorKind::NotFound {
            "not found; give a file with one prompt per line (or `category<TAB>prompt`)".into()
        } else {
            e.to_string()
        },
    })?;
    let mut out = Vec::new();
    for (no, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (category, prompt) = match line.split_once('\t') {
            Some((c, p)) => (
                Some(c.trim().to_string()).filter(|c| !c.is_empty()),
                p.trim(),
            ),
            None => (None, line.trim()),
        };
        if prompt.is_empty() {
            return Err(EvalError::PromptFile {
                path: path.to_path_buf(),
                message: format!("line {}: category without a prompt after the tab", no + 1),
            });
        }
        out.push(PromptEntry {
            category,
            prompt: prompt.to_string(),
        });
    }
    if out.is_empty() {
        return Err(EvalError::PromptFile {
            path: path.to_path_buf(),
            message: "has no prompts (only blank or `#` lines); add one prompt per line".into(),
        });
    }
    Ok(out)
}

/// One adapter of an arm as given on the command line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmAdapter {
    pub path: PathBuf,
    pub strength: f32,
}

/// An arm: a name and the adapters composed for it (none = the base model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmSpec {
    pub name: String,
    pub adapters: Vec<ArmAdapter>,
}

/// Parses `NAME`, `NAME=` (base model) or `NAME=ADAPTER[:S][,ADAPTER[:S]]...`. Names are
/// `[A-Za-z0-9_.-]+` because they become directory names.
pub fn parse_arm(spec: &str) -> Result<ArmSpec, EvalError> {
    let bad = |m: String| EvalError::Arm {
        spec: spec.to_string(),
        message: m,
    };
    let (name, rest) = spec.split_once('=').unwrap_or((spec, ""));
    let name = name.trim();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        || name.starts_with('.')
    {
        return Err(bad("the arm name must be letters, digits, `_`, `-` or `.` (e.g. `base` or `dpo=adapter.safetensors:0.8`)".into()));
    }
    let mut adapters = Vec::new();
    for part in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (path, strength) = crate::lora::split_adapter_arg(part);
        if !strength.is_finite() {
            return Err(bad(format!("strength of {path} is not finite")));
        }
        adapters.push(ArmAdapter {
            path: PathBuf::from(path),
            strength,
        });
    }
    Ok(ArmSpec {
        name: name.to_string(),
        adapters,
    })
}

/// Checks a set of arms: at least one, unique names.
pub fn check_arms(arms: &[ArmSpec]) -> Result<(), EvalError> {
    if arms.is_empty() {
        return Err(EvalError::Arm {
            spec: String::new(),
            message: "no arms; give e.g. `--arm base --arm dpo=dpo.safetensors`".into(),
        });
    }
    for (i, a) in arms.iter().enumerate() {
        if arms[..i].iter().any(|b| b.name == a.name) {
            return Err(EvalError::Arm {
                spec: a.name.clone(),
                message: "arm name used twice; names must be unique".into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arms_parse() {
        assert_eq!(parse_arm("base").unwrap().adapters, vec![]);
        assert_eq!(parse_arm("base=").unwrap().adapters, vec![]);
        let a = parse_arm("dpo=a.safetensors:0.5,dir/b.safetensors").unwrap();
        assert_eq!(a.name, "dpo");
        assert_eq!(
            a.adapters[0],
            ArmAdapter {
                path: "a.safetensors".into(),
                strength: 0.5
            }
        );
        assert_eq!(
            a.adapters[1],
            ArmAdapter {
                path: "dir/b.safetensors".into(),
                strength: 1.0
            }
        );
        assert!(parse_arm("=x").is_err());
        assert!(parse_arm("a/b=x").is_err());
        assert!(check_arms(&[parse_arm("a").unwrap(), parse_arm("a=x").unwrap()]).is_err());
    }
}
