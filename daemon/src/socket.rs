//! The Unix socket: created in a directory only we can enter (0700; an existing one must be ours
//! and not group/world-writable, as wezterm's mux server checks), the socket itself 0600, and
//! every connection's peer uid checked with SO_PEERCRED: a peer with another uid is dropped before
//! a byte is read. A socket file left by a dead daemon is replaced; one that still answers is not.

use crate::error::DaemonError;
use crate::metrics::Metrics;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::{UnixListener, UnixStream};

fn err(path: &Path, message: impl Into<String>) -> DaemonError {
    DaemonError::Socket {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// This process's effective uid.
pub fn my_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Creates the socket's directory (0700) or checks an existing one, handles a stale socket file,
/// binds and restricts the socket to 0600.
pub fn bind(path: &Path) -> Result<UnixListener, DaemonError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() {
        std::fs::create_dir_all(&dir).map_err(|e| err(&dir, format!("creating: {e}")))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| err(&dir, format!("chmod 0700: {e}")))?;
    }
    let md = std::fs::metadata(&dir).map_err(|e| err(&dir, e.to_string()))?;
    if md.uid() != my_uid() {
        return Err(err(
            &dir,
            format!(
                "directory is owned by uid {}, not by this user ({}); use a directory of your own (--socket)",
                md.uid(),
                my_uid()
            ),
        ));
    }
    if md.mode() & 0o022 != 0 {
        return Err(err(
            &dir,
            format!(
                "directory mode {:o} lets other users replace the socket; chmod 0700 it or choose another --socket",
                md.mode() & 0o777
            ),
        ));
    }
    if let Ok(m) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !m.file_type().is_socket() {
            return Err(err(
                path,
                "exists and is not a socket; remove it or choose another --socket",
            ));
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(err(
                    path,
                    "another daemon is listening here; stop it first or choose another --socket",
                ))
            }
            Err(_) => {
                tracing::warn!(socket = %path.display(), "removing a stale socket (nothing answers on it)");
                std::fs::remove_file(path)
                    .map_err(|e| err(path, format!("removing stale socket: {e}")))?;
            }
        }
    }
    let listener = UnixListener::bind(path).map_err(|e| err(path, format!("bind: {e}")))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| err(path, format!("chmod 0600: {e}")))?;
    Ok(listener)
}

/// A listener that hands axum only connections from our own uid.
pub struct PeerCheckedListener {
    pub inner: UnixListener,
    pub uid: u32,
    pub metrics: Arc<Metrics>,
}

impl axum::serve::Listener for PeerCheckedListener {
    type Io = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => match stream.peer_cred() {
                    Ok(c) if c.uid() == self.uid => return (stream, addr),
                    Ok(c) => {
                        self.metrics.refused_peer();
                        tracing::warn!(
                            peer_uid = c.uid(),
                            peer_pid = ?c.pid(),
                            "refused a connection from another user"
                        );
                    }
                    Err(e) => {
                        self.metrics.refused_peer();
                        tracing::warn!("refused a connection whose peer is unknown: {e}");
                    }
                },
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::error!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}
