"""Per-layer error of an int8 file against its float source: one row format for TFLite and ONNX.

Both files run on the same images; every activation the int8 file quantizes is dequantized and
compared with the float file's tensor of the same name (the converters keep the source's tensor
names: TFLite op outputs, tf2onnx node outputs). Errors are cumulative (what reaches that layer);
`layer_snr_db` is the SNR of the noise this layer adds on its own (its output's noise-to-signal
power minus its input's), the figure that ranks layers: a damaged layer stands out even though
every later layer inherits its error.

TFLite: both files run on LiteRT's builtin kernels without delegates, all tensors preserved (the
int8 file's own integer arithmetic). ONNX: onnxruntime.quantization.qdq_loss_debug collects the
QDQ file's dequantized activations with graph optimizations off (QDQ emulated in float, which ORT's
fused integer kernels match to rounding) next to the float file's.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError
from edgepack.export.keep_float import layer_name
from edgepack.export.to_onnx import _reader

FLOOR_DB = -20.0  # SNR floor (dB) for an activation that is all wrong; caps added_db's arithmetic
CEIL_DB = 100.0  # SNR of an exact (float) input
DQ_SUFFIX = "_DequantizeLinear_Output"  # ORT's name for a QDQ pair's float output


@dataclass(frozen=True)
class LayerError:
    """One quantized activation of an int8 file against its float source."""

    layer: str  # the source layer's name (Keras layer, e.g. conv2): what --keep-float takes
    tensor: str  # the file's tensor name
    op: str  # the op that makes it (CONV_2D, Conv, ...)
    scale: float  # activation scale (float value of one integer step)
    zero_point: int
    rmse_over_range: float  # RMSE(int8 dequantized - float) / (float max - float min)
    snr_db: float  # 20 log10(|float| / |int8 - float|), over all images
    cosine: float  # cosine similarity of the flattened tensors
    layer_snr_db: float  # SNR of the noise added by this layer alone (lower = worse; ranks the rows)

    def as_dict(self) -> dict:
        return asdict(self)


def compare(ref: np.ndarray, got: np.ndarray) -> tuple[float, float, float]:
    """(rmse_over_range, snr_db, cosine) of `got` against the float reference `ref`."""
    ref, got = np.asarray(ref, np.float64).ravel(), np.asarray(got, np.float64).ravel()
    diff = got - ref
    span = float(ref.max() - ref.min()) if ref.size else 0.0
    rmse = float(np.sqrt(np.mean(diff ** 2))) if ref.size else 0.0
    rel = rmse / span if span > 0 else (0.0 if rmse == 0 else math.inf)
    noise, signal = float(np.linalg.norm(diff)), float(np.linalg.norm(ref))
    snr = CEIL_DB if noise == 0 else FLOOR_DB if signal == 0 else 20 * math.log10(signal / noise)
    norms = float(np.linalg.norm(ref) * np.linalg.norm(got))
    cos = float(ref @ got / norms) if norms > 0 else float(noise == 0)
    return rel, float(min(max(snr, FLOOR_DB), CEIL_DB)), cos


def added_snr_db(snr_in: float, snr_out: float) -> float:
    """SNR (dB) of the noise a layer adds: noise-to-signal powers subtract (independent noises add)."""
    added = 10 ** (-snr_out / 10) - 10 ** (-snr_in / 10)
    return CEIL_DB if added <= 0 else float(min(-10 * math.log10(added), CEIL_DB))


def _rows(found: list[tuple], inputs_of: dict) -> list[LayerError]:
    """found: (layer, tensor, op, scale, zp, ref, got) in execution order; inputs_of: tensor -> its input."""
    snr_of: dict[str, float] = {}
    rows = []
    for layer, tensor, op, scale, zp, ref, got in found:
        rel, snr, cos = compare(ref, got)
        snr_of[tensor] = snr
        before = snr_of.get(inputs_of.get(tensor, ""), CEIL_DB)
        rows.append(LayerError(layer, tensor, op, float(scale), int(zp), rel, snr, cos,
                               round(added_snr_db(before, snr), 4)))
    return sorted(rows, key=lambda r: (r.layer_snr_db, r.snr_db))


# --- TFLite

def _tflite_run(path: Path, x: np.ndarray) -> tuple[object, list[dict], dict]:
    """Every op's output tensor for each image (batch 1): (interpreter, ops, {tensor index: [arrays]})."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    ops = [op for op in it._get_ops_details() if op["op_name"] != "DELEGATE"]
    inp = it.get_input_details()[0]
    scale, zp = inp["quantization"]
    wanted = [int(i) for op in ops for i in op["outputs"]]
    got: dict[int, list] = {i: [] for i in wanted}
    for image in x:
        v = image[None]
        if np.dtype(inp["dtype"]).kind in "iu":
            info = np.iinfo(inp["dtype"])
            v = np.clip(np.round(v / scale + zp), info.min, info.max)
        it.set_tensor(inp["index"], v.astype(inp["dtype"]))
        it.invoke()
        for i in wanted:
            got[i].append(it.get_tensor(i).copy())
    return it, ops, got


