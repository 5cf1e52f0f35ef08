"""edgepack's runtime: what apps embed to run exported models (numpy + ONNX Runtime / LiteRT, no TensorFlow).

    from edgepack import runtime

    clf = runtime.load("model.onnx")           # or "model.tflite" (with model.tflite.json next to it)
    probs = clf.predict(images)                # uint8 (N, 32, 32, 3) -> float32 (N, 10)
    clf.classify(image, top_k=3)               # [[Prediction(label='cat', class_id=3, score=0.81), ...]]
    runtime.load("model.tflite", kernels="tflm")  # on TensorFlow Lite Micro (pip install 'edgepack[tflm]')

Importing this package loads numpy only; ONNX Runtime or LiteRT is imported by the first `load()`
of a file of its kind. Nothing here may import TensorFlow (a test and `make runtime-check` enforce it).
"""

from edgepack.runtime.backends import KERNELS, RUNTIMES, LiteRTClassifier, OnnxClassifier, load
from edgepack.runtime.classifier import (
    Classifier,
    InputError,
    ModelFileError,
    ModelNotFoundError,
    Prediction,
)
from edgepack.runtime.tflm import TflmClassifier

__all__ = ["KERNELS", "RUNTIMES", "Classifier", "InputError", "LiteRTClassifier", "ModelFileError",
           "ModelNotFoundError", "OnnxClassifier", "Prediction", "TflmClassifier", "load"]
