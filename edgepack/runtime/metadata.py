"""The metadata every exported model carries, so an app can use it without edgepack's training code.

`FileMetadata` is the one definition: export writes it with `to_json()`, and every reader (the runtime's
backends, `edgepack compare`, the export checks) parses it with `from_json()` or `read()`. It is stored
  - in ONNX files as `metadata_props` entry `edgepack` (the JSON text), and
  - for TFLite files in a sidecar `<file>.json` next to the model (e.g. `model.tflite.json`); the
    .tflite file itself also carries the standard TFLite metadata (labels, normalization) for the
    TFLite Support Task Library (edgepack.export.tflite_metadata).
Numpy only: an app reads it with the runtime alone.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

SCHEMA_VERSION = 2  # 1: untyped dict, no layout/channel order/resize; `source_sha256` only
ONNX_KEY = "edgepack"  # metadata_props key
SIDECAR_SUFFIX = ".json"  # TFLite sidecar: <file>.tflite.json
INPUT_DTYPES = ("float32", "int8", "uint8")  # what a model file's input tensor may take
LAYOUT = "NHWC"  # batch, height, width, channels: the only layout edgepack writes
CHANNEL_ORDER = "RGB"  # OpenCV's imread gives BGR: reverse the last axis (or predict(channel_order="BGR"))
# How an image of another size becomes input_shape (edgepack.runtime.images does exactly this).
RESIZE = {"crop": "centre square", "filter": "bilinear", "antialias": True, "library": "Pillow",
          "same_size": "used pixel for pixel"}


class MetadataError(ValueError):
    """A model file's edgepack metadata is missing, malformed or of an older schema."""


@dataclass(frozen=True)
class FileMetadata:
    """What an app needs to run one exported file (schema version 2)."""

    format: str  # export format name, e.g. "tflite-int8", "onnx-fp32"
    class_names: tuple[str, ...]  # index = class id
    input_shape: tuple[int, ...]  # one image, (height, width, channels); no batch dimension
    input_dtype: str  # dtype the file's input tensor takes: "float32", "int8" or "uint8"
    pixel_scaling: dict  # edgepack.runtime.preprocess spec: float input from uint8 pixels
    source_sha256: str  # sha256 of the Keras model file it was converted from
    technique: str  # compression technique of the source ("baseline", "prune", ...)
    variant: str  # the source run's variant name ("baseline", "prune-0.8", "qat", ...)
    edgepack_version: str  # version that wrote it
    input_quantization: dict | None = None  # {"scale", "zero_point"}: q = round(float / scale) + zp
    output_quantization: dict | None = None  # {"scale", "zero_point"}: probability = (q - zp) * scale
    layout: str = LAYOUT  # input tensor layout
    channel_order: str = CHANNEL_ORDER  # colour channel order of the input's last axis
    resize: dict = field(default_factory=lambda: dict(RESIZE))  # how other image sizes are fitted
    options: dict = field(default_factory=dict)  # the export format's options
    runs_in: tuple[str, ...] = ()  # engines the file was run in at export
    does_not_run_in: dict = field(default_factory=dict)  # engine -> why not (ONNX)
    opset: int | None = None  # ONNX opset; None for TFLite
    int8_scheme: dict | None = None  # onnx-int8: weight bits, activations, accurate_on, weight range
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> FileMetadata:
        """Parse and check; MetadataError naming `where` (one line) when it cannot be used."""
        try:
            raw = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MetadataError(f"{where}: edgepack metadata is not valid JSON ({e})") from None
        return cls.from_dict(raw, where)

    @classmethod
    def from_dict(cls, raw: object, where: str) -> FileMetadata:
        if not isinstance(raw, dict):
            raise MetadataError(f"{where}: edgepack metadata must be a JSON object")
        version = raw.get("schema_version")
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise MetadataError(f"{where}: edgepack metadata schema {version} is newer than this edgepack's "
                                f"({SCHEMA_VERSION}): upgrade edgepack")
        if version != SCHEMA_VERSION:
            raise MetadataError(f"{where}: edgepack metadata schema {version} is older than "
                                f"{SCHEMA_VERSION}: re-export the model with this edgepack version")
        names = {f.name for f in fields(cls)}
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [k for k in required if k not in raw]
        if missing:
            raise MetadataError(f"{where}: edgepack metadata lacks {', '.join(missing)}: re-export the model")
        values = {k: v for k, v in raw.items() if k in names}  # unknown keys: from a newer minor writer
        for key in ("class_names", "input_shape", "runs_in"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        meta = cls(**values)
        problem = meta.problem()
        if problem:
            raise MetadataError(f"{where}: edgepack metadata {problem}: re-export the model")
        return meta

    def problem(self) -> str | None:
        """What makes this metadata unusable, in words, or None."""
        shape = self.input_shape
        if not (len(shape) == 3 and all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                        for d in shape)):
            return f"input_shape must be [height, width, channels], got {list(shape)!r}"
        if self.input_dtype not in INPUT_DTYPES:
            return f"input_dtype must be one of {', '.join(INPUT_DTYPES)}, got {self.input_dtype!r}"
        if not self.class_names or not all(isinstance(c, str) for c in self.class_names):
            return "class_names must be a non-empty list of strings"
        if self.layout != LAYOUT or self.channel_order not in ("RGB", "BGR"):
            return f"layout {self.layout!r} / channel_order {self.channel_order!r} is not NHWC / RGB or BGR"
        return scaling_problem(self.pixel_scaling, shape[-1]) or _quant_problem(self)



