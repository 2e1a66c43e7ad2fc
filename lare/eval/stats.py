"""Intervals for comparisons: bootstrap over rows and seeds, paired where two models answered the same rows.

`correct` arrays are [S seeds, N rows] of 0/1, the same rows in the same order for every model: one resample
draws S seeds and N rows with replacement and is applied to both sides of a difference, so the interval of
lare - baseline reflects that both answered the same questions (paired), and seed-to-seed spread as well.
"""

from __future__ import annotations

import numpy as np


def _resamples(shape: tuple[int, int], n_boot: int, seed: int):
    rng = np.random.default_rng(seed)
    S, N = shape
    for _ in range(n_boot):
        yield rng.integers(0, S, size=S), rng.integers(0, N, size=N)


def bootstrap_ci(correct, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Accuracy in percent with its percentile bootstrap interval over seeds and rows."""
    c = np.asarray(correct, dtype=np.float64)
    if c.ndim != 2 or c.size == 0:
        raise ValueError(f"correct must be [seeds, rows] with at least one entry, got shape {c.shape}")
    stats = np.array([c[s][:, r].mean() for s, r in _resamples(c.shape, n_boot, seed)])
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return {"acc": float(100 * c.mean()), "lo": float(100 * lo), "hi": float(100 * hi), "seeds": c.shape[0], "rows": c.shape[1]}


def paired_diff_ci(a, b, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """a - b in accuracy points, paired on seeds (seed i of a with seed i of b) and on rows."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired difference needs the same seeds and rows on both sides: {a.shape} vs {b.shape}")
    d = a - b
    stats = np.array([d[s][:, r].mean() for s, r in _resamples(d.shape, n_boot, seed)])
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return {"diff": float(100 * d.mean()), "lo": float(100 * lo), "hi": float(100 * hi), "p_le_0": float((stats <= 0).mean())}