def tflite_layers(int8_path: Path, float_path: Path, x: np.ndarray) -> list[LayerError]:
    """`x`: float32 model inputs (already scaled the file's way)."""
    q_it, q_ops, q_out = _tflite_run(int8_path, x)
    f_it, _, f_out = _tflite_run(float_path, x)
    f_by_name = {t["name"]: t["index"] for t in f_it.get_tensor_details() if t["index"] in f_out}
    q_tensors = {t["index"]: t for t in q_it.get_tensor_details()}
    found, inputs_of = [], {}
    for op in q_ops:
        out = q_tensors[int(op["outputs"][0])]
        scale, zp = out["quantization"]
        if np.dtype(out["dtype"]).kind not in "iu" or out["name"] not in f_by_name or not scale:
            continue  # float outputs (kept in float) and tensors the float file does not have
        ins = [q_tensors[int(i)]["name"] for i in op["inputs"] if int(i) in q_out]
        inputs_of[out["name"]] = ins[0] if ins else ""
        q = np.concatenate(q_out[out["index"]]).astype(np.float64)
        # the graph output (Softmax) has a signature name: it belongs to its input's layer
        layer = layer_name(out["name"]) if "/" in out["name"] or not ins else layer_name(ins[0])
        ref = np.concatenate(f_out[f_by_name[out["name"]]])
        found.append((layer, out["name"], op["op_name"], scale, zp, ref, (q - zp) * scale))
    return _rows(found, inputs_of)


# --- ONNX

def _onnx_activations(path: Path, x: np.ndarray, scratch: Path) -> dict:
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        modify_model_output_intermediate_tensors,
    )

    augmented = scratch / f"{path.stem}.augmented.onnx"
    modify_model_output_intermediate_tensors(str(path), str(augmented))
    return collect_activations(str(augmented), _reader(x))


def onnx_layers(int8_path: Path, float_path: Path, x: np.ndarray) -> list[LayerError]:
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization.qdq_loss_debug import create_activation_matching

    model = onnx.load(str(int8_path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    maker = {o: n for n in model.graph.node for o in n.output}
    with tempfile.TemporaryDirectory(prefix="edgepack-explain-") as tmp:
        q_acts = _onnx_activations(int8_path, x, Path(tmp))
        f_acts = _onnx_activations(float_path, x, Path(tmp))
    matched = create_activation_matching(q_acts, f_acts)
    found, inputs_of = [], {}
    for node in model.graph.node:  # execution order
        if node.op_type != "QuantizeLinear" or node.input[0] not in matched:
            continue
        tensor = node.input[0]
        m = matched[tensor]
        if "float" not in m or tensor not in maker or maker[tensor].op_type == "DequantizeLinear":
            continue  # the graph input's quantization, or a tensor the float file lacks
        src = maker[tensor]
        ins = [i.removesuffix(DQ_SUFFIX) for i in src.input
               if i.endswith(DQ_SUFFIX) and i.removesuffix(DQ_SUFFIX) in matched]
        inputs_of[tensor] = ins[0] if ins else ""
        scale = float(np.ravel(inits[node.input[1]])[0])
        zp = int(np.ravel(inits[node.input[2]])[0]) if len(node.input) > 2 else 0
        found.append((layer_name(tensor), tensor, src.op_type, scale, zp, np.concatenate(m["float"]),
                      np.concatenate(m["post_qdq"])))
    return _rows(found, inputs_of)


def file_layers(int8_path: str | Path, float_path: str | Path, x: np.ndarray) -> list[LayerError]:
    """Rows worst first. Both files must be of one engine; `x`: float32 inputs scaled the file's way."""
    int8_path, float_path = Path(int8_path), Path(float_path)
    if int8_path.suffix.lower() != float_path.suffix.lower():
        raise EdgepackError(f"the float source {float_path.name} is not a {int8_path.suffix} file like "
                            f"{int8_path.name}: pass --source of the same engine, or the run folder")
    run = {".tflite": tflite_layers, ".onnx": onnx_layers}.get(int8_path.suffix.lower())
    if run is None:
        raise EdgepackError(f"{int8_path}: expected a .tflite or .onnx file")
    rows = run(int8_path, float_path, np.asarray(x, np.float32))
    if not rows:
        raise EdgepackError(f"{int8_path.name} has no int8 activation matching its float source "
                            f"{float_path.name}: is it a float file, or from another model?")
    return rows
