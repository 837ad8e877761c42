//! Prompt tokenisation with the bundle's `tokenizer.json` (CLIP BPE), padded and truncated to the
//! text encoder's length exactly as diffusers calls the tokenizer
//! (`padding="max_length", truncation=True`): BOS, at most `max_length - 2` tokens, EOS, then pad.

use std::path::{Path, PathBuf};
use tokenizers::{PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("{path}: cannot load tokenizer: {message}. Fix: the bundle's tokenizer.json must be a Hugging Face tokenizers file")]
    Load { path: PathBuf, message: String },
    #[error("tokenizing prompt {prompt:?}: {message}")]
    Encode { prompt: String, message: String },
}

/// A tokenizer fixed to one length and pad id.
pub struct PromptTokenizer {
    inner: Tokenizer,
    max_length: usize,
}

/// Ids of one prompt plus whether anything was cut off.
#[derive(Debug, Clone)]
pub struct TokenizedPrompt {
    pub ids: Vec<i64>,
    pub truncated: bool,
}

impl PromptTokenizer {
    pub fn from_file(path: &Path, max_length: usize, pad_id: u32) -> Result<Self, TokenizeError> {
        let mut inner = Tokenizer::from_file(path).map_err(|e| TokenizeError::Load {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let pad_token = inner
            .id_to_token(pad_id)
            .ok_or_else(|| TokenizeError::Load {
                path: path.to_path_buf(),
                message: format!(
                    "pad id {pad_id} (bundle.json text_encoder.pad_id) is not in the vocabulary"
                ),
            })?;
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token,
        }));
        inner
            .with_truncation(Some(TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(|e| TokenizeError::Load {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(PromptTokenizer { inner, max_length })
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// `max_length` ids for one prompt.
    pub fn encode(&self, prompt: &str) -> Result<TokenizedPrompt, TokenizeError> {
        let enc = self
            .inner
            .encode(prompt, true)
            .map_err(|e| TokenizeError::Encode {
                prompt: prompt.to_string(),
                message: e.to_string(),
            })?;
        let ids: Vec<i64> = enc.get_ids().iter().map(|&i| i64::from(i)).collect();
        debug_assert_eq!(ids.len(), self.max_length);
        let truncated = !enc.get_overflowing().is_empty();
        if truncated {
            tracing::warn!(
                max_length = self.max_length,
                "prompt longer than the text encoder's {} tokens was truncated (as diffusers does)",
                self.max_length
            );
        }
        Ok(TokenizedPrompt { ids, truncated })
    }
}
