#!/usr/bin/env bash
# Runs the CUDA trainer kernels (src/train/backend/cuda/kernels.rs) on the CPU, without a GPU or
# CUDA: the kernel source is compiled as C++ against a tiny emulation of the CUDA built-ins.
# - gather_kernels.cpp: one emulated thread per launch (grid-stride loops cover everything):
#   im2col against its definition, col2im and nearest-resize backward as exact adjoints of their
#   forwards, resize, concat/split, add_broadcast, GEGLU (backward vs finite differences), the
#   attention helpers' index maps, the k = 0 GEMM;
# - reduction_kernels.cpp: real threads per block with barriers for __syncthreads and per-warp
#   barriers for __shfl_down_sync: sum_inner, the tiled transpose, group norm (+ fused SiLU) and
#   its backward vs finite differences, the attention softmax and log-sum-exp.
# What it cannot check: cuBLAS (see the unit tests in src/train/backend/cuda/gemm.rs and
# attention.rs), real-GPU timing and memory ordering. Needs g++ with C++20.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$here/../../src/train/backend/cuda/kernels.rs" "$tmp/kernels.cu" <<'PY'
import sys
s = open(sys.argv[1]).read()
open(sys.argv[2], "w").write(s[s.index('r#"') + 3:s.rindex('"#')])
PY
for t in gather_kernels reduction_kernels; do
    g++ -O1 -std=c++20 -pthread -w -I"$here" -DKERNELS="\"$tmp/kernels.cu\"" -o "$tmp/$t" "$here/$t.cpp"
    echo "== $t"
    "$tmp/$t"
done
