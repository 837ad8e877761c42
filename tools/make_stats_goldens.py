#!/usr/bin/env python3
"""Goldens for dpoimg's paired statistics (src/stats/) from SciPy/numpy.

Writes tests/assets/golden/stats/{wilcoxon,binomtest,bootstrap,pcg64}.json. NaN is written as
null. Needs numpy and scipy only (versions recorded in each file):
    /work/pyenv/bin/pip install scipy==1.17.1
"""
import json
import math
import os
import sys

import numpy as np
import scipy
from scipy import stats

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "assets", "golden", "stats")


def clean(x):
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return None if math.isnan(x) else x
    if isinstance(x, np.integer):
        return int(x)
    return x


def write(name, cases):
    os.makedirs(OUT, exist_ok=True)
    doc = {"numpy": np.__version__, "scipy": scipy.__version__, "cases": clean(cases)}
    path = os.path.join(OUT, name)
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(path + ".tmp", path)
    print(path, len(cases), "cases")


def samples():
    """Named difference vectors: no ties, ties, zeros, n = 1, all equal, all zero, large n."""
    g = np.random.default_rng(20261129)
    s = {
        "n1_pos": [0.7],
        "n1_neg": [-0.3],
        "n2": [0.5, -1.25],
        "n5_no_ties": [1.3, -0.2, 2.7, 0.9, -1.1],
        "n8_ties": [1.0, -1.0, 2.0, 2.0, -3.0, 0.5, 0.5, 4.0],
        "n6_zeros": [0.0, 1.5, -0.25, 0.0, 2.0, 3.5],
        "n13_ties_zeros": [0.0, 1.0, 1.0, -1.0, 2.0, -2.0, 3.0, 0.0, 4.0, 4.0, -0.5, 5.0, 6.0],
        "n14_ties": [1.0, 1.0, 2.0, -2.0, 3.0, 3.0, 4.0, -4.0, 5.0, 6.0, 6.0, 7.0, -8.0, 9.0],
        "all_equal_pos_n7": [0.25] * 7,
        "all_equal_pos_n20": [0.25] * 20,
        "all_zero_n5": [0.0] * 5,
        "all_zero_n20": [0.0] * 20,
        "n20_no_ties": list(g.standard_normal(20) + 0.3),
        "n50_no_ties": list(g.standard_normal(50) - 0.1),
        "n51_no_ties": list(g.standard_normal(51) + 0.2),
        "n30_rounded_ties_zeros": list(np.round(g.standard_normal(30), 1)),
        "n200_rounded": list(np.round(g.standard_normal(200) + 0.1, 2)),
        "n1000": list(g.standard_normal(1000) * 0.05 + 0.004),
        "n10_one_sided": list(np.abs(g.standard_normal(10)) + 0.01),
    }
    return {k: [float(v) for v in vals] for k, vals in s.items()}


def wilcoxon_cases():
    out = []
    for name, d in samples().items():
        d = np.asarray(d)
        if np.all(d == 0) and len(d) <= 13:
            pass
        with np.errstate(all="ignore"):
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = stats.wilcoxon(d)
        w = d[d > 0].size
        l = d[d < 0].size
        sign = stats.binomtest(w, w + l, 0.5) if w + l > 0 else None
        out.append({
            "name": name, "d": list(d),
            "statistic": r.statistic, "pvalue": r.pvalue,
            "sign_wins": w, "sign_losses": l,
            "sign_pvalue": None if sign is None else sign.pvalue,
        })
    return out


def binom_cases():
    pairs = [(0, 1), (1, 1), (1, 2), (0, 10), (3, 10), (5, 10), (7, 10), (10, 10), (12, 40), (25, 40),
             (20, 41), (480, 1000), (500, 1000), (530, 1000), (0, 1000), (4900, 10000), (5150, 10000),
             (2, 7), (6, 7), (33, 64)]
    out = []
    for k, n in pairs:
        r = stats.binomtest(k, n, 0.5)
        for conf in (0.95, 0.9):
            ci = r.proportion_ci(confidence_level=conf, method="exact")
            out.append({"k": k, "n": n, "confidence": conf, "pvalue": r.pvalue, "statistic": r.statistic,
                        "ci_low": ci.low, "ci_high": ci.high})
    return out


def bootstrap_cases():
    s = samples()
    plan = [
        ("n2", 0, 9999), ("n5_no_ties", 1, 9999), ("n8_ties", 42, 9999), ("n6_zeros", 7, 999),
        ("n20_no_ties", 123, 9999), ("n50_no_ties", 2**32 + 5, 9999), ("n30_rounded_ties_zeros", 9, 9999),
        ("n200_rounded", 2**63 + 11, 2000), ("n1000", 5, 500), ("all_equal_pos_n7", 3, 999),
        ("n10_one_sided", 77, 9999),
    ]
    out = []
    for name, seed, b in plan:
        d = np.asarray(s[name])
        for method in ("BCa", "percentile"):
            for conf in (0.95, 0.9):
                import warnings
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    r = stats.bootstrap((d,), np.mean, n_resamples=b, confidence_level=conf,
                                        method=method, rng=np.random.default_rng(seed))
                out.append({"name": name, "d": list(d), "seed": seed, "n_resamples": b,
                            "method": method.lower(), "confidence": conf,
                            "mean": float(np.mean(d)),
                            "low": r.confidence_interval.low, "high": r.confidence_interval.high,
                            "standard_error": r.standard_error})
    return out


def pcg64_cases():
    out = []
    for seed in (0, 1, 42, 2**32 + 5, 2**63 + 11, 2**64 - 1):
        raw = np.random.default_rng(seed).bit_generator.random_raw(8)
        ints = {}
        for n in (1, 2, 7, 1000, 2**31 + 3, 2**32):
            ints[str(n)] = [int(v) for v in np.random.default_rng(seed).integers(0, n, 64)]
        out.append({"seed": seed, "raw": [str(int(v)) for v in raw], "integers": ints})
    return out


def main():
    write("wilcoxon.json", wilcoxon_cases())
    write("binomtest.json", binom_cases())
    write("bootstrap.json", bootstrap_cases())
    write("pcg64.json", pcg64_cases())


if __name__ == "__main__":
    sys.exit(main())
