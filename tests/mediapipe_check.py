"""`make mediapipe-check`: Google's readers of the standard TFLite metadata read edgepack's files.

    .venv-mediapipe/bin/python tests/mediapipe_check.py FOLDER

FOLDER is the runtime-check folder (tests/runtime_only_check.py): exported .tflite files, each with
its sidecar <file>.json, images.npy and <file>.probs.npy (what edgepack's runtime gave). It runs in
its own environment with mediapipe and numpy only: mediapipe needs absl-py >= 2, which TF-MOT 0.8
(absl-py ~= 1.2) refuses, so it cannot sit in .venv; tflite-support (the Task Library's Python
package) needs protobuf < 4, which TensorFlow 2.21 refuses. MediaPipe Tasks succeeds the Task Library
and reads the same metadata (TFLITE_METADATA, schema "M001").

Checked for every .tflite file (never edgepack's own reader; edgepack is not even installed here):
  - MediaPipe's generated metadata schema (mediapipe.tasks.metadata) finds the labels file, with the
    sidecar's class names in order, and the normalization (mean, std) equal to the sidecar's
    pixel_scaling in pixel units;
  - MediaPipe's ImageClassifier loads the file, names every category with those labels and, for
    float-input files, scores every image as edgepack's runtime did (so it applied that
    normalization; dynamic-range files within TOLERANCE). uint8-input files take raw pixels (no
    normalization step) and int8 kernels differ between engines and CPUs: their scores are only
    checked to be probabilities. int8-input files (`--option io=int8`) are refused by
    ImageClassifier (uint8/float32 input only): the refusal itself is checked, so the docs stay true.
Exit status 1 with one line per problem.
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np

# Max |score difference| from edgepack's runtime for float-input files: float kernels agree to ~3e-8
# here; dynamic-range files quantize activations at run time with kernels that differ between engines
# and CPUs (4e-5 here), still far below what a wrong normalization does to the scores.
TOLERANCE = {"tflite-dynamic": 0.02}
FLOAT_TOLERANCE = 1e-4


def standard_metadata(path: Path) -> tuple[list[str], list[float], list[float]]:
    """(labels, mean, std) as MediaPipe's generated flatbuffer code reads them from the file."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as ms
    from mediapipe.tasks.metadata import schema_py_generated as tfl

    raw = path.read_bytes()
    model = tfl.Model.GetRootAsModel(raw, 0)
    entry = next(model.Metadata(i) for i in range(model.MetadataLength())
                 if model.Metadata(i).Name() == b"TFLITE_METADATA")
    buf = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    meta = ms.ModelMetadata.GetRootAsModelMetadata(buf, 0)
    graph = meta.SubgraphMetadata(0)
    unit = graph.InputTensorMetadata(0).ProcessUnits(0)
    assert unit.OptionsType() == ms.ProcessUnitOptions.NormalizationOptions, "no NormalizationOptions"
    norm = ms.NormalizationOptions()
    norm.Init(unit.Options().Bytes, unit.Options().Pos)
    out = graph.OutputTensorMetadata(0)
    files = [out.AssociatedFiles(i) for i in range(out.AssociatedFilesLength())]
    labels_type = ms.AssociatedFileType.TENSOR_AXIS_LABELS
    label_file = next(f.Name().decode() for f in files if f.Type() == labels_type)
    with zipfile.ZipFile(io.BytesIO(raw)) as z:  # the labels file is zipped onto the model
        labels = z.read(label_file).decode().splitlines()
    return labels, [float(v) for v in norm.MeanAsNumpy()], [float(v) for v in norm.StdAsNumpy()]


def expected_normalization(side: dict) -> tuple[np.ndarray, np.ndarray]:
    """TFLite's (pixel - mean) / std from edgepack's (pixel / divisor + offset - m) / s."""
    s, channels = side["pixel_scaling"], side["input_shape"][-1]
    div, off = float(s["divisor"]), float(s.get("offset") or 0.0)
    m = np.broadcast_to(s.get("mean") or [0.0], channels)
    sd = np.broadcast_to(s.get("std") or [1.0], channels)
    return div * (m - off), div * sd


def classify(path: Path, images: np.ndarray, n_classes: int) -> tuple[np.ndarray, list[list[str]]]:
    """(scores by class index, category names by index per image) from MediaPipe's ImageClassifier."""
    import mediapipe as mp
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    opts = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)),
                                         max_results=n_classes)
    scores = np.zeros((len(images), n_classes), np.float32)
    names: list[list[str]] = []
    with vision.ImageClassifier.create_from_options(opts) as clf:
        for i, img in enumerate(images):
            res = clf.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(img)))
            by_index = {c.index: c for c in res.classifications[0].categories}
            names.append([by_index[k].category_name if k in by_index else None for k in range(n_classes)])
            for k, c in by_index.items():
                scores[i, k] = c.score
    return scores, names


def check(path: Path, images: np.ndarray) -> list[str]:
    side = json.loads(Path(f"{path}.json").read_text())
    names, problems = list(side["class_names"]), []
    labels, mean, std = standard_metadata(path)
    if labels != names:
        problems.append(f"labels {labels} != the sidecar's class names {names}")
    want_mean, want_std = expected_normalization(side)
    if not (np.allclose(mean, want_mean, atol=1e-4) and np.allclose(std, want_std, atol=1e-4)):
        problems.append(f"normalization mean {mean} / std {std} != {want_mean} / {want_std}")
    if side["input_dtype"] == "int8":  # io=int8: ImageClassifier takes uint8/float32 input only (why
        # tflite-int8 defaults to uint8 io): the metadata above must still read; the refusal is checked
        try:
            classify(path, images[:1], len(names))
            problems.append("ImageClassifier accepted an int8-input file (docs say it refuses them)")
        except ValueError as e:
            if "uint8/float32" not in str(e):
                problems.append(f"ImageClassifier refused it for another reason: {str(e)[:200]}")
        return [f"{path.name}: {p}" for p in problems]
    scores, seen = classify(path, images, len(names))
    if any(row != names for row in seen):
        problems.append(f"ImageClassifier category names {seen[0]} != {names}")
    if side["input_dtype"] == "float32":
        diff = float(np.abs(scores - np.load(f"{path}.probs.npy")[: len(images)]).max())
        if diff > TOLERANCE.get(side["format"], FLOAT_TOLERANCE):
            problems.append(f"ImageClassifier scores differ from edgepack's runtime by {diff:.2g}")
    elif not (np.all(scores >= 0) and np.all(scores <= 1)):
        problems.append("ImageClassifier scores are not probabilities")
    return [f"{path.name}: {p}" for p in problems]


def main(folder: str) -> int:
    root = Path(folder)
    files = sorted(p for p in root.glob("*.tflite") if not p.name.startswith("altered-"))
    if not files:
        print(f"mediapipe-check: no .tflite files in {root}", file=sys.stderr)
        return 1
    images = np.load(root / "images.npy")
    problems = [p for f in files for p in check(f, images)]
    for p in problems:
        print(f"mediapipe-check: {p}", file=sys.stderr)
    if not problems:
        print(f"mediapipe-check: {len(files)} .tflite files read by MediaPipe "
              f"(labels, normalization, ImageClassifier on {len(images)} images)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
