"""Open, describe and annotate exported files, per runtime family (no TensorFlow needed).

Structural checks load each file in the engine apps use (ai_edge_litert's Interpreter, onnxruntime
with ORT_ENABLE_ALL); the numerical check runs it through edgepack.runtime, as an app would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError
from edgepack.export import tflite_metadata, to_onnx
from edgepack.runtime.metadata import ONNX_KEY, FileMetadata, sidecar_path


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


def tflite_describe(path: Path, options: dict, x: np.ndarray) -> dict:
    """File facts for the metadata: where it was shown to run."""
    return {"runs_in": ("ai_edge_litert",)}


def tflite_attach(path: Path, meta: FileMetadata) -> Path:
    """The standard TFLite metadata into the file (Task Library), edgepack's into the sidecar."""
    path.write_bytes(tflite_metadata.populate(path.read_bytes(), meta))
    side = sidecar_path(path)
    side.write_text(meta.to_json() + "\n", encoding="utf-8")
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


REFERENCE_IMAGES = 4  # images run through onnx.reference (pure numpy: ~1 s each for the CIFAR CNN)


def onnx_describe(path: Path, options: dict, x: np.ndarray) -> dict:
    """File facts for the metadata: opset, int8 scheme and weight range, and the consumers it ran in.

    "runs_in" lists only engines the file was run in here: onnxruntime, and onnx.reference (the ONNX
    spec's Python implementation) when it gives ONNX Runtime's reference outputs on a few images.
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    out: dict = {"opset": opset, "runs_in": ["onnxruntime"], "does_not_run_in": {}}
    if "scheme" in options:
        scheme = to_onnx.SCHEMES[options["scheme"]]
        out["int8_scheme"] = {"name": options["scheme"], "weight_bits": 7 if scheme.reduce_range else 8,
                              "weights": scheme.weights, "activations": scheme.activations,
                              "portable": scheme.portable, "accurate_on": scheme.accurate_on,
                              **to_onnx.weight_range(path)}
    sample = x[:REFERENCE_IMAGES]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    want = session.run(None, {session.get_inputs()[0].name: sample})[0]
    try:
        from onnx.reference import ReferenceEvaluator

        got = ReferenceEvaluator(model).run(None, {session.get_inputs()[0].name: sample})[0]
        diff = float(np.max(np.abs(got - want)))
        if diff <= 1e-4:
            out["runs_in"].append("onnx.reference")
        else:
            out["does_not_run_in"]["onnx.reference"] = f"outputs differ from onnxruntime's by {diff:.3g}"
    except Exception as e:  # onnx.reference lacks some operator versions (DequantizeLinear before 19)
        hint = " (export with --option opset=19)" if opset < 19 else ""
        out["does_not_run_in"]["onnx.reference"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}{hint}"
    out["runs_in"] = tuple(out["runs_in"])
    return out


def onnx_attach(path: Path, meta: FileMetadata) -> Path:
    import onnx

    model = onnx.load(str(path))
    for prop in [p for p in model.metadata_props if p.key == ONNX_KEY]:
        model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key, entry.value = ONNX_KEY, meta.to_json()
    onnx.save(model, str(path))
    return path


@dataclass(frozen=True)
class Family:
    """What export needs to do with one runtime family's files."""

    engine: str  # its engine's key in edgepack.runtime.cpu.int8_paths
    check: object  # path -> dict of passed structural checks (raises EdgepackError)
    io: object  # path -> IO
    describe: object  # (path, format options, float check images) -> facts for the metadata
    attach: object  # (path, meta) -> the file holding the metadata


FAMILIES = {
    "tflite": Family("litert", tflite_check, tflite_io, tflite_describe, tflite_attach),
    "onnx": Family("onnxruntime", onnx_check, onnx_io, onnx_describe, onnx_attach),
}
