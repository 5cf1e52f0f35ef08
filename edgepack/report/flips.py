"""What compression changed, image by image: per-class accuracy change, prediction flips, contact sheets.

A flip is a test image whose top-1 prediction differs from the baseline model's. Contact sheets
show the flips the compressed model is most sure of (highest probability of its new class): those
are the changes a user would notice first.
"""

from __future__ import annotations

import io
import re

import numpy as np

from edgepack.report.rows import ResultRow

SHEET_IMAGES = 16  # thumbnails per contact sheet (4 x 4; ~60 KB a PNG)
SHEET_FOLDER = "flips"  # in the report folder
SHEET_FORMATS = ("tflite-int8", "onnx-int8")  # rows that get a sheet (plus the recommended row)


def flip_summary(pred: np.ndarray, base_pred: np.ndarray, labels: np.ndarray, class_names) -> dict:
    """{changed, per_class_delta_pts, pairs}: images whose top-1 changed; per true class, accuracy
    minus the baseline's (points); flips per (baseline class -> new class), most frequent first."""
    pred, base_pred, labels = np.asarray(pred), np.asarray(base_pred), np.asarray(labels)
    changed = pred != base_pred
    per_class = {}
    for c, name in enumerate(class_names):
        mine = labels == c
        if mine.any():
            per_class[name] = 100.0 * (np.mean(pred[mine] == c) - np.mean(base_pred[mine] == c))
    pairs: dict[tuple[int, int], int] = {}
    for b, n in zip(base_pred[changed].tolist(), pred[changed].tolist(), strict=True):
        pairs[(b, n)] = pairs.get((b, n), 0) + 1
    ordered = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
    return {"changed": int(changed.sum()), "per_class_delta_pts": per_class,
            "pairs": [{"from": class_names[b], "to": class_names[n], "count": k} for (b, n), k in ordered]}


def most_confident_flips(pred: np.ndarray, conf: np.ndarray, base_pred: np.ndarray,
                         k: int = SHEET_IMAGES) -> np.ndarray:
    """Indices of up to `k` flipped images, highest probability `conf` of the new prediction first."""
    flipped = np.flatnonzero(np.asarray(pred) != np.asarray(base_pred))
    return flipped[np.argsort(-np.asarray(conf)[flipped], kind="stable")[:k]]


def sheet_name(row_id: str) -> str:
    """The sheet's path in the report folder, from a row id ("prune-0.8/tflite-int8")."""
    return f"{SHEET_FOLDER}/{re.sub(r'[^A-Za-z0-9._-]+', '_', row_id)}.png"


def contact_sheet(images: np.ndarray, labels: np.ndarray, pred: np.ndarray, conf: np.ndarray,
                  base_pred: np.ndarray, class_names, title: str) -> bytes | None:
    """PNG bytes: the most confident flips with true class, baseline's and new prediction (`conf`: the
    probability of `pred`, per image); None if nothing flipped."""
    idx = most_confident_flips(pred, conf, base_pred)
    if not len(idx):
        return None
    from matplotlib.figure import Figure

    # A fixed grid (inches) of thumbnails with their 3 lines above: no pyplot state, no layout solver
    # (tight_layout took most of a sheet's time).
    cols, cell_w, cell_h, top = 4, 1.9, 2.35, 0.4
    rows = -(-len(idx) // cols)
    width, height = cols * cell_w, rows * cell_h + top
    fig = Figure(figsize=(width, height), dpi=72)
    fig.text(0.5, 1 - top / 2 / height, title, ha="center", va="center", fontsize=8)
    for k, i in enumerate(idx):
        r, c = divmod(k, cols)
        left, w = (c * cell_w + 0.1) / width, (cell_w - 0.2) / width
        ax = fig.add_axes((left, 1 - (top + (r + 1) * cell_h - 0.05) / height, w, (cell_h - 0.65) / height))
        ax.imshow(images[i], interpolation="nearest")
        ax.set_axis_off()
        fig.text(left + w / 2, 1 - (top + r * cell_h + 0.08) / height,
                 f"true {class_names[labels[i]]}\nbase {class_names[base_pred[i]]}\n"
                 f"now {class_names[pred[i]]} {conf[i]:.0%}", ha="center", va="top", fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def wants_sheet(row: ResultRow) -> bool:
    return row.ok and (row.format in SHEET_FORMATS or row.recommended)
