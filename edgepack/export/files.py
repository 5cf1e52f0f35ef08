"""Open, describe, annotate and run exported files, per runtime family (no TensorFlow needed).

Validation runs the files exactly as an app would: TFLite with ai_edge_litert's Interpreter,
ONNX with onnxruntime (ORT_ENABLE_ALL), not with the converter's own tools.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError
from edgepack.runtime import metadata

BATCH = 250  # images per invoke when checking


@dataclass(frozen=True)
class IO:
    """The input/output tensor types an exported file takes and gives."""

    input_dtype: str  # "float32", "int8" or "uint8"
    input_quantization: dict | None  # {"scale", "zero_point"} for integer inputs
    output_dtype: str
    output_quantization: dict | None


def _quant(dtype: np.dtype, q: tuple) -> dict | None:
    if np.dtype(dtype).kind not in "iu":
        return None
    scale, zero_point = q
    return {"scale": float(scale), "zero_point": int(zero_point)}


# --- TFLite (ai_edge_litert)

def _interpreter(path: Path, threads: int | None = None):
    from ai_edge_litert.interpreter import Interpreter

    try:
        it = Interpreter(model_path=str(path), num_threads=threads)
        it.allocate_tensors()
    except Exception as e:  # the interpreter raises ValueError/RuntimeError for bad files
        raise EdgepackError(f"{path.name} does not load in ai_edge_litert ({type(e).__name__}: "
                            f"{str(e)[:200]})") from None
    return it


def tflite_check(path: Path) -> dict:
    _interpreter(path)
    return {"loads_in": "ai_edge_litert"}


def tflite_io(path: Path) -> IO:
    it = _interpreter(path)
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    return IO(np.dtype(i["dtype"]).name, _quant(i["dtype"], i["quantization"]),
              np.dtype(o["dtype"]).name, _quant(o["dtype"], o["quantization"]))


def tflite_attach(path: Path, meta: dict) -> Path:
    side = metadata.sidecar_path(path)
    side.write_text(metadata.dumps(meta) + "\n", encoding="utf-8")
    return side


def tflite_read_metadata(path: Path) -> dict:
    side = metadata.sidecar_path(path)
    return metadata.parse(side.read_bytes(), str(side))


def quantize_input(x: np.ndarray, dtype: np.dtype, q: tuple) -> np.ndarray:
    """float32 input -> the integer tensor a full-integer model takes (q = round(x / s) + z)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu":
        return x.astype(dtype)
    scale, zero_point = q
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


def dequantize_output(y: np.ndarray, q: tuple) -> np.ndarray:
    if np.asarray(y).dtype.kind not in "iu":
        return np.asarray(y, dtype=np.float32)
    scale, zero_point = q
    return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)


def tflite_predict(path: Path, x: np.ndarray) -> np.ndarray:
    """Float probabilities for float32 images, in batches of BATCH (integer I/O handled)."""
    it = _interpreter(path)
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    out, size = [], None
    for start in range(0, len(x), BATCH):
        batch = x[start:start + BATCH]
        if len(batch) != size:
            it.resize_tensor_input(i["index"], [len(batch), *batch.shape[1:]])
            it.allocate_tensors()
            size = len(batch)
        it.set_tensor(i["index"], quantize_input(batch, i["dtype"], i["quantization"]))
        it.invoke()
        out.append(dequantize_output(it.get_tensor(o["index"]), o["quantization"]))
    return np.concatenate(out)


# --- ONNX (onnx + onnxruntime)

def onnx_check(path: Path) -> dict:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise EdgepackError(f"{path.name} fails onnx.checker ({type(e).__name__}: {str(e)[:200]})") from None
    _session(path)
    return {"onnx_checker": "passed", "loads_in": "onnxruntime"}


def _session(path: Path, threads: int = 0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # int8 is ~4x slower below
    opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise EdgepackError(f"{path.name} does not load in onnxruntime ({type(e).__name__}: "
                            f"{str(e)[:200]})") from None


_ORT_TYPES = {"tensor(float)": "float32", "tensor(int8)": "int8", "tensor(uint8)": "uint8"}


def onnx_io(path: Path) -> IO:
    s = _session(path)
    i, o = s.get_inputs()[0], s.get_outputs()[0]
    return IO(_ORT_TYPES.get(i.type, i.type), None, _ORT_TYPES.get(o.type, o.type), None)


def onnx_attach(path: Path, meta: dict) -> Path:
    import onnx

    model = onnx.load(str(path))
    for prop in [p for p in model.metadata_props if p.key == metadata.ONNX_KEY]:
        model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key, entry.value = metadata.ONNX_KEY, metadata.dumps(meta)
    onnx.save(model, str(path))
    return path


def onnx_read_metadata(path: Path) -> dict:
    props = _session(path).get_modelmeta().custom_metadata_map
    if metadata.ONNX_KEY not in props:
        raise EdgepackError(f"{path.name} has no {metadata.ONNX_KEY!r} metadata_props entry")
    return metadata.parse(props[metadata.ONNX_KEY], str(path))


def onnx_predict(path: Path, x: np.ndarray) -> np.ndarray:
    s = _session(path)
    name = s.get_inputs()[0].name
    return np.concatenate([np.asarray(s.run(None, {name: x[i:i + BATCH]})[0], dtype=np.float32)
                           for i in range(0, len(x), BATCH)])


@dataclass(frozen=True)
class Family:
    """What export needs to do with one runtime family's files."""

    check: object  # path -> dict of passed structural checks (raises EdgepackError)
    io: object  # path -> IO
    attach: object  # (path, meta) -> the file holding the metadata
    read_metadata: object  # path -> dict
    predict: object  # (path, float32 images) -> float32 probabilities


FAMILIES = {
    "tflite": Family(tflite_check, tflite_io, tflite_attach, tflite_read_metadata, tflite_predict),
    "onnx": Family(onnx_check, onnx_io, onnx_attach, onnx_read_metadata, onnx_predict),
}
