//! Errors: [`DaemonError`] for start-up (config, socket, engine), [`ApiError`] for one request
//! (an HTTP status, a stable machine-readable `code`, and a message that names the fix).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::path::PathBuf;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("config: {0}")]
    Config(String),
    #[error("socket {path}: {message}")]
    Socket { path: PathBuf, message: String },
    #[error("engine: {0}")]
    Engine(#[from] dpoimg::EngineError),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
}

/// A request's failure. Sent as `{"error": {"code", "message"}}` with `status`, or as the final
/// `{"event": "error", ...}` line of a stream that already started.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// Maps engine errors to request errors: bad requests are the caller's (400), cancellation is
/// reported as such, the rest are the daemon's (500).
impl From<dpoimg::EngineError> for ApiError {
    fn from(e: dpoimg::EngineError) -> Self {
        use dpoimg::EngineError as E;
        match &e {
            E::InvalidRequest { .. } => ApiError::bad_request("invalid_request", e.to_string()),
            E::Cancelled => ApiError::new(StatusCode::OK, "cancelled", "the request was cancelled"),
            E::Scheduler(_) => ApiError::bad_request("invalid_request", e.to_string()),
            E::Lora(_) => ApiError::bad_request("adapter_invalid", e.to_string()),
            _ => ApiError::internal(e.to_string()),
        }
    }
}
