"""The metadata every exported model carries, so an app can use it without edgepack's training code.

One JSON object (schema below), stored
  - in ONNX files as `metadata_props` entry `edgepack` (the JSON text), and
  - for TFLite files in a sidecar `<file>.json` next to the model (e.g. `model.tflite.json`).

Schema (version 1):
    schema_version    1
    format            export format name, e.g. "tflite-int8", "onnx-fp32"
    class_names       list of 10 names, index = class id
    input_shape       [32, 32, 3] (one image, NHWC; the batch dimension is not included)
    input_dtype       dtype the model file's input tensor takes: "float32", "int8" or "uint8"
    pixel_scaling     {"divisor": 255.0, ...}: float input = uint8 pixels / divisor
    input_quantization   {"scale": s, "zero_point": z} when input_dtype is an integer type, else null
                      (q = round(float_input / s) + z)
    output_quantization  {"scale": s, "zero_point": z} when the output is integer, else null
                      (probability = (q - z) * s)
    source_sha256     sha256 of the Keras model file it was converted from
    technique         compression technique of the source ("baseline", "prune", ...)
    variant           the source run's variant name ("baseline", "prune-0.8", "qat", ...)
    edgepack_version  version that wrote it
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SCHEMA_VERSION = 1
ONNX_KEY = "edgepack"  # metadata_props key
SIDECAR_SUFFIX = ".json"  # TFLite sidecar: <file>.tflite.json
REQUIRED = ("format", "class_names", "input_shape", "input_dtype", "pixel_scaling")


class MetadataError(ValueError):
    """A model file's edgepack metadata is missing or malformed."""


def sidecar_path(model_path: str | os.PathLike) -> Path:
    p = Path(model_path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def validate(meta: object, where: str) -> dict:
    if not isinstance(meta, dict):
        raise MetadataError(f"{where}: edgepack metadata must be a JSON object")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise MetadataError(f"{where}: edgepack metadata lacks {', '.join(missing)}: re-export the model")
    if not isinstance(meta["class_names"], list) or not meta["class_names"]:
        raise MetadataError(f"{where}: class_names must be a non-empty list")
    return meta


def parse(text: str | bytes, where: str) -> dict:
    try:
        return validate(json.loads(text), where)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MetadataError(f"{where}: edgepack metadata is not valid JSON ({e})") from None


def dumps(meta: dict) -> str:
    return json.dumps({"schema_version": SCHEMA_VERSION, **meta}, indent=2, sort_keys=True, allow_nan=False)
