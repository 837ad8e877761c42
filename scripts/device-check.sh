#!/usr/bin/env bash
# The trainer's CUDA backend on a GPU machine, in one go:
#   1. finds the NVIDIA driver (libcuda.so.1), cuBLAS (libcublas.so.12) and NVRTC (libnvrtc.so.12)
#      — system paths, /usr/local/cuda*, pip wheels (nvidia-cublas-cu12, nvidia-cuda-nvrtc-cu12)
#      — puts their folders on LD_LIBRARY_PATH and says clearly what is missing;
#   2. builds tests/trainer_cuda.rs and examples/cuda_train_step.rs with `--features cuda` (or
#      uses binaries from `--prepare`, below);
#   3. runs tests/trainer_cuda.rs with DPOIMG_REQUIRE_CUDA=1 (a skipped GPU test fails here):
#      every primitive CUDA vs CPU, the whole UNet and every LoRA gradient vs the torch goldens;
#   4. times 20 DPO steps (policy forward + reference forward + loss + backward) on CPU and CUDA
#      with the example, SD-1.5-sized on CUDA too; and, when `dpoimg-finetune dpo` and ONNX
#      Runtime are available, 20 steps of the real command on each device.
#
# Usage:
#   scripts/device-check.sh             # on the GPU machine (cargo + crates needed unless prepared)
#   scripts/device-check.sh --prepare   # on a build machine: release binaries into
#                                       # target/device-check/ (carry that folder to the GPU machine)
# Exit status: 0 all passed; 1 a test failed; 2 CUDA libraries missing; 3 build failed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=target/device-check
STEPS=${DEVICE_CHECK_STEPS:-20}

build() {
    # The test binary and the example, release, with the CUDA backend; prints the test binary.
    cargo build --release --features cuda --example cuda_train_step >&2 || return 1
    local json
    json=$(cargo test --release --features cuda --test trainer_cuda --no-run --message-format=json 2>/dev/null) || return 1
    printf '%s\n' "$json" | sed -n 's/.*"executable":"\([^"]*trainer_cuda[^"]*\)".*/\1/p' | tail -1
}

if [[ "${1:-}" == "--prepare" ]]; then
    mkdir -p "$OUT"
    bin=$(build) || { echo "device-check: build failed" >&2; exit 3; }
    cp "$bin" "$OUT/trainer_cuda"
    cp target/release/examples/cuda_train_step "$OUT/"
    if cargo build --release --features cuda --bin dpoimg-finetune >&2; then
        cp target/release/dpoimg-finetune "$OUT/"
    fi
    # debug info is most of their size; the carry to a GPU machine is limited
    command -v strip >/dev/null 2>&1 && strip --strip-debug "$OUT"/* 2>/dev/null
    # Test binaries find tests/assets through the source path compiled into them.
    echo "$ROOT" > "$OUT/source-root"
    ls -la "$OUT"
    echo "device-check: prepared $OUT (built at $ROOT)"
    exit 0
fi

echo "== device"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
else
    echo "nvidia-smi not found"
fi

echo "== CUDA libraries"
IFS=: read -r -a candidates <<<"${LD_LIBRARY_PATH:-}"
candidates+=(/usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64 /usr/local/nvidia/lib)
for d in /usr/local/cuda-*/lib64 /usr/local/cuda-*/targets/x86_64-linux/lib; do [[ -d "$d" ]] && candidates+=("$d"); done
for py in python3 /work/pyenv/bin/python; do
    if command -v "$py" >/dev/null 2>&1; then
        while IFS= read -r d; do [[ -d "$d" ]] && candidates+=("$d"); done < <(
            "$py" - <<'EOF' 2>/dev/null
import site, glob, os
roots = site.getsitepackages() + [site.getusersitepackages()]
for r in roots:
    for d in glob.glob(os.path.join(r, "nvidia", "*", "lib")):
        print(d)
EOF
        )
    fi
done
missing=()
find_lib() { # name pattern -> prints the folder holding it, or nothing
    local name=$1
    if ldconfig -p 2>/dev/null | grep -q "$name"; then
        ldconfig -p | grep "$name" | head -1 | sed 's/.*=> //' | xargs dirname
        return
    fi
    for d in "${candidates[@]}"; do
        compgen -G "$d/$name*" >/dev/null && { echo "$d"; return; }
    done
}
for spec in "libcuda.so.1:the NVIDIA driver" "libcublas.so.12:cuBLAS (CUDA 12 toolkit or the nvidia-cublas-cu12 wheel)" "libnvrtc.so.12:NVRTC (CUDA 12 toolkit or the nvidia-cuda-nvrtc-cu12 wheel)"; do
    lib=${spec%%:*}
    what=${spec#*:}
    dir=$(find_lib "$lib")
    if [[ -n "$dir" ]]; then
        echo "$lib: $dir"
        case ":${LD_LIBRARY_PATH:-}:" in *":$dir:"*) ;; *) export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;; esac
    else
        echo "$lib: MISSING — install $what"
        missing+=("$lib")
    fi
