//! `dpoimgd`: one long-lived process that holds a dpoimg [`Engine`](dpoimg::Engine) and serves it
//! to local applications over HTTP/1.1 + JSON on a Unix socket (so `curl --unix-socket` works).
//!
//! Layers: [`config`] (flags and config file), [`socket`] (0700 directory, 0600 socket, peer uid
//! check, stale-socket handling), [`scheduler`] (bounded queue, batching of compatible requests
//! into one UNet run), [`adapters`] (names confined to the adapter directory, hot swap),
//! [`jobs`] (persisted fine-tune jobs that resume after a crash), [`server`] (routes, NDJSON
//! streams, metrics, graceful shutdown), [`client`] (a small hyper
//! client used by the tests and the benchmark), [`rating`] (the opt-in loopback blind rating
//! page), [`reward`] (`POST /v1/score` with `--reward`). The protocol is documented in
//! docs/daemon.md.

pub mod adapters;
pub mod client;
pub mod config;
pub mod error;
pub mod jobs;
pub mod metrics;
pub mod rating;
pub mod reward;
pub mod scheduler;
pub mod server;
pub mod socket;

/// Protocol version: bumped on any incompatible change of a path, field or event.
pub const API_VERSION: u32 = 1;
