#!/usr/bin/env bash
# The shipped preference data set (models/world-prefs): samples of the base world model, ranked by
# the simulated annotators (`dpoimg world annotate`, model of disagreement in src/world/annotate.rs),
# in the ImageRewardDB layout (metadata-{train,validation,test}.parquet + images/), plus the
# held-out prompt files the demo evaluates on.
#
#   tools/world_prefs.sh [BUNDLE=models/world] [OUT=models/world-prefs]
#   N_TRAIN=400 N_VALIDATION=20 N_TEST=100 N_EVAL=200 PER_PROMPT=4 THREADS=0 GUIDANCE= (environment
#   overrides; the shipped set was made with these values, the bundle's guidance and THREADS=2 in
#   14 min on the 2-core machine; models/world-prefs-g1, the guidance-1 demo's set, is
#   `N_TRAIN=1000 GUIDANCE=1 THREADS=2 tools/world_prefs.sh models/world models/world-prefs-g1`,
#   944 s of sampling beside a build; 4,480 images, 18 MB)
#
# Deterministic: prompts are `dpoimg world prompts --split S --seed 0`, sample seeds
# `seed + i·K` (`dpoimg world sample`), annotator seed 0. Needs a release build (cargo build
# --release --bins) and ONNX Runtime (scripts/install-ort.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${1:-models/world}
OUT=${2:-models/world-prefs}
N_TRAIN=${N_TRAIN:-400}
N_VALIDATION=${N_VALIDATION:-20}
N_TEST=${N_TEST:-100}
PER_PROMPT=${PER_PROMPT:-4}
THREADS=${THREADS:-0}   # ONNX Runtime threads (0 = one per core; use 1 next to other jobs)
GUIDANCE=${GUIDANCE:-}  # sampling guidance scale (empty = the bundle's default)
DPOIMG=${DPOIMG:-target/release/dpoimg}
export LD_LIBRARY_PATH="$PWD/.ort/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

if [ -e "$OUT" ]; then
    echo "error: $OUT exists; remove it first (the data set is rebuilt whole)" >&2
    exit 2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
{
    "$DPOIMG" world prompts --split train --count "$N_TRAIN" --seed 0
    "$DPOIMG" world prompts --split validation --count "$N_VALIDATION" --seed 0
    "$DPOIMG" world prompts --split test --count "$N_TEST" --seed 0
} > "$work/prompts.txt"
start=$(date +%s)
"$DPOIMG" world sample --bundle "$BUNDLE" --prompts "$work/prompts.txt" --per-prompt "$PER_PROMPT" \
    --seed 0 --threads "$THREADS" ${GUIDANCE:+--guidance "$GUIDANCE"} -q -o "$work/samples"
sampled=$(date +%s)
"$DPOIMG" world annotate --index "$work/samples/index.json" -o "$work/db" --seed 0
mkdir -p "$(dirname "$OUT")"
"$DPOIMG" world prompts --split test --count "$N_TEST" --seed 0 > "$work/db/test-prompts.txt"
"$DPOIMG" world prompts --split validation --count "$N_VALIDATION" --seed 0 > "$work/db/validation-prompts.txt"
# the demo's held-out evaluation prompts (the first N_TEST of them are the data set's test split)
"$DPOIMG" world prompts --split test --count "${N_EVAL:-200}" --seed 0 > "$work/db/eval-prompts.txt"
mv "$work/db" "$OUT"
echo "wrote $OUT: $((N_TRAIN + N_VALIDATION + N_TEST)) prompts x $PER_PROMPT images;" \
    "sampling $((sampled - start)) s, annotation $(($(date +%s) - sampled)) s" >&2
