"""Open, describe and annotate exported files, per runtime family (no TensorFlow needed).

Structural checks load each file in the engine apps use (ai_edge_litert's Interpreter, onnxruntime
with ORT_ENABLE_ALL); the numerical check runs it through edgepack.runtime, as an app would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError
from edgepack.runtime import metadata


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


@dataclass(frozen=True)
class Family:
    """What export needs to do with one runtime family's files."""

    check: object  # path -> dict of passed structural checks (raises EdgepackError)
    io: object  # path -> IO
    attach: object  # (path, meta) -> the file holding the metadata


FAMILIES = {
    "tflite": Family(tflite_check, tflite_io, tflite_attach),
    "onnx": Family(onnx_check, onnx_io, onnx_attach),
}
