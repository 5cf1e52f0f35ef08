"""One rule for "the best model within an accuracy goal", shared by `compare` and `optimize` (numpy only).

Latencies are medians of repeated rounds with their spread (edgepack.report.stats.latency_interval): two
latencies whose round intervals overlap are a tie and never decide a pick; ties go to the smaller
gzip'ed file, then to the more accurate. A latency measured without rounds falls back to a band of
FAST_ENOUGH around the fastest (batch-1 medians of near-identical models differ by ~10-20% run to run).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgepack.report.stats import latency_interval, latency_within_noise

FAST_ENOUGH = 1.25  # fallback tie band (factor of the fastest p50) for timings without rounds
OBJECTIVES = ("size", "latency")


@dataclass(frozen=True)
class Candidate:
    """One measured model file that meets the accuracy goal."""

    key: object  # the caller's handle (a report row, a trial point)
    accuracy: float  # fraction correct on the images the goal is judged on
    gzip_bytes: int  # gzip'ed size of the file
    timing: dict | None = None  # edgepack.timing.Latency.as_dict (p50_ms, round_p50_ms) or None


def _p50(c: Candidate) -> float:
    return (c.timing or {}).get("p50_ms") or float("inf")


def as_fast(c: Candidate, fastest: Candidate) -> bool:
    """`c` is as fast as `fastest`: their round intervals overlap, or (no rounds) within FAST_ENOUGH."""
    same = latency_within_noise(latency_interval(c.timing), latency_interval(fastest.timing))
    if same is not None:
        return same
    return _p50(c) <= _p50(fastest) * FAST_ENOUGH


def _by_size(c: Candidate) -> tuple:
    return c.gzip_bytes, -c.accuracy


def pick(cands: list[Candidate], objective: str = "latency") -> Candidate | None:
    """The best candidate for `objective`: "size" (smallest file; equal sizes: more accurate) or
    "latency" (fastest, where all candidates as fast as the fastest tie; ties: smaller, then more
    accurate). Without any latency figure "latency" means "size"."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if not cands:
        return None
    if objective == "size":
        return min(cands, key=_by_size)
    fastest = min(cands, key=_p50)
    fast = [c for c in cands if as_fast(c, fastest)] if _p50(fastest) < float("inf") else cands
    return min(fast, key=_by_size)
