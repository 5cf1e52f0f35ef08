"""Which kernels a quantized file runs on, read from the file itself (no TensorFlow, no timing).

These facts explain why an int8 file is or is not faster than its fp32 twin, and unlike a latency
they do not depend on this CPU's speed or ISA flags:

ONNX (QDQ files)    ONNX Runtime's optimized graph (graph optimizations at ORT_ENABLE_EXTENDED, where
                    its QDQ fusion runs; ALL only adds CPU-specific layouts), saved with
                    `SessionOptions.optimized_model_filepath`: a Conv/MatMul/Gemm still fed by
                    DequantizeLinear runs in float between Q/DQ pairs (unfused); QLinearConv, QGemm,
                    ConvInteger, MatMulInteger... are fused integer kernels. ORT's x86-64 builds first
                    turn int8 activations into uint8 ones (its ARM builds keep them), so the facts hold
                    for every x86-64 CPU with this ORT version.
TFLite              the ops' tensor types: int8 weights with float32 activations are the dynamic-range
                    (hybrid) path, which quantizes activations at run time; and which ops LiteRT's
                    XNNPACK delegate takes (the others run on the builtin kernels, e.g. int16x8 ops),
                    from the delegate nodes of an interpreter made as edgepack.runtime makes it.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError
from edgepack.export.keep_float import layer_name

# ONNX ops that compute in float32 when left between Q/DQ pairs, and the integer kernels ORT fuses them into.
FLOAT_COMPUTE = {"Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv", "FusedGemm", "FusedMatMul"}
INTEGER_KERNELS = {"QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger",
                   "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearConvTranspose"}
# TFLite ops whose weights the converter quantizes (dynamic range keeps float activations for them).
TFLITE_COMPUTE = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL"}


@dataclass(frozen=True)
class KernelFacts:
    """Kernel facts of one file; lists hold layer names (edgepack.explain.layers.layer_name)."""

    engine: str  # onnxruntime / litert, with its version
    op_counts: dict  # op type -> count: ORT's optimized graph, or the TFLite file's ops
    fused: list = field(default_factory=list)  # ONNX: integer kernels in the optimized graph
    unfused: list = field(default_factory=list)  # ONNX: float compute nodes fed by DequantizeLinear
    hybrid: list = field(default_factory=list)  # TFLite: int8 weights, float32 activations
    integer: list = field(default_factory=list)  # TFLite: int8 weights, int8 activations
    float_weights: list = field(default_factory=list)  # TFLite: compute ops that keep float weights
    outside_xnnpack: list = field(default_factory=list)  # TFLite: op types XNNPACK did not take, per op
    ops: int = 0  # TFLite: ops in the file

    def as_dict(self) -> dict:
        return asdict(self)


def onnx_facts(path: Path) -> KernelFacts:
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgepack-ort-") as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        so.log_severity_level = 3  # errors only
        try:
            ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types for files it cannot load
            raise EdgepackError(f"{path}: ONNX Runtime cannot load it ({str(e)[:200]})") from None
        graph = onnx.load(so.optimized_model_filepath).graph
    from_dq = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    unfused = [n for n in graph.node if n.op_type in FLOAT_COMPUTE and from_dq.intersection(n.input)]
    return KernelFacts(engine=f"onnxruntime {ort.__version__}",
                       op_counts=dict(Counter(n.op_type for n in graph.node)),
                       fused=[_onnx_name(n) for n in graph.node if n.op_type in INTEGER_KERNELS],
                       unfused=[_onnx_name(n) for n in unfused])


def _onnx_name(node) -> str:
    return layer_name(node.name or node.output[0])


def tflite_facts(path: Path) -> KernelFacts:
    import ai_edge_litert
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # AUTO: the resolver edgepack.runtime's default kernels use (XNNPACK applied by default).
    it = Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.AUTO)
    it.allocate_tensors()
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    all_ops = it._get_ops_details()
    ops = [op for op in all_ops if op["op_name"] != "DELEGATE"]
    made = {int(o) for op in ops for o in op["outputs"]}
    inputs = {int(d["index"]) for d in it.get_input_details()}
    hybrid, integer, float_w = [], [], []
    for op in ops:
        if op["op_name"] not in TFLITE_COMPUTE:
            continue
        consts = [tensors[i] for i in op["inputs"] if i >= 0 and int(i) not in made and int(i) not in inputs]
        weights = [t for t in consts if len(t["shape"]) >= 2]  # not the bias
        # The weight's name keeps the layer (a model's last op outputs "StatefulPartitionedCall:0")
        name = layer_name((weights or [tensors[op["outputs"][0]]])[0]["name"])
        if not any(t["dtype"] == np.int8 for t in weights):
            float_w.append(name)
        elif tensors[op["outputs"][0]]["dtype"] == np.float32:
            hybrid.append(name)
        else:
            integer.append(name)
    taken = _delegated(all_ops, ops)
    outside = [op["op_name"] for op in ops if op["index"] not in taken]
    counts = dict(Counter(op["op_name"] for op in ops))
    engine = f"litert {getattr(ai_edge_litert, '__version__', '')}".strip()
    return KernelFacts(engine=engine, op_counts=counts,
                       hybrid=hybrid, integer=integer, float_weights=float_w, outside_xnnpack=outside,
                       ops=len(ops))


def _delegated(all_ops: list[dict], ops: list[dict]) -> set[int]:
    """Indices of the ops a delegate replaced: walking back from each DELEGATE node's outputs to its
    inputs (the interpreter lists the replaced ops and the DELEGATE nodes, not its execution plan)."""
    maker = {int(o): op for op in ops for o in op["outputs"]}
    taken: set[int] = set()
    for node in (op for op in all_ops if op["op_name"] == "DELEGATE"):
        stop, todo = {int(i) for i in node["inputs"]}, [int(o) for o in node["outputs"]]
        while todo:
            t = todo.pop()
            op = maker.get(t)
            if t in stop or op is None or op["index"] in taken:
                continue
            taken.add(op["index"])
            todo += [int(i) for i in op["inputs"] if i >= 0]
    return taken


def file_facts(path) -> KernelFacts:
    path = Path(path)
    readers = {".onnx": onnx_facts, ".tflite": tflite_facts}
    if path.suffix.lower() not in readers:
        raise EdgepackError(f"{path}: expected a .tflite or .onnx file")
    return readers[path.suffix.lower()](path)


def _names(items: list, most: int = 4) -> str:
    shown = ", ".join(items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def sentences(f: KernelFacts) -> list[str]:
    """The facts in words, each saying which CPUs it holds for (quantized files; [] for float ones)."""
    if f.engine.startswith("onnxruntime"):
        same = f"a property of the file with {f.engine}, the same on every x86-64 CPU"
        if f.unfused:
            n = len(f.unfused) + len(f.fused)
            return [f"Q/DQ pairs not fused: {len(f.unfused)} of {n} Conv/MatMul nodes run in float32 "
                    f"between DequantizeLinear and QuantizeLinear ({_names(f.unfused)}), "
                    f"so they gain no int8 speed and pay the conversions; {same}"]
        if f.fused:
            kinds = ", ".join(f"{k} {v}" for k, v in f.op_counts.items() if k in INTEGER_KERNELS)
            return [f"Q/DQ pairs fused: every Conv/MatMul runs as an integer kernel ({kinds}); {same}"]
        return []
    same = f"a property of the file with {f.engine}, the same on every CPU"
    out = []
    if f.hybrid:
        kept = f"; {_names(f.float_weights)} keep float weights" if f.float_weights else ""
        out.append(f"dynamic-range path: {_names(f.hybrid)} take int8 weights with float32 activations "
                   f"(hybrid kernels quantize activations at run time){kept}; {same}")
    elif f.integer:
        out.append(f"full-integer path: {len(f.integer)} of {len(f.integer) + len(f.float_weights)} "
                   f"conv/dense ops take int8 weights and activations; {same}")
    if f.outside_xnnpack and (f.hybrid or f.integer):
        taken = f.ops - len(f.outside_xnnpack)
        off = "XNNPACK off" if taken == 0 else f"XNNPACK off for {len(f.outside_xnnpack)} of {f.ops} ops"
        kinds = ", ".join(f"{k} x{v}" if v > 1 else k for k, v in Counter(f.outside_xnnpack).items())
        out.append(f"{off}: {kinds} run on LiteRT's builtin kernels; "
                   f"{same} (XNNPACK's op coverage)")
    elif f.hybrid or f.integer:
        out.append(f"XNNPACK takes all {f.ops} ops; {same}")
    return out


def slow_reasons(f: KernelFacts) -> list[str]:
    """Short reasons from the file why int8 may not beat fp32 (for the report's speed note)."""
    out = []
    if f.unfused:
        out.append(f"{len(f.unfused)} Conv/MatMul nodes left in float32 between unfused Q/DQ pairs")
    if f.hybrid:
        out.append("the dynamic-range path (int8 weights, float32 activations quantized at run time)")
    slow = [op for op in f.outside_xnnpack if op in TFLITE_COMPUTE]  # a QUANTIZE or SOFTMAX costs little
    if slow and (f.hybrid or f.integer):
        n = len(f.hybrid) + len(f.integer) + len(f.float_weights)
        out.append(f"{len(slow)} of {n} conv/dense ops outside XNNPACK (on LiteRT's builtin kernels)")
    return out
