"""Latency measurement shared by `edgepack bench` and `edgepack compare` (numpy only).

The machine is noisy: every figure is a distribution (median, p90, p99) over many timed runs
after warm-up, measured with perf_counter_ns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Latency:
    """Milliseconds per call over `runs` timed calls (after `warmup` untimed ones)."""

    p50_ms: float  # median
    p90_ms: float
    p99_ms: float
    mean_ms: float
    runs: int
    warmup: int
    round_p50_ms: tuple = ()  # median of each of `rounds` consecutive slices of the runs (their spread
    #                           is the run-to-run noise: edgepack.report.stats.latency_interval)

    def as_dict(self) -> dict:
        return asdict(self)


def measure(fn: Callable[[], object], runs: int = 200, warmup: int = 20, rounds: int = 1) -> Latency:
    """Time `fn()` `runs` times after `warmup` calls; returns the distribution in milliseconds.

    `rounds` > 1 also gives the median of each of that many consecutive slices of the same timed
    calls (no extra calls): how much the median moves within one measurement."""
    if runs < 1 or warmup < 0 or not 1 <= rounds <= runs:
        raise ValueError(f"runs must be >= 1, warmup >= 0 and rounds 1..runs, got {runs}, {warmup}, {rounds}")
    for _ in range(warmup):
        fn()
    samples = np.empty(runs, dtype=np.float64)
    for i in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        samples[i] = time.perf_counter_ns() - t0
    ms = samples / 1e6
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    per_round = tuple(float(np.median(part)) for part in np.array_split(ms, rounds)) if rounds > 1 else ()
    return Latency(float(p50), float(p90), float(p99), float(ms.mean()), runs, warmup, per_round)
