"""Per-row explanations for `edgepack compare`: confidence of every change, and flips.

compare.py keeps each row's top-1 predictions and their probabilities on the shared test images
(`Kept`); after `derive` has chosen each row's control and the recommendation, `explain` fills the
rows' `confidence` and `flips` keys and returns the contact sheets to write (report-relative path ->
PNG bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgepack.report import flips as flips_mod
from edgepack.report import stats
from edgepack.report.rows import Confidence, ResultRow, Results


@dataclass(frozen=True)
class Kept:
    """One row's outputs on the test images."""

    pred: np.ndarray  # top-1 class per image
    conf: np.ndarray  # probability of that class per image (float32)

    @classmethod
    def of(cls, probs: np.ndarray | None) -> Kept | None:
        if probs is None:
            return None
        probs = np.asarray(probs)
        pred = probs.argmax(axis=1)
        return cls(pred, probs[np.arange(len(pred)), pred].astype(np.float32))


def _latency(row: ResultRow) -> dict | None:
    """The row's latency interval: 1 thread when measured, else all cores."""
    for key in ("threads_1", "threads_all"):
        t = getattr(row.latency, key)
        if t:
            got = stats.latency_interval(t.model_dump())
            return {**got, "threads": key} if got else None
    return None


def explain(results: Results, kept: dict[str, Kept], ds) -> dict[str, bytes]:
    """Fill every ok row's `confidence` and `flips` (and `flip_sheet`); returns the sheets' PNGs."""
    base_id = results.baseline
    base = kept.get(base_id) if base_id else None
    base_row = results.row(base_id)
    base_lat = _latency(base_row) if base_row is not None else None
    sheets: dict[str, bytes] = {}
    for row in results.rows:
        mine = kept.get(row.id)
        if mine is None or not row.ok:
            continue
        lat = _latency(row)
        conf = Confidence(rule=stats.NOISE_RULE, latency=lat)
        if base is not None and row.id != base_id:
            conf.vs_baseline = stats.compare_predictions(mine.pred, base.pred, ds.y_test)
            conf.latency_vs_baseline_within_noise = stats.latency_within_noise(lat, base_lat)
            row.flips = flips_mod.flip_summary(mine.pred, base.pred, ds.y_test, ds.class_names)
            if flips_mod.wants_sheet(row):
                title = f"{row.id}: most confident flips vs {base_id}"
                png = flips_mod.contact_sheet(ds.x_test, ds.y_test, mine.pred, mine.conf, base.pred,
                                              ds.class_names, title)
                if png is not None:
                    row.flip_sheet = flips_mod.sheet_name(row.id)
                    sheets[row.flip_sheet] = png
        ctrl = kept.get(row.control_ref) if row.control_ref != row.id else None
        if ctrl is not None:
            conf.vs_control = stats.compare_predictions(mine.pred, ctrl.pred, ds.y_test)
        row.confidence = conf
    return sheets


def noise_lines(results: Results) -> list[str]:
    """One sentence a compressed row whose accuracy change is within noise (for the summary)."""
    out = []
    for r in results.rows:
        c = r.confidence.vs_baseline if r.confidence else None
        if c and c.within_noise and not c.only_this_right + c.only_ref_right:
            same = r.flips is not None and r.flips.changed == 0
            out.append(f"{r.id}: " + ("the same top-1 as the baseline on every test image" if same
                                       else "right and wrong on exactly the same test images"))
        elif c and c.within_noise:
            lo, hi = c.ci_pts
            out.append(f"{r.id}: {c.delta_pts:+.2f} pts vs the baseline is within noise "
                       f"(McNemar p = {c.p_value:.2f}; 95% interval {lo:+.2f} to {hi:+.2f} pts)")
    return out
