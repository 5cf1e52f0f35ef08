"""A tiny app that embeds edgepack's runtime (ONNX Runtime underneath) to classify images.

It needs only `pip install 'edgepack[images]'` (numpy, onnxruntime, ai-edge-litert, Pillow), never
TensorFlow. The model file carries its class names, pixel scaling and quantization in its metadata.

usage: python examples/classify_app.py runs/export/baseline/onnx-int8.onnx cat.png ship.jpg
"""

import sys

import numpy as np

from edgepack import runtime
from edgepack.runtime.images import read_image  # PNG/JPEG -> 32x32 RGB uint8 (centre crop, resize)


def main(model_path: str, image_paths: list[str]) -> None:
    model = runtime.load(model_path, threads=1)  # an .onnx file runs on ONNX Runtime
    images = np.stack([read_image(p) for p in image_paths])  # (N, 32, 32, 3) uint8
    for path, top in zip(image_paths, model.classify(images, top_k=2), strict=True):
        print(f"{path}: " + ", ".join(f"{p.label} ({p.score:.0%})" for p in top))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__.strip().splitlines()[-1])
    main(sys.argv[1], sys.argv[2:])
