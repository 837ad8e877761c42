#!/usr/bin/env bash
# Installs the ONNX Runtime shared library into .ort/lib from the `onnxruntime` wheel on PyPI
# (or `onnxruntime-gpu` with --gpu). Nothing else is downloaded; re-running is a no-op.
#   scripts/install-ort.sh [--gpu] [--version X.Y.Z]
set -euo pipefail
cd "$(dirname "$0")/.."
version=1.31.1
package=onnxruntime
while [ $# -gt 0 ]; do
  case "$1" in
    --gpu) package=onnxruntime-gpu ;;
    --version) version="$2"; shift ;;
    *) echo "usage: $0 [--gpu] [--version X.Y.Z]" >&2; exit 2 ;;
  esac
  shift
done
dest=.ort/lib
stamp="$dest/.installed"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$package==$version" ] && [ -e "$dest/libonnxruntime.so" ]; then
  echo "ONNX Runtime $package==$version already in $dest"
  exit 0
fi
py=$(command -v python3 || command -v python || true)
if [ -z "$py" ]; then
  echo "install-ort: python3 with pip is needed to fetch the $package wheel (apt-get install python3-pip)" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching $package==$version from PyPI ..."
"$py" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "$package==$version"
wheel=$(ls "$tmp"/*.whl | head -n 1)
mkdir -p "$dest"
"$py" - "$wheel" "$dest" <<'PY'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith("onnxruntime/capi/") and ".so" in os.path.basename(n)
             and os.path.basename(n).startswith("libonnxruntime")]
    if not names:
        sys.exit(f"install-ort: no libonnxruntime*.so in {os.path.basename(wheel)}")
    for n in names:
        target = os.path.join(dest, os.path.basename(n))
        with z.open(n) as src, open(target + ".tmp", "wb") as out:
            out.write(src.read())
        os.replace(target + ".tmp", target)
        print("  ", target)
PY
main=$(ls "$dest"/libonnxruntime.so.* 2>/dev/null | sort | tail -n 1)
ln -sf "$(basename "$main")" "$dest/libonnxruntime.so"
echo "$package==$version" > "$stamp"
echo "ONNX Runtime installed: $dest/libonnxruntime.so -> $(basename "$main")"
