#!/usr/bin/env bash
# The project's whole check, as CI runs it: ONNX Runtime install, formatting, lints, the Rust
# tests, then the C ABI and its bindings (scripts/test-c.sh: C tests natively and under valgrind,
# static link, install + pkg-config, Go with -race, Swift module map).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-ort.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
scripts/test-c.sh
