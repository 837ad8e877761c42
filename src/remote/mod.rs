//! A client for `dpoimgd` (docs/daemon.md): HTTP/1.1 + JSON over the daemon's Unix socket, used
//! by `dpoimg --socket PATH ...` and usable by Rust applications.
//!
//! It lives in this crate, not in `dpoimgd`, because the daemon links this crate (the other way
//! round would be a cycle). HTTP is hyper's client, not a hand-written parser; every call runs on
//! a private current-thread tokio runtime, so the client is blocking and needs no runtime from its
//! caller (do not call it from inside an async task: `block_on` would nest).
//!
//! Every command first asks `GET /v1/version` and refuses a daemon that speaks another protocol
//! version (sccache's missing handshake caused years of "client/server mismatch" reports).
//! Errors name the socket and the fix: no socket ("is dpoimgd running?"), a stale socket, a
//! socket of another user, and the daemon's own `{"error": {"code", "message"}}` bodies, which
//! are shown verbatim.

pub mod cli;

use crate::CancelToken;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The daemon protocol this client speaks (`api` in `GET /v1/version`).
pub const API_VERSION: u64 = 1;

/// The environment variable `dpoimg` reads when `--socket` is not given.
pub const SOCKET_ENV: &str = "DPOIMG_SOCKET";

/// Errors of the daemon client.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("no daemon socket at {path}: is dpoimgd running? Start it with `dpoimgd --bundle DIR --socket {path}` (or drop --socket / unset DPOIMG_SOCKET to run locally)")]
    NoSocket { path: PathBuf },
    #[error("nothing is listening on {path} (a socket left by a daemon that died?): start dpoimgd again, it replaces a stale socket")]
    Refused { path: PathBuf },
    #[error("{path}: permission denied: the socket or its directory belongs to another user, and dpoimgd serves only the user that started it. Fix: use your own daemon's socket")]
    PermissionDenied { path: PathBuf },
    #[error("{path}: cannot connect: {message}")]
    Connect { path: PathBuf, message: String },
    #[error("talking to dpoimgd on {path}: {message}")]
    Protocol { path: PathBuf, message: String },
    /// The daemon's error answer or final `error` event, verbatim.
    #[error("dpoimgd answered {status}: {code}: {message}")]
    Daemon {
        /// The HTTP status, or 200 for an `error` event at the end of a stream.
        status: u16,
        code: String,
        message: String,
    },
    #[error("dpoimgd on {path} speaks protocol version {got}, this dpoimg speaks {API_VERSION}: use the dpoimg and dpoimgd of one release")]
    ApiMismatch { path: PathBuf, got: String },
    #[error("cancelled")]
    Cancelled,
    /// A command-line combination that cannot go to the daemon, or a local input problem.
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
}

/// A blocking client for one daemon socket. Each request opens its own connection, so a dropped
/// stream (Ctrl-C, [`CancelToken`]) closes it and the daemon cancels the request.
pub struct Client {
    socket: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("socket", &self.socket)
            .finish()
    }
}

/// Aborts the connection task when the request's future is dropped, so the socket is closed at
/// once (the daemon sees the disconnect and cancels) rather than when the runtime goes away.
struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A response whose connection stays open until it is dropped.
struct Answer {
    status: u16,
    body: Incoming,
    _conn: AbortOnDrop,
}

