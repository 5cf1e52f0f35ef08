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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows = int(np.ceil(len(idx) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.9, rows * 2.35 + 0.4), dpi=72, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, idx, strict=False):
        ax.imshow(images[i], interpolation="nearest")
        ax.set_title(f"true {class_names[labels[i]]}\nbase {class_names[base_pred[i]]}\n"
                     f"now {class_names[pred[i]]} {conf[i]:.0%}", fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def wants_sheet(row: ResultRow) -> bool:
    return row.ok and (row.format in SHEET_FORMATS or row.recommended)