done
if ((${#missing[@]})); then
    echo "device-check: cannot run the CUDA backend, missing: ${missing[*]}" >&2
    exit 2
fi

echo "== build"
if [[ -x "$OUT/trainer_cuda" && -x "$OUT/cuda_train_step" ]] && { [[ -n "${DEVICE_CHECK_PREBUILT:-}" ]] || ! command -v cargo >/dev/null 2>&1; }; then
    test_bin=$OUT/trainer_cuda
    example_bin=$OUT/cuda_train_step
    finetune_bin=$OUT/dpoimg-finetune
    built_at=$(cat "$OUT/source-root" 2>/dev/null || echo "$ROOT")
    if [[ "$built_at" != "$ROOT" && ! -e "$built_at" ]]; then
        # the prepared binaries look for tests/assets under the path they were built at
        mkdir -p "$(dirname "$built_at")" && ln -s "$ROOT" "$built_at" ||
            echo "device-check: could not link $built_at -> $ROOT; tests may not find their assets" >&2
    fi
    echo "using prepared binaries in $OUT (built at $built_at)"
else
    if ! command -v cargo >/dev/null 2>&1; then
        echo "device-check: no cargo and no prepared binaries: run 'scripts/device-check.sh --prepare' on a build machine and carry $OUT" >&2
        exit 3
    fi
    t0=$(date +%s)
    test_bin=$(build) || { echo "device-check: build failed" >&2; exit 3; }
    example_bin=target/release/examples/cuda_train_step
    finetune_bin=target/release/dpoimg-finetune
    cargo build --release --features cuda --bin dpoimg-finetune >&2 || finetune_bin=
    echo "built in $(( $(date +%s) - t0 )) s"
fi

echo "== tests/trainer_cuda.rs (CUDA vs CPU and vs torch goldens)"
status=0
DPOIMG_REQUIRE_CUDA=1 "$test_bin" --nocapture --test-threads 1 || status=1
if ((status)); then echo "device-check: tests/trainer_cuda.rs FAILED"; else echo "device-check: tests/trainer_cuda.rs passed"; fi

echo "== timing: $STEPS DPO steps, CPU vs CUDA (examples/cuda_train_step.rs)"
"$example_bin" --steps "$STEPS" --sd15 || { echo "device-check: timing example failed"; status=1; }

echo "== timing: dpoimg-finetune dpo --steps $STEPS on the tiny bundle"
ort=
for f in "${DPOIMG_ORT_LIB:-}" .ort/lib/libonnxruntime.so; do [[ -n "$f" && -e "$f" ]] && { ort=$f; break; }; done
if [[ -z "${finetune_bin:-}" || ! -x "${finetune_bin:-/nonexistent}" ]]; then
    echo "skipped: no dpoimg-finetune binary"
elif ! "$finetune_bin" dpo --help 2>/dev/null | grep -q -- "--device"; then
    echo "skipped: dpoimg-finetune has no 'dpo --device'"
elif [[ -z "$ort" ]]; then
    echo "skipped: no ONNX Runtime for the encoders (scripts/install-ort.sh, or carry .ort/ or set DPOIMG_ORT_LIB)"
else
    tmp=$(mktemp -d)
    for dev in cpu cuda; do
        t0=$(date +%s.%N)
        if DPOIMG_ORT_LIB=$ort "$finetune_bin" dpo --bundle tests/assets/tiny-bundle \
            --data tests/assets/data/pairs.jsonl --steps "$STEPS" --device "$dev" \
            -o "$tmp/run-$dev" --cache-dir "$tmp/cache" >"$tmp/$dev.log" 2>&1; then
            echo "dpoimg-finetune dpo --device $dev: $STEPS steps in $(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $t0 }") s (wall, including start-up and encoding)"
        else
            echo "dpoimg-finetune dpo --device $dev FAILED:"; tail -20 "$tmp/$dev.log"; status=1
        fi
    done
    rm -rf "$tmp"
fi

exit $status
