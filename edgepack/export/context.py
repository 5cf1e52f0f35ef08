"""What a converter gets: the Keras model, its options, the calibration sample and a scratch folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# run metadata `technique` values whose models carry learned int8 ranges
QAT_TECHNIQUES = ("qat", "pqat", "cqat", "pcqat")


@dataclass
class Context:
    """Inputs shared by the converters of one export call."""

    model: object  # the source tf_keras model
    options: dict  # this format's options, parsed, defaults filled in
    calibration: Callable[[int], np.ndarray]  # n -> float32 class-balanced training images (same seed)
    qat: bool  # the model has QAT quantizers: int8 conversion uses their ranges, no calibration
    scratch: Path  # a folder for intermediate files (removed with the export's temporary folder)
    cache: dict = field(default_factory=dict)  # intermediate results shared between formats


def is_qat_model(model, technique: str | None = None) -> bool:
    """True for QAT / PQAT sources: by the run's technique, or by TF-MOT quantize wrappers in the model."""
    if technique in QAT_TECHNIQUES:
        return True
    return any(type(layer).__name__.startswith("QuantizeWrapper") for layer in getattr(model, "layers", []))