def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def scaling_problem(s: object, channels: int) -> str | None:
    """What makes a pixel_scaling spec unusable for `channels`-channel images, in words, or None."""
    if not isinstance(s, dict) or not _number(s.get("divisor")) or s["divisor"] <= 0:
        return f"pixel_scaling must have a positive divisor, got {s!r}"
    if not _number(s.get("offset", 0.0)):
        return f"pixel_scaling offset must be a number, got {s.get('offset')!r}"
    span = s.get("range", [0.0, 1.0])
    if not (isinstance(span, list) and len(span) == 2 and all(map(_number, span)) and span[0] < span[1]):
        return f"pixel_scaling range must be [low, high], got {span!r}"
    if (s.get("mean") is None) != (s.get("std") is None):
        return "pixel_scaling needs both mean and std, or neither"
    if s.get("mean") is not None:
        mean, std = s["mean"], s["std"]
        ok = (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std)
              and len(mean) in (1, channels) and all(map(_number, mean + std)) and all(v > 0 for v in std))
        if not ok:
            return f"pixel_scaling mean/std must be {channels} numbers each (std > 0), got {mean!r} / {std!r}"
    return None


def _quant_problem(meta: FileMetadata) -> str | None:
    for key in ("input_quantization", "output_quantization"):
        q = getattr(meta, key)
        if q is not None and not (isinstance(q, dict) and _number(q.get("scale")) and q["scale"] > 0
                                  and isinstance(q.get("zero_point"), int)):
            return f"{key} must be null or {{scale > 0, integer zero_point}}, got {q!r}"
    return None


def sidecar_path(model_path: str | os.PathLike) -> Path:
    p = Path(model_path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def from_onnx_session(session, where: str) -> FileMetadata:
    """The metadata of an open onnxruntime InferenceSession (so a loaded file is parsed only once)."""
    text = session.get_modelmeta().custom_metadata_map.get(ONNX_KEY)
    if text is None:
        raise MetadataError(f"{where} has no edgepack metadata (metadata_props key {ONNX_KEY!r}): "
                            "export it with `edgepack export`")
    return FileMetadata.from_json(text, where)


def read_sidecar(path: str | os.PathLike) -> FileMetadata:
    """A TFLite file's metadata from its sidecar (FileNotFoundError naming it when absent)."""
    side = sidecar_path(path)
    if not side.is_file():
        raise FileNotFoundError(f"{path} has no metadata sidecar {side.name} next to it: copy it along "
                                "with the model or re-export it")
    return FileMetadata.from_json(side.read_bytes(), str(side))


def read(path: str | os.PathLike) -> FileMetadata:
    """The edgepack metadata of an exported .onnx or .tflite file: the one reader for every caller."""
    path = Path(path)
    if path.suffix.lower() == ".tflite":
        return read_sidecar(path)
    if path.suffix.lower() != ".onnx":
        raise MetadataError(f"{path}: not an .onnx or .tflite file")
    import onnxruntime as ort  # imported on use: `import edgepack.runtime` stays numpy only

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # only the header is needed
    so.log_severity_level = 3
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return from_onnx_session(session, str(path))
