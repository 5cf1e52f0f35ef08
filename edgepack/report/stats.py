"""Is a change real or noise? Paired tests on the same test images, and latency spread (numpy only).

Two rows evaluated on the same images differ only where exactly one of them is right (the
discordant images). The exact McNemar test asks whether those split evenly (two-sided binomial test,
p = 1/2); the paired bootstrap resamples the images and gives an interval for the accuracy change.
Rule used by the report: a change is "within noise" when McNemar's p >= ALPHA (the bootstrap
interval is shown beside it; with 10,000 images the two agree except at the edge).
"""

from __future__ import annotations

from math import comb

import numpy as np

ALPHA = 0.05  # McNemar p at or above this: the change is within noise
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_LEVEL = 0.95  # two-sided interval
BOOTSTRAP_SEED = 0
LATENCY_ROUNDS = 5  # slices of one latency measurement whose medians give its spread
NOISE_RULE = (f"McNemar exact p >= {ALPHA:g} (two-sided binomial test on the discordant images); "
              f"bootstrap: {BOOTSTRAP_LEVEL:.0%} interval of {BOOTSTRAP_RESAMPLES} paired resamples")


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: `only_a` images right only under A, `only_b` only under B.

    Under no change each discordant image is A's or B's with probability 1/2, so
    p = min(1, 2 * P(X <= min(only_a, only_b))) for X ~ Binomial(only_a + only_b, 1/2).
    Exact integer arithmetic (no scipy needed; n up to 10,000 takes milliseconds).
    """
    if only_a < 0 or only_b < 0:
        raise ValueError(f"counts must be >= 0, got {only_a} and {only_b}")
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**n)


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                     level: float = BOOTSTRAP_LEVEL, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile interval (points) of accuracy(A) - accuracy(B), resampling images with replacement.

    Only the per-image difference (+1, -1 or 0) matters, so a resample of n images is one multinomial
    draw of those three counts: the same distribution as resampling indices, in microseconds.
    """
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"need two equal-length 1-D arrays of right/wrong, got {a.shape} and {b.shape}")
    n = len(a)
    counts = np.array([np.sum(a & ~b), np.sum(~a & b), 0])
    counts[2] = n - counts[0] - counts[1]
    draws = np.random.default_rng(seed).multinomial(n, counts / n, size=resamples)
    diffs = 100.0 * (draws[:, 0] - draws[:, 1]) / n
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(diffs, [tail, 100 - tail])
    return float(lo), float(hi)


def compare_predictions(pred_a: np.ndarray, pred_b: np.ndarray, labels: np.ndarray) -> dict:
    """A's accuracy change against B on the same images: points, McNemar p, bootstrap interval, verdict."""
    labels = np.asarray(labels)
    right_a, right_b = np.asarray(pred_a) == labels, np.asarray(pred_b) == labels
    only_a, only_b = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    p = mcnemar_exact(only_a, only_b)
    lo, hi = paired_bootstrap(right_a, right_b)
    return {"delta_pts": 100.0 * (only_a - only_b) / len(labels), "p_value": p, "ci_pts": [lo, hi],
            "only_this_right": only_a, "only_ref_right": only_b, "within_noise": p >= ALPHA}


def latency_interval(timing: dict | None) -> dict | None:
    """{p50_ms, low_ms, high_ms, rounds}: the spread (min-max) of the round medians of one timing
    dict (edgepack.timing.Latency.as_dict with rounds > 1); None without rounds."""
    rounds = (timing or {}).get("round_p50_ms") or []
    if len(rounds) < 2:
        return None
    return {"p50_ms": float(np.median(rounds)), "low_ms": float(min(rounds)), "high_ms": float(max(rounds)),
            "rounds": len(rounds)}


def latency_within_noise(a: dict | None, b: dict | None) -> bool | None:
    """Two latency intervals overlap: their speed difference is within this machine's noise."""
    if not a or not b:
        return None
    return a["low_ms"] <= b["high_ms"] and b["low_ms"] <= a["high_ms"]
