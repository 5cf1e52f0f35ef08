"""Pixel scaling shared by training and the runtime (numpy only, no TensorFlow).

A model's pixel scaling is a small dict recorded in every artefact's metadata (`pixel_scaling`), so an
app can reproduce the input without edgepack:

    float_input = (uint8_pixels / divisor + offset - mean) / std      (float64, then float32)

`mean` and `std` are per channel (lists) or absent; `range` is what float inputs may span. The seed
scales with `images / 255.0` (float64) before Keras casts to float32; the "unit" preset does exactly
that, so every float model's input stays bit-identical to training's.
"""

from __future__ import annotations

import numpy as np

# Named presets (`--preprocess NAME`); `mean-std:M1,M2,M3/S1,S2,S3` (pixel units) is parsed by parse().
PRESETS = {
    "unit": {"divisor": 255.0, "offset": 0.0, "range": [0.0, 1.0],
             "formula": "float32(uint8_pixels / 255.0)"},
    "symmetric": {"divisor": 127.5, "offset": -1.0, "range": [-1.0, 1.0],
                  "formula": "float32(uint8_pixels / 127.5 - 1)"},
    "raw": {"divisor": 1.0, "offset": 0.0, "range": [0.0, 255.0],
            "formula": "float32(uint8_pixels): the model rescales itself"},
}
PIXEL_SCALING = PRESETS["unit"]  # the tutorial's recipe, and the default


class PreprocessError(ValueError):
    """A pixel-scaling spec that cannot be used."""


def mean_std(mean: list[float], std: list[float]) -> dict:
    """Per-channel standardisation in pixel units: (pixels - mean) / std."""
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if len(mean) != len(std) or not mean or not all(s > 0 for s in std) or not np.isfinite(mean + std).all():
        raise PreprocessError(f"mean-std needs as many finite means as positive stds, got {mean} / {std}")
    lo = min((0.0 - m) / s for m, s in zip(mean, std, strict=True))
    hi = max((255.0 - m) / s for m, s in zip(mean, std, strict=True))
    return {"divisor": 1.0, "offset": 0.0, "mean": mean, "std": std, "range": [lo, hi],
            "formula": "float32((uint8_pixels - mean) / std), per channel"}


def parse(text: str) -> dict:
    """A spec from its name (`unit`, `symmetric`, `raw`) or `mean-std:M1,M2,M3/S1,S2,S3`."""
    if text in PRESETS:
        return dict(PRESETS[text])
    if text.startswith("mean-std:") and "/" in text:
        means, _, stds = text[len("mean-std:"):].partition("/")
        try:
            return mean_std([float(v) for v in means.split(",")], [float(v) for v in stds.split(",")])
        except ValueError as e:
            raise PreprocessError(f"bad mean-std spec {text!r}: {e}") from None
    raise PreprocessError(f"unknown preprocessing {text!r}: use {', '.join(PRESETS)} or "
                          "mean-std:M1,M2,M3/S1,S2,S3 (pixel units)")


def scale_pixels(images: np.ndarray, scaling: dict | float | None = None) -> np.ndarray:
    """uint8 NHWC pixels -> float32 model input by `scaling` (a spec dict; a bare number is a divisor;
    None is the tutorial's [0, 1])."""
    if scaling is None:
        scaling = PIXEL_SCALING
    elif not isinstance(scaling, dict):
        scaling = {"divisor": float(scaling), "offset": 0.0}
    x = np.asarray(images) / scaling["divisor"]
    if scaling.get("offset"):
        x = x + scaling["offset"]
    if scaling.get("mean") is not None:
        x = (x - np.asarray(scaling["mean"])) / np.asarray(scaling["std"])
    return x.astype(np.float32)
