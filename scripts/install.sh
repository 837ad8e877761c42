#!/usr/bin/env bash
# Installs libdpoimg for C (and Go, Swift...) programs:
#   PREFIX/lib/libdpoimg.so, PREFIX/lib/libdpoimg.a, PREFIX/include/dpoimg.h,
#   PREFIX/lib/pkgconfig/dpoimg.pc, and ONNX Runtime (libonnxruntime.so*) in PREFIX/lib, where
#   libdpoimg looks for it first when the caller names no library.
#
# Usage: scripts/install.sh PREFIX [--debug] [--no-build]
#   --debug     install the debug build (target/debug) instead of the release build
#   --no-build  do not run cargo; install what target/ already has
# ONNX Runtime comes from $DPOIMG_ORT_LIB if set, else from .ort/lib (scripts/install-ort.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
prefix=""
profile=release
build=1
for arg in "$@"; do
    case "$arg" in
        --debug) profile=debug ;;
        --no-build) build=0 ;;
        -h|--help) usage ;;
        -*) echo "install.sh: unknown option $arg" >&2; usage ;;
        *) [ -z "$prefix" ] || usage; prefix="$arg" ;;
    esac
done
[ -n "$prefix" ] || usage
mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"

if [ "$build" = 1 ]; then
    if [ "$profile" = release ]; then cargo build --release --lib; else cargo build --lib; fi
fi
target="target/$profile"
for f in libdpoimg.so libdpoimg.a; do
    [ -f "$target/$f" ] || { echo "install.sh: $target/$f missing; build first" >&2; exit 1; }
done

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
install -d "$prefix/lib/pkgconfig" "$prefix/include"
install -m 0755 "$target/libdpoimg.so" "$prefix/lib/libdpoimg.so"
install -m 0644 "$target/libdpoimg.a" "$prefix/lib/libdpoimg.a"
install -m 0644 include/dpoimg.h "$prefix/include/dpoimg.h"
sed -e "s|@PREFIX@|$prefix|g" -e "s|@VERSION@|$version|g" dpoimg.pc.in \
    > "$prefix/lib/pkgconfig/dpoimg.pc"

# ONNX Runtime: the library (following its symlink to the versioned file) and its provider
# libraries (providers_shared, and CUDA's when the GPU build is installed).
if [ -n "${DPOIMG_ORT_LIB:-}" ]; then ort="$DPOIMG_ORT_LIB"; else ort=".ort/lib/libonnxruntime.so"; fi
if [ ! -e "$ort" ]; then
    echo "install.sh: ONNX Runtime not found at $ort; run scripts/install-ort.sh (or set DPOIMG_ORT_LIB)" >&2
    exit 1
fi
ort_dir="$(dirname "$ort")"
real="$(readlink -f "$ort")"
install -m 0755 "$real" "$prefix/lib/$(basename "$real")"
if [ "$(basename "$real")" != libonnxruntime.so ]; then
    ln -sf "$(basename "$real")" "$prefix/lib/libonnxruntime.so"
fi
for p in "$ort_dir"/libonnxruntime_providers_*.so; do
    [ -e "$p" ] && install -m 0755 "$p" "$prefix/lib/"
done
echo "installed dpoimg $version ($profile) into $prefix"