impl Client {
    /// A client for `socket`; nothing is connected yet.
    pub fn new(socket: impl Into<PathBuf>) -> Result<Client, RemoteError> {
        let socket = socket.into();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| RemoteError::Connect {
                path: socket.clone(),
                message: format!("starting the I/O runtime: {e}"),
            })?;
        Ok(Client { socket, rt })
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn protocol(&self, message: impl std::fmt::Display) -> RemoteError {
        RemoteError::Protocol {
            path: self.socket.clone(),
            message: message.to_string(),
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, RemoteError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| {
                let path = self.socket.clone();
                match e.kind() {
                    ErrorKind::NotFound => RemoteError::NoSocket { path },
                    ErrorKind::ConnectionRefused => RemoteError::Refused { path },
                    ErrorKind::PermissionDenied => RemoteError::PermissionDenied { path },
                    _ => RemoteError::Connect {
                        path,
                        message: e.to_string(),
                    },
                }
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.protocol(e))?;
        let conn = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "dpoimgd");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| self.protocol(e))?;
        let resp = sender.send_request(req).await.map_err(|e| {
            // A daemon that refused the peer (another uid) closes before answering.
            self.protocol(format!(
                "{e} (the daemon closed the connection: was it started by another user, or did it stop?)"
            ))
        })?;
        Ok(Answer {
            status: resp.status().as_u16(),
            body: resp.into_body(),
            _conn: conn,
        })
    }

    async fn read_all(&self, body: Incoming) -> Result<Vec<u8>, RemoteError> {
        Ok(body
            .collect()
            .await
            .map_err(|e| self.protocol(e))?
            .to_bytes()
            .to_vec())
    }

    /// The daemon's error body as [`RemoteError::Daemon`] (a non-JSON body is shown as text).
    fn daemon_error(status: u16, bytes: &[u8]) -> RemoteError {
        let v: Option<serde_json::Value> = serde_json::from_slice(bytes).ok();
        match v.as_ref().map(|v| &v["error"]) {
            Some(e) if e.is_object() => RemoteError::Daemon {
                status,
                code: e["code"].as_str().unwrap_or("unknown").to_string(),
                message: e["message"].as_str().unwrap_or_default().to_string(),
            },
            _ => RemoteError::Daemon {
                status,
                code: "unknown".into(),
                message: String::from_utf8_lossy(bytes).into_owned(),
            },
        }
    }

    /// One request with an optional JSON body; a 2xx JSON answer, else the daemon's error.
    pub fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, RemoteError> {
        let body = body.map(|b| serde_json::to_vec(b).expect("JSON values serialise"));
        self.rt.block_on(async {
            let a = self.send(method, path, body).await?;
            let bytes = self.read_all(a.body).await?;
            if !(200..300).contains(&a.status) {
                return Err(Self::daemon_error(a.status, &bytes));
            }
            serde_json::from_slice(&bytes).map_err(|e| {
                self.protocol(format!(
                    "answer to {method} {path} is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                ))
            })
        })
    }

    /// `GET /v1/version`, refusing a daemon of another protocol version.
    pub fn version(&self) -> Result<serde_json::Value, RemoteError> {
        let v = self.json("GET", "/v1/version", None)?;
        if v["api"].as_u64() != Some(API_VERSION) {
            return Err(RemoteError::ApiMismatch {
                path: self.socket.clone(),
                got: v["api"].to_string(),
            });
        }
        Ok(v)
    }

    /// A request answered with NDJSON: `on_event` sees every event in order, as it arrives. Ends
    /// at the end of the stream; an `error` event ends it with [`RemoteError::Daemon`]. When
    /// `cancel` fires the connection is closed (the daemon cancels the request) and this returns
    /// [`RemoteError::Cancelled`].
    pub fn stream(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
        cancel: &CancelToken,
        on_event: &mut dyn FnMut(&serde_json::Value) -> Result<(), RemoteError>,
    ) -> Result<(), RemoteError> {
        let body = body.map(|b| serde_json::to_vec(b).expect("JSON values serialise"));
        let work = async {
            let a = self.send(method, path, body).await?;
            if !(200..300).contains(&a.status) {
                let bytes = self.read_all(a.body).await?;
                return Err(Self::daemon_error(a.status, &bytes));
            }
            let mut body = a.body;
            let mut buf: Vec<u8> = Vec::new();
            loop {
                while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    let line = &line[..i];
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let ev: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
                        self.protocol(format!(
                            "an NDJSON line is not JSON ({e}): {}",
                            String::from_utf8_lossy(line)
                        ))
                    })?;
                    if ev["event"] == "error" {
                        return Err(RemoteError::Daemon {
                            status: a.status,
                            code: ev["code"].as_str().unwrap_or("unknown").to_string(),
                            message: ev["message"].as_str().unwrap_or_default().to_string(),
                        });
                    }
                    on_event(&ev)?;
                }
                match body.frame().await {
                    None => break,
                    Some(f) => {
                        if let Ok(d) = f.map_err(|e| self.protocol(e))?.into_data() {
                            buf.extend_from_slice(&d);
                        }
                    }
                }
            }
            if !buf.iter().all(u8::is_ascii_whitespace) {
                return Err(self.protocol("the stream ended inside a line"));
            }
            Ok(())
        };
        let cancel = cancel.clone();
        self.rt.block_on(async move {
            tokio::select! {
                r = work => r,
                _ = cancelled(&cancel) => Err(RemoteError::Cancelled),
            }
        })
    }
}

/// Resolves when `token` is cancelled (a flag set from another thread, e.g. a Ctrl-C handler).
async fn cancelled(token: &CancelToken) {
    while !token.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
