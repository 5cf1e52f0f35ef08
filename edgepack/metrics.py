"""Classification metrics (scikit-learn), one schema for training, compression and comparison.

metrics.json schema (version 1):
    accuracy            fraction of test images whose top-1 equals the label
    precision_macro, recall_macro, f1_macro
    per_class           {class name: {precision, recall, f1, accuracy, support}}
                        (per-class accuracy is the share of that class's images classified right)
    confusion_matrix    rows = true class, columns = predicted class, in class_names order
    class_names, num_test_images
    weak_classes        {class name: recall} of the classes WEAK_RULE flags (empty when none): a model
                        can score a high accuracy while never predicting a minority class (absent in
                        runs made before it was recorded)
`Metrics` is that schema as a typed record: a run folder's `metrics` (edgepack.rundir.load_run), checked
by edgepack.typed.validate when the folder is written and read.

Weak classes (the one rule; train, compress and compare all use `weak_classes` / `imbalance_line`): a
class with test images whose recall is 0, or below WEAK_RECALL_RATIO (1/3) of the median recall of the
classes with test images. A class with no test images is never flagged (its recall is unknown).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgepack.atomic import RECORD_CONFIG
from edgepack.errors import KeyProblem

SCHEMA_VERSION = 1
WEAK_RECALL_RATIO = 1 / 3  # a class below this share of the median class recall is weak
WEAK_RULE = "recall 0 or below 1/3 of the median class recall"


# metrics.json as a typed record, checked when a run folder is written and read (edgepack.rundir).
_CHECKED = RECORD_CONFIG


@dataclass(frozen=True)
class ClassMetrics:
    """One class's figures on the test set."""

    __pydantic_config__ = _CHECKED
    precision: float
    recall: float
    f1: float
    accuracy: float  # the share of the class's images classified right (= recall)
    support: int  # the class's test images


@dataclass(frozen=True)
class Metrics:
    """A run folder's metrics.json (schema version 1; `weak_classes` came later: None in older runs)."""

    __pydantic_config__ = _CHECKED
    schema_version: int
    accuracy: float  # fraction of test images whose top-1 equals the label
    precision_macro: float
    recall_macro: float
    f1_macro: float
    per_class: dict[str, ClassMetrics]
    confusion_matrix: list[list[int]]  # rows = true class, columns = predicted class
    class_names: list[str]
    num_test_images: int
    weak_classes: dict[str, float] | None = None  # {class name: recall}; None: not recorded
    non_finite: dict[str, str] | None = None  # edgepack.atomic.write_json's note (NaN written as null)

    def __post_init__(self):
        if self.schema_version != SCHEMA_VERSION:
            raise KeyProblem("schema_version", f"metrics schema {self.schema_version} is not this "
                             f"edgepack's ({SCHEMA_VERSION})")


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray,
                           class_names: Sequence[str]) -> dict:
    """Metrics of top-1 predictions `y_pred` against labels `y_true` (both int class indices)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or y_true.size == 0:
        raise ValueError(f"labels {y_true.shape} and predictions {y_pred.shape} must be equal, non-empty 1-D")
    labels = list(range(len(class_names)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    pm, rm, fm, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro",
                                                    zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    return {
        "schema_version": SCHEMA_VERSION,
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision_macro": float(pm),
        "recall_macro": float(rm),
        "f1_macro": float(fm),
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                   "accuracy": float(r[i]), "support": int(s[i])}
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
        "num_test_images": int(y_true.size),
        "weak_classes": weak_classes(class_names, cm.tolist()),
    }


def weak_classes(class_names: Sequence[str], confusion: Sequence[Sequence[int]]) -> dict[str, float]:
    """{class name: recall} of the weak classes (module docstring) from a confusion matrix whose rows
    are true classes in `class_names` order; in class order, empty when none is weak."""
    cm = np.asarray(confusion, dtype=np.int64)
    support = cm.sum(axis=1)
    has = support > 0
    if not has.any():
        return {}
    recall = np.divide(np.diag(cm), support, out=np.zeros(len(support)), where=has)
    limit = WEAK_RECALL_RATIO * float(np.median(recall[has]))
    return {str(name): float(recall[i]) for i, name in enumerate(class_names)
            if has[i] and (recall[i] == 0 or recall[i] < limit)}


def imbalance_line(weak: dict[str, float], accuracy: float, f1_macro: float, where: str = "") -> str | None:
    """The one warning line for weak classes (None when there are none): names them with their recall,
    and sets macro F1 against the accuracy they hide. `where` prefixes the model's name."""
    if not weak:
        return None
    named = ", ".join(f"{name} {100 * r:.1f}%" for name, r in weak.items())
    return (f"{where}{len(weak)} class{'es' if len(weak) > 1 else ''} far below the others "
            f"({WEAK_RULE}): recall {named}; accuracy {100 * accuracy:.2f}% hides "
            f"{'them' if len(weak) > 1 else 'it'}, macro F1 {100 * f1_macro:.1f}%: add images of "
            f"{'these classes' if len(weak) > 1 else 'this class'} or balance the training set")


def top1_agreement(pred_a: np.ndarray, pred_b: np.ndarray) -> float:
    """Share of images where two models' top-1 classes are equal."""
    pred_a, pred_b = np.asarray(pred_a), np.asarray(pred_b)
    if pred_a.shape != pred_b.shape or pred_a.size == 0:
        raise ValueError(f"prediction arrays differ in shape: {pred_a.shape} vs {pred_b.shape}")
    return float(np.mean(pred_a == pred_b))
