#!/usr/bin/python3
"""Reference values for drift's statistics, computed once with scipy.

Documentation only: the Go tests read vectors.json and never run Python.
Regenerate with: /usr/bin/python3 drift/testdata/make_vectors.py > drift/testdata/vectors.json
"""
import json

import numpy as np
import scipy
from scipy.spatial.distance import jensenshannon
from scipy.stats import cramervonmises_2samp, ks_2samp, wasserstein_distance

rng = np.random.default_rng(20260401)


def saturated(n, pos, shift=0.0):
    """Scores like a confident classifier's: most at exactly 0 or 1 (ties)."""
    s = np.where(rng.random(n) < pos, rng.beta(8 + shift * 10, 1, n), rng.beta(1, 8 + shift * 10, n))
    s = np.round(s, 3)
    s[s > 0.995] = 1.0
    s[s < 0.005] = 0.0
    return s


def hist(v, bins=20):
    h = np.zeros(bins)
    for x in v:
        h[min(max(int(x * bins), 0), bins - 1)] += 1
    return h


def psi(e, a, floor=1e-4):
    e = np.maximum(e / e.sum(), floor)
    a = np.maximum(a / a.sum(), floor)
    return float(np.sum((a - e) * np.log(a / e)))


cases = []
samples = [
    ("continuous", rng.random(40), rng.random(25) * 0.8 + 0.1),
    ("normal_shift", rng.normal(0, 1, 60), rng.normal(0.4, 1.2, 35)),
    ("saturated_ties", saturated(80, 0.1), saturated(50, 0.3)),
    ("heavy_ties", np.round(rng.random(30), 1), np.round(rng.random(45) * 0.9, 1)),
    ("tiny", np.array([0.1, 0.5, 0.5, 0.9]), np.array([0.5, 0.7])),
    ("identical", np.array([0.0, 0.0, 1.0, 0.3, 0.3]), np.array([0.0, 0.0, 1.0, 0.3, 0.3])),
]
for name, x, y in samples:
    hx, hy = hist(x), hist(y)
    cases.append({
        "name": name,
        "x": [float(v) for v in x],
        "y": [float(v) for v in y],
        "ks": float(ks_2samp(x, y).statistic),
        "cvm": float(cramervonmises_2samp(x, y).statistic),
        "wasserstein": float(wasserstein_distance(x, y)),
        "hist_x": hx.tolist(),
        "hist_y": hy.tolist(),
        "jensenshannon": float(jensenshannon(hx, hy)),
        "psi": psi(hx, hy),
    })
print(json.dumps({"generator": "drift/testdata/make_vectors.py", "scipy": scipy.__version__, "cases": cases}, indent=1))
