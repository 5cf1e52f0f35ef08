"""On-device memory of an exported file, offline, without TensorFlow.

weight_bytes      sum of the file's constant tensors (TFLite buffers / ONNX initializers), bytes
activation_bytes  peak of the live activation tensors over the execution order, bytes, batch 1: a
                  tensor is alive from the step that makes it (graph inputs: step 0) to its last
                  consumer (graph outputs: the end). This is the least any arena planner must hold;
                  real planners (TFLite's greedy-by-size arena, ORT's allocator) add alignment and
                  fragmentation, and kernels' scratch buffers (im2col) are not counted.
peak_rss_mb       measured: maximum resident memory of a fresh Python process that imports
                  edgepack.runtime, loads the file and predicts one image (Linux VmHWM);
                  rss_base_mb is the same process without loading a model (the engine's own cost).
ONNX graphs are read as written (QDQ files before ORT fuses Q/DQ pairs into integer kernels, so
their float tensors between Q and DQ are counted too: an upper side of what ORT's fused graph holds);
nodes computed from constants alone (a weight's DequantizeLinear) are folded at load and not counted.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError


@dataclass(frozen=True)
class Memory:
    """Memory figures of one exported file (bytes unless said)."""

    weight_bytes: int  # constant tensors stored in the file
    activation_bytes: int  # peak sum of live activation tensors, batch 1
    largest_activation_bytes: int  # the largest single activation tensor
    total_activation_bytes: int  # all activation tensors added up (no reuse at all)
    peak_step: int  # the execution step (op index) where the peak is reached
    method: str  # how activation_bytes was computed

    def as_dict(self) -> dict:
        return asdict(self)


def peak_live(sizes: dict, produced: dict, last_use: dict, steps: int) -> tuple[int, int]:
    """(peak bytes, step) of the live-tensor sum; tensors live in [produced, last_use] (op indices)."""
    live = np.zeros(max(steps, 1), dtype=np.int64)
    for name, size in sizes.items():
        live[produced[name]:last_use[name] + 1] += size
    step = int(live.argmax())
    return int(live[step]), step


def _memory(sizes: dict, produced: dict, last_use: dict, steps: int, weights: int, method: str) -> Memory:
    peak, step = peak_live(sizes, produced, last_use, steps)
    return Memory(int(weights), peak, max(sizes.values(), default=0), int(sum(sizes.values())), step, method)


def tflite_memory(path: Path) -> Memory:
    """From the flatbuffer as the interpreter reads it (ops in execution order, without delegates)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=str(path),
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    ops = [op for op in it._get_ops_details() if op["op_name"] != "DELEGATE"]
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    outputs = {d["index"] for d in it.get_output_details()}
    produced = {int(i): 0 for i in (d["index"] for d in it.get_input_details())}
    for step, op in enumerate(ops):
        produced.update({int(i): step for i in op["outputs"] if i >= 0})
    last_use = dict(produced)
    for step, op in enumerate(ops):
        for i in op["inputs"]:
            if int(i) in produced:
                last_use[int(i)] = max(last_use[int(i)], step)
    last_use.update({i: len(ops) - 1 for i in outputs})
    sizes = {i: _nbytes(tensors[i]["shape"], tensors[i]["dtype"]) for i in produced}
    used = {int(i) for op in ops for i in op["inputs"] if i >= 0}
    weights = sum(_nbytes(tensors[i]["shape"], tensors[i]["dtype"]) for i in used - set(produced))
    return _memory(sizes, produced, last_use, len(ops), weights, "tflite ops in execution order, batch 1")


def onnx_memory(path: Path) -> Memory:
    """From the ONNX graph (nodes are stored in execution order) with shapes from shape inference."""
    import onnx
    from onnx import numpy_helper

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    infos = {v.name: v for v in (*g.input, *g.value_info, *g.output)}
    produced = {v.name: 0 for v in g.input if v.name not in inits}
    # Initializers and what is computed from them alone (a QDQ weight's DequantizeLinear): engines
    # fold those at load time, they are no activations.
    constant = set(inits)
    for step, node in enumerate(g.node):
        if node.op_type == "Constant" or all(i in constant for i in node.input if i):
            constant.update(node.output)
            continue
        produced.update({o: step for o in node.output if o})
    last_use = dict(produced)
    for step, node in enumerate(g.node):
        for i in node.input:
            if i in produced:
                last_use[i] = max(last_use[i], step)
    last_use.update({v.name: len(g.node) - 1 for v in g.output})
    sizes = {name: _onnx_nbytes(infos.get(name), name) for name in produced}
    weights = sum(numpy_helper.to_array(t).nbytes for t in inits.values())
    weights += sum(_constant_bytes(n) for n in g.node if n.op_type == "Constant")
    return _memory(sizes, produced, last_use, len(g.node), weights,
                   "onnx graph as written (before ORT fusions), batch 1")


