#!/usr/bin/env bash
# The project's whole check, as CI runs it: ONNX Runtime install, formatting, lints, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-ort.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
