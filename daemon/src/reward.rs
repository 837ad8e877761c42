//! `POST /v1/score`: ImageReward scores with the reward bundle given by `--reward DIR`, opened
//! once at start (the model is `Send + Sync`; requests score on the blocking pool).
//!
//! Images travel as their encoded file bytes (PNG, JPEG or WebP, base64) rather than as paths, so
//! the daemon never reads a client-chosen file; the body has its own limit
//! (`--max-score-body-bytes`), and each image is grouped by prompt and scored exactly as
//! `dpoimg score` does ([`dpoimg::score::cli::score_grouped`]), so both print the same numbers.

use crate::config::Config;
use crate::error::{ApiError, DaemonError};
use crate::server::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::Engine as _;
use dpoimg::score::{RewardModel, RgbRef, ScoreError, ScoreOptions};
use serde::Deserialize;
use std::sync::Arc;

/// Most images in one `/v1/score` request.
pub const MAX_SCORE_IMAGES: usize = 1024;

/// The opened reward bundle and its identity.
pub struct Reward {
    pub model: RewardModel,
    /// sha256 of `reward.json` (which pins every file's sha256), so a client can check that the
    /// daemon scores with the bundle it means.
    pub sha256: String,
}

/// Opens `--reward DIR` with the daemon's engine options; `None` without `--reward`.
pub async fn open(config: &Config) -> Result<Option<Arc<Reward>>, DaemonError> {
    let Some(dir) = config.reward.clone() else {
        return Ok(None);
    };
    let options = ScoreOptions {
        session: dpoimg::runtime::SessionOptions {
            device: config.device,
            intra_threads: config.threads,
            ..Default::default()
        },
        verify: if config.no_verify {
            dpoimg::bundle::Verify::Quick
        } else {
            dpoimg::bundle::Verify::Full
        },
        ort_library: config.ort_lib.clone(),
        ..Default::default()
    };
    let d = dir.clone();
    let opened = tokio::task::spawn_blocking(move || -> Result<Reward, String> {
        let model = RewardModel::open(&d, &options).map_err(|e| e.to_string())?;
        let sha256 = dpoimg::hash::sha256_file(&model.dir().join("reward.json"))
            .map_err(|e| e.to_string())?;
        Ok(Reward { model, sha256 })
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    match opened {
        Ok(r) => Ok(Some(Arc::new(r))),
        Err(message) => Err(DaemonError::Io {
            path: dir,
            message: format!("opening the reward bundle (--reward): {message}"),
        }),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreBody {
    images: Vec<ScoreItem>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreItem {
    prompt: String,
    /// The image file's bytes (PNG, JPEG or WebP, recognised by content), base64.
    data_base64: String,
    /// The client's name for the image (a file name), echoed and used in error messages.
    #[serde(default)]
    name: Option<String>,
}

/// `POST /v1/score`: `{"images": [{"prompt", "data_base64", "name"?}]}` →
/// `{"reward", "reward_dir", "reward_sha256", "count", "mean", "results": [{"name", "prompt",
/// "score"}]}`, results in request order.
pub async fn score(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = s.config.max_score_body_bytes;
    let b: ScoreBody = crate::server::parse_json(body, limit).map_err(|mut e| {
        if e.code == "body_too_large" {
            e.message = format!(
                "request body is over the daemon's /v1/score limit of {limit} bytes (--max-score-body-bytes); send fewer or smaller images per request"
            );
        }
        e
    })?;
    let Some(reward) = s.reward.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "reward_not_configured",
            "this daemon has no reward model: start dpoimgd with --reward DIR (a reward bundle, tools/export_imagereward.py)",
        ));
    };
    if b.images.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_request",
            "`images` is empty: send at least one {\"prompt\", \"data_base64\"}",
        ));
    }
    if b.images.len() > MAX_SCORE_IMAGES {
        return Err(ApiError::bad_request(
            "limit_exceeded",
            format!(
                "{} images in one request; at most {MAX_SCORE_IMAGES}",
                b.images.len()
            ),
        ));
    }
    let label = |i: usize, it: &ScoreItem| match &it.name {
        Some(n) => format!("images[{i}] ({n})"),
        None => format!("images[{i}]"),
    };
    for (i, it) in b.images.iter().enumerate() {
        if it.prompt.len() > dpoimg::limits::MAX_PROMPT_BYTES {
            return Err(ApiError::bad_request(
                "limit_exceeded",
                format!(
                    "{}: prompt is {} bytes; at most {}",
                    label(i, it),
                    it.prompt.len(),
                    dpoimg::limits::MAX_PROMPT_BYTES
                ),
            ));
        }
    }
    tokio::task::spawn_blocking(move || {
        let mut decoded = Vec::with_capacity(b.images.len());
        for (i, it) in b.images.iter().enumerate() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(it.data_base64.as_bytes())
                .map_err(|e| {
                    ApiError::bad_request(
                        "invalid_image",
                        format!("{}: `data_base64` is not base64: {e}", label(i, it)),
                    )
                })?;
            decoded.push(dpoimg::data::decode_rgb8(&bytes).map_err(|e| {
                ApiError::bad_request("invalid_image", format!("{}: {e}", label(i, it)))
            })?);
        }
        let prompts: Vec<&str> = b.images.iter().map(|it| it.prompt.as_str()).collect();
        let refs: Vec<RgbRef<'_>> = decoded.iter().map(RgbRef::from).collect();
        let scores = dpoimg::score::cli::score_grouped(&reward.model, &prompts, &refs).map_err(
            |e| match e {
                ScoreError::BadImage { .. } | ScoreError::Input(_) => {
                    ApiError::bad_request("invalid_image", e.to_string())
                }
                other => ApiError::internal(other.to_string()),
            },
        )?;
        let mean = scores.iter().map(|s| *s as f64).sum::<f64>() / scores.len() as f64;
        let results: Vec<serde_json::Value> = b
            .images
            .iter()
            .zip(&scores)
            .map(|(it, s)| serde_json::json!({"name": it.name, "prompt": it.prompt, "score": s}))
            .collect();
        Ok(Json(serde_json::json!({
            "reward": reward.model.manifest().name,
            "reward_dir": reward.model.dir(),
            "reward_sha256": reward.sha256,
            "count": results.len(),
            "mean": mean,
            "results": results,
        })))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
}
