"""Paired comparison of two `dpoimg eval` runs made on different bundles: arm B of the second
eval.json against arm A of the first, image by image (same prompts, same seeds).

    /work/pyenv/bin/python tools/compare_evals.py A/eval.json base B/eval.json base [out.json]

Why: `dpoimg eval` compares arms that are adapters on one bundle; a model tuned on every weight
(tools/world_dpo_full.py) is a whole bundle. Images are deterministic per (prompt, seed), so an
eval of the original bundle on the same prompt file and --seed pairs with it. Prints, per metric,
the means, the mean difference B - A with a bootstrap 95 % CI (4,000 resamples, seed 0), B's wins
and losses, and the Wilcoxon signed-rank p (scipy, ties dropped), the statistics `dpoimg eval`
reports.
"""
import json, sys
import numpy as np
from scipy import stats
ea, arm_a, eb, arm_b = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
A, B = json.load(open(ea)), json.load(open(eb))
if [p["prompt"] for p in A["prompts"]] != [p["prompt"] for p in B["prompts"]]:
    sys.exit("the two evals have different prompts; run both on the same --prompts file")
if A["settings"] != B["settings"]:
    sys.exit(f"the evals' settings differ: {A['settings']} vs {B['settings']}")
out = {}
for m in ("world_check", "world_all_correct", "imagereward", "clip_score"):
    a, b = [], []
    for pa, pb in zip(A["prompts"], B["prompts"]):
        for ia, ib in zip(pa["images"][arm_a], pb["images"][arm_b]):
            if ia["seed"] != ib["seed"]:
                sys.exit(f"image seeds differ for prompt {pa['prompt']!r}")
            a.append(ia["scores"][m]); b.append(ib["scores"][m])
    a, b = np.array(a), np.array(b)
    d = b - a
    rng = np.random.default_rng(0)
    bs = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(4000)]
    lo, hi = np.percentile(bs, [2.5, 97.5])
    w, l = int((d > 0).sum()), int((d < 0).sum())
    p = stats.wilcoxon(b, a).pvalue if (w + l) else 1.0
    out[m] = dict(n=len(d), a=a.mean(), b=b.mean(), diff=d.mean(), ci=[lo, hi], wins=w, losses=l, p=p)
    print(f"{m:18s} A {a.mean():.4f} B {b.mean():.4f} diff {d.mean():+.4f} [{lo:+.4f},{hi:+.4f}] B wins {w} / A {l}  p={p:.3g}")
if len(sys.argv) > 5:
    json.dump(out, open(sys.argv[5], "w"), indent=1)
