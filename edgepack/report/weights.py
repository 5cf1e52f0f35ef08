"""What a model weighs: its files' bytes (raw and gzip'ed), its parameters, and its measured sparsity:
the share of exactly-zero weights in the Conv/Dense kernels of a model.

Keras models: the kernels edgepack.weights defines (kernel, depthwise_kernel, pointwise_kernel;
inside TF-MOT wrappers too). Exported files: the same kernels, as the weight input of every
Conv/DepthwiseConv/Dense-like op (a SeparableConv2D is a depthwise and a 1x1 conv there),
followed back through Dequantize/Cast ops to the stored constant; for integer weights "zero" means
equal to the zero point. Biases are not counted.
A file whose weights cannot be read returns None (the caller falls back to the source run's figure).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepack import rundir, weights


def sizes(path: Path) -> tuple[int, int]:
    """Raw and gzip'ed (level 9) bytes of a model file, or of every file in a model folder."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    raw = sum(p.stat().st_size for p in files)
    gz = sum(rundir.gzip_size(p) for p in files)
    return raw, gz


def keras_parameters(model) -> int:
    """Network parameters (edgepack.weights: kernels, biases, BatchNorm; no TF-MOT wrapper variables)."""
    return weights.parameters(model) or int(model.count_params())


def keras_sparsity(model) -> float | None:
    return weights.sparsity(model)


def file_sparsity(path: Path) -> float | None:
    """Sparsity of an exported file's kernels, or None where it cannot be measured."""
    try:
        if path.suffix == ".onnx":
            return weights.share_of_zeros(_onnx_kernels(path))
        if path.suffix == ".tflite":
            return weights.share_of_zeros(_tflite_kernels(path))
    except Exception:  # unreadable weights are "not measurable", never a failed row
        return None
    return None


# op type -> index of its weight input
_ONNX_WEIGHT_INPUT = {"Conv": 1, "Gemm": 1, "MatMul": 1, "QLinearConv": 3, "QLinearMatMul": 3,
                      "ConvInteger": 1, "MatMulInteger": 1}
_ONNX_PASS_THROUGH = ("DequantizeLinear", "Cast", "Identity", "Transpose", "Reshape")


def _onnx_kernels(path: Path) -> list[np.ndarray]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    init = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    kernels = []
    for node in graph.node:
        idx = _ONNX_WEIGHT_INPUT.get(node.op_type)
        if idx is None or len(node.input) <= idx:
            continue
        name, zero_point = node.input[idx], 0
        for _ in range(4):  # follow DequantizeLinear(w, scale, zp) and friends to the constant
            if name in init:
                break
            prev = producer.get(name)
            if prev is None or prev.op_type not in _ONNX_PASS_THROUGH:
                break
            if prev.op_type == "DequantizeLinear" and len(prev.input) > 2 and prev.input[2] in init:
                zp = numpy_helper.to_array(init[prev.input[2]])
                zero_point = int(zp.flat[0]) if zp.size == 1 else 0  # per-channel weights are symmetric
            name = prev.input[0]
        if name in init:
            arr = numpy_helper.to_array(init[name])
            if arr.ndim >= 2:  # kernels, not 1-D shape/bias constants
                kernels.append(arr.astype(np.int64) - zero_point if zero_point else arr)
    return kernels


_TFLITE_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def _tflite_kernels(path: Path) -> list[np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    ops = interp._get_ops_details()
    details = {d["index"]: d for d in interp.get_tensor_details()}
    producer = {out: op for op in ops for out in op["outputs"]}
    kernels = []
    for op in ops:
        if op["op_name"] not in _TFLITE_WEIGHT_OPS or len(op["inputs"]) < 2:
            continue
        idx = int(op["inputs"][1])
        prev = producer.get(idx)
        if prev is not None and prev["op_name"] == "DEQUANTIZE":  # fp16 weights
            idx = int(prev["inputs"][0])
        elif prev is not None:
            continue  # computed at run time: not a stored weight
        arr = np.asarray(interp.get_tensor(idx))
        zps = details[idx]["quantization_parameters"]["zero_points"]
        zero_point = int(zps[0]) if len(zps) and np.all(zps == zps[0]) else 0
        kernels.append(arr.astype(np.int64) - zero_point if zero_point else arr)
    return kernels
