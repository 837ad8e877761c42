//! A small HTTP/1.1 client over the Unix socket (hyper), for the tests, the benchmark and
//! applications written in Rust. One connection per request.

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::path::Path;
use tokio::net::UnixStream;

pub type Response = hyper::Response<Incoming>;

/// Sends one request; `body` is sent as JSON when given.
pub async fn send(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> std::io::Result<Response> {
    let stream = UnixStream::connect(socket).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let bytes = body
        .map(|b| serde_json::to_vec(b).expect("JSON"))
        .unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "dpoimgd")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .map_err(std::io::Error::other)?;
    sender
        .send_request(req)
        .await
        .map_err(std::io::Error::other)
}

/// Reads a whole body.
pub async fn body_bytes(resp: Response) -> std::io::Result<Vec<u8>> {
    Ok(resp
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes()
        .to_vec())
}

/// Sends a request and parses the JSON answer: (status, value).
pub async fn json(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> std::io::Result<(u16, serde_json::Value)> {
    let resp = send(socket, method, path, body).await?;
    let status = resp.status().as_u16();
    let bytes = body_bytes(resp).await?;
    let v = serde_json::from_slice(&bytes)
        .map_err(|e| std::io::Error::other(format!("{e}: {}", String::from_utf8_lossy(&bytes))))?;
    Ok((status, v))
}

/// Reads an NDJSON stream to its end: every event, in order.
pub async fn events(resp: Response) -> std::io::Result<Vec<serde_json::Value>> {
    let bytes = body_bytes(resp).await?;
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).map_err(std::io::Error::other))
        .collect()
}

/// The next NDJSON event of a streaming body, or None at its end.
pub async fn next_event(
    body: &mut Incoming,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<serde_json::Value>> {
    loop {
        if let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            return serde_json::from_slice(&line[..i])
                .map(Some)
                .map_err(std::io::Error::other);
        }
        match body.frame().await {
            None => return Ok(None),
            Some(f) => {
                if let Ok(d) = f.map_err(std::io::Error::other)?.into_data() {
                    buf.extend_from_slice(&d);
                }
            }
        }
    }
}