def _nbytes(shape, dtype) -> int:
    return int(np.prod([max(int(d), 1) for d in shape], dtype=np.int64)) * np.dtype(dtype).itemsize


def _onnx_nbytes(info, name: str) -> int:
    from onnx import helper

    if info is None or not info.type.tensor_type.HasField("shape"):
        raise EdgepackError(f"tensor {name!r} has no inferred shape: cannot size the activations")
    dims = [d.dim_value if d.HasField("dim_value") else 1 for d in info.type.tensor_type.shape.dim]  # batch 1
    return _nbytes(dims, helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type))


def _constant_bytes(node) -> int:
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(a.t).nbytes for a in node.attribute if a.name == "value")


def keras_memory(model) -> Memory:
    """A Keras model's float32 figures, the same way (layers in model order, each output alive from the
    layer that makes it to its last consumer; batch 1). Weights: every weight variable, float32 bytes."""
    layers = list(model.layers)
    index = {id(layer): step for step, layer in enumerate(layers)}
    sizes, produced, last_use = {}, {}, {}
    for step, layer in enumerate(layers):
        shape = layer.output_shape[0] if isinstance(layer.output_shape, list) else layer.output_shape
        sizes[step] = int(np.prod([d for d in shape[1:] if d])) * 4
        produced[step] = step
        consumers = [index[id(n.outbound_layer)] for n in layer._outbound_nodes
                     if id(n.outbound_layer) in index]
        last_use[step] = max(consumers, default=len(layers) - 1)  # the model's output lives to the end
    if not any(type(layer).__name__ == "InputLayer" for layer in layers):  # Sequential: the input image
        sizes["input"], produced["input"], last_use["input"] = int(np.prod(model.input_shape[1:])) * 4, 0, 0
    weights = sum(int(np.prod(w.shape)) * w.dtype.size for w in model.weights)
    return _memory(sizes, produced, last_use, len(layers), weights, "keras layers in model order, batch 1")


def file_memory(path: str | Path) -> Memory:
    path = Path(path)
    readers = {".tflite": tflite_memory, ".onnx": onnx_memory}
    if path.suffix.lower() not in readers:
        raise EdgepackError(f"{path}: expected a .tflite or .onnx file")
    return readers[path.suffix.lower()](path)


# The child process: loads nothing but edgepack.runtime (no TensorFlow), then maybe the model.
_CHILD = """
import json, resource, sys
import numpy as np
from edgepack import runtime
import onnxruntime, ai_edge_litert.interpreter  # the engines' own cost belongs to the base
if sys.argv[1] != "-":
    clf = runtime.load(sys.argv[1])
    for _ in range(3):
        clf.predict(np.zeros((1, *clf.input_shape), np.uint8))
try:  # VmHWM is this program's own peak; ru_maxrss keeps the parent's peak across fork + exec
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
except (OSError, StopIteration):
    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(hwm / 1024))  # KiB -> MiB
"""


def _child_rss(arg: str, timeout: float = 120.0) -> float:
    out = subprocess.run([sys.executable, "-c", _CHILD, arg], capture_output=True, text=True,
                         timeout=timeout, check=False)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgepackError(f"measuring the runtime's memory failed: {last[:300]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


@functools.lru_cache(maxsize=1)
def _base_rss() -> float:
    """The runtime process without a model: measured once per process (a report has many rows)."""
    return _child_rss("-")


def measured_rss(path: str | Path) -> dict:
    """Peak RSS (MiB) of a fresh runtime process that loads `path` and predicts, and of one that does not."""
    base, loaded = _base_rss(), _child_rss(str(Path(path).resolve()))
    return {"peak_rss_mb": round(loaded, 1), "rss_base_mb": round(base, 1),
            "rss_model_mb": round(max(0.0, loaded - base), 1)}


def describe(path: str | Path, rss: bool = True) -> dict:
    """Every memory figure of a file as one flat dict (the report's and `explain --json`'s)."""
    out = file_memory(path).as_dict()
    out.update(measured_rss(path) if rss else dict.fromkeys(("peak_rss_mb", "rss_base_mb", "rss_model_mb")))
    return out
