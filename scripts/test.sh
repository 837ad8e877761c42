#!/usr/bin/env bash
# The project's whole check, as CI runs it: ONNX Runtime install, formatting, lints, the Rust
# tests, then the C ABI and its bindings (scripts/test-c.sh: C tests natively and under valgrind,
# static link, install + pkg-config, Go with -race, Swift module map).
set -euo pipefail
cd "$(dirname "$0")/.."
# A cold CI build gains nothing from incremental state (1.7 GB of it on the last cold run); CI disks
# are finite.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi
scripts/install-ort.sh
scripts/install-chromium.sh # headless Chromium: tests/eval.rs, tests/experiment.rs (reports), daemon/tests/rating.rs (rating page)
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The trainer's CUDA backend builds without CUDA: keep it compiling and lint-clean (its tests skip
# without a GPU; scripts/device-check.sh runs them on one).
cargo clippy --all-targets --features cuda --locked -- -D warnings
cargo test --workspace --locked
scripts/test-c.sh
