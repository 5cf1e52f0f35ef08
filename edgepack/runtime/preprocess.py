"""Pixel scaling shared by training and the runtime (numpy only, no TensorFlow).

The seed scales uint8 pixels with `images / 255.0` (float64) before Keras casts to float32;
doing exactly that here keeps every float model's input bit-identical to training's.
"""

import numpy as np

# Recorded in every artefact's metadata so an app can reproduce the input without edgepack.
PIXEL_SCALING = {"divisor": 255.0, "range": [0.0, 1.0], "formula": "float32(uint8_pixels / 255.0)"}


def scale_pixels(images: np.ndarray, divisor: float = PIXEL_SCALING["divisor"]) -> np.ndarray:
    """uint8 NHWC pixels -> float32 in [0, 1], exactly as the seed's recipe does."""
    return (np.asarray(images) / divisor).astype(np.float32)
