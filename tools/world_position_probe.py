#!/usr/bin/env python3
"""Does the world model place an object where the prompt asks? A permutation test on
`dpoimg world check` output (standard library only).

    dpoimg world sample --bundle models/world --split test --count 400 --per-prompt 1 --seed 0 -o S
    dpoimg world check --index S/index.json > S/check.json
    tools/world_position_probe.py S/check.json [--permutations 20000] > probe.json

Only images with one detected object and a position phrase in the prompt count. The statistic is
the fraction of those whose detected position equals the requested one, plus Pearson's chi-square
of the requested-by-detected table; their null distributions come from shuffling the detected
positions across images (which keeps both margins), so a small p means placement depends on the
prompt. Chance agreement is what the shuffles average, not 1/9, because the margins need not be
uniform.
"""
import argparse
import collections
import json
import random
import re
import sys

POSITION = re.compile(
    r"(in the center|at the (top left|top right|bottom left|bottom right|top|bottom|left|right))"
)


def requested(prompt):
    m = POSITION.search(prompt)
    if not m:
        return None
    return "center" if m.group(1) == "in the center" else m.group(2)


def chi_square(pairs):
    rows = collections.Counter(r for r, _ in pairs)
    cols = collections.Counter(d for _, d in pairs)
    cells = collections.Counter(pairs)
    n = len(pairs)
    return sum(
        (cells[(r, c)] - rows[r] * cols[c] / n) ** 2 / (rows[r] * cols[c] / n)
        for r in rows
        for c in cols
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("check_json")
    ap.add_argument("--permutations", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    images = json.load(open(args.check_json))["images"]
    pairs = []
    for im in images:
        want = requested(im["prompt"])
        objects = im["reading"].get("objects", [])
        if want is not None and len(objects) == 1:
            pairs.append((want, objects[0]["position"]))
    if not pairs:
        sys.exit("no single-object image with a position phrase in " + args.check_json)
    accuracy = sum(r == d for r, d in pairs) / len(pairs)
    chi2 = chi_square(pairs)
    rng = random.Random(args.seed)
    want = [r for r, _ in pairs]
    got = [d for _, d in pairs]
    null_acc, ge_acc, ge_chi = [], 0, 0
    for _ in range(args.permutations):
        rng.shuffle(got)
        shuffled = list(zip(want, got))
        a = sum(r == d for r, d in shuffled) / len(shuffled)
        null_acc.append(a)
        ge_acc += a >= accuracy
        ge_chi += chi_square(shuffled) >= chi2
    table = collections.Counter(pairs)
    json.dump(
        {
            "what": "placement vs the prompt's position phrase, single-object images",
            "images": len(pairs),
            "accuracy": accuracy,
            "chance_accuracy": sum(null_acc) / len(null_acc),
            "accuracy_p": (ge_acc + 1) / (args.permutations + 1),
            "chi_square": chi2,
            "chi_square_p": (ge_chi + 1) / (args.permutations + 1),
            "permutations": args.permutations,
            "detected": dict(collections.Counter(d for _, d in pairs)),
            "table": {f"{r} -> {d}": n for (r, d), n in sorted(table.items())},
        },
        sys.stdout,
        indent=1,
    )
    print()


if __name__ == "__main__":
    main()
