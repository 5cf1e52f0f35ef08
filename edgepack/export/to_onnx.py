"""Keras -> ONNX with tf2onnx, and ONNX fp32 -> int8 with ONNX Runtime static quantisation.

The int8 route is the fast one TOOLCHAIN.md measured: fp32 ONNX -> quant_pre_process ->
quantize_static(QDQ, per-channel int8), which ORT (ORT_ENABLE_ALL) fuses into QLinearConv/QGemm.

QAT / PQAT sources take the same fast route from their float twin (the QAT model's weights without
its fake-quant ops), calibrated like any model: tf2onnx's own conversion of the fake-quant ops keeps
float weights and runs 3-4x slower in ORT (TOOLCHAIN.md). ORT's int8 grid is not TF-MOT's, so the
top-1 agreement check against the QAT model decides whether the file is good enough. (Passing QAT's
learned ranges to ORT as TensorQuantOverrides made it worse: ORT drops a Relu whose range is not
[0, max], and QAT's relu ranges after short fine-tuning still start near -5.)

Int8 schemes (option `scheme`; why in docs/export.md). Portable schemes are exact on every CPU, a
property read from the file (weight_range): x86-64 without VNNI sums u8*s8 product pairs into int16
with saturation (VPMADDUBSW), so
  "s8s8-7bit"  int8 activations, 7-bit weights ([-64, 64], ORT's reduce_range): 2 * 255 * 64 = 32640
               cannot leave int16. The fastest portable scheme; tried first.
  "u8u8"       uint8 activations, uint8 weights (ORT centres them on 128): ONNX Runtime runs u8*u8 with
               its U8U8 kernels, which widen both to 16 bits (VPMADDWD, 32-bit pair sums) on SSE/AVX2/
               AVX-512 and use 32-bit sums on VNNI, AMX and ARM: nothing can saturate, with 8-bit weights.
  "u8u8-float-ends"  u8u8 with the first and the last weighted layer left in float (selective
               quantization): the input layer sees raw pixels, the last one decides the top-1.
"portable" (the default) tries them in that order (clustered weights: the two u8u8 schemes first, see
candidates) and keeps the first file that passes its check (edgepack.export.core); "full-range" is S8S8
with 8-bit weights: slightly closer to float where the CPU has VNNI, AMX or ARM dot-product, but it
loses accuracy on AVX2 / AVX-512-without-VNNI CPUs (7.5 points measured) and is never chosen unless
asked for.
Opsets 19 and 21 (option `opset`) are made by onnx.version_converter from tf2onnx's opset 18: only
those run in `onnx.reference` (it implements DequantizeLinear from opset 19 on).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack.export.context import Context
from edgepack.export.keep_float import onnx_nodes_to_exclude
from edgepack.export.qat import float_twin
from edgepack.runtime.cpu import SATURATION_FREE_WEIGHT

INPUT_NAME = "image"  # the ONNX graph input's name (dynamic batch: shape [N, 32, 32, 3])
BATCH_DIM = "batch"  # name of the dynamic first dimension of the input and output
CALIBRATION_BATCH = 50  # images per calibration feed
TF2ONNX_MAX_OPSET = 18  # higher opsets are converted from this one by onnx.version_converter



@dataclass(frozen=True)
class Scheme:
    """One way to quantize: the integer types, 7-bit weights or not, and layers left in float."""

    activations: str  # "int8" or "uint8"
    weights: str  # "int8" or "uint8"
    reduce_range: bool  # 7-bit weights ([-64, 64])
    portable: bool  # exact on every CPU by construction (weight_range checks the file)
    float_ends: bool = False  # the first and last weighted layers left in float
    accurate_on: str = "every CPU ONNX Runtime supports: x86-64 with or without VNNI, ARM"


SCHEMES = {
    "s8s8-7bit": Scheme("int8", "int8", True, True, accurate_on=(
        "every CPU ONNX Runtime supports: x86-64 with or without VNNI, ARM (7-bit weights within "
        f"[-{SATURATION_FREE_WEIGHT}, {SATURATION_FREE_WEIGHT}] cannot saturate)")),
    "u8u8": Scheme("uint8", "uint8", False, True, accurate_on=(
        "every CPU ONNX Runtime supports: x86-64 with or without VNNI, ARM (uint8 weights and activations "
        "run ONNX Runtime's U8U8 kernels, which sum in 32 bits)")),
    "u8u8-float-ends": Scheme("uint8", "uint8", False, True, float_ends=True, accurate_on=(
        "every CPU ONNX Runtime supports: x86-64 with or without VNNI, ARM (U8U8 kernels; first and last "
        "weighted layers in float)")),
    "full-range": Scheme("int8", "int8", False, False, accurate_on=(
        "CPUs with VNNI, AMX or ARM; NOT x86-64 without VNNI (AVX2, AVX-512 without VNNI), whose int16 "
        "pair sums saturate on 8-bit weights")),
}
PORTABLE = "portable"  # the option value that tries the portable schemes in order
PORTABLE_ORDER = tuple(name for name, s in SCHEMES.items() if s.portable)  # fastest first
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")


CLUSTERED_VALUES = 256  # more nonzero weights than this, at most this many distinct: clustered
CLUSTERED_ORDER = ("u8u8", "u8u8-float-ends", "s8s8-7bit")  # portable order for clustered weights


def candidates(options: dict, ctx: Context) -> list[dict]:
    """The options of each file to try, in order: the portable schemes for "portable", else the one asked.

    Clustered weights take the 8-bit schemes first: each layer shares a few values, so 7-bit rounding
    moves every weight of a cluster by the same amount, errors that add up instead of averaging out
    (prune 0.65 -> cluster 8 on CIFAR-10: s8s8-7bit lost 0.54 points and agreed 95.9% with its source
    on 5,000 training images, u8u8 0.22 points and 98.4%)."""
    if options["scheme"] != PORTABLE:
        return [dict(options)]
    order = CLUSTERED_ORDER if clustered_layers(ctx) else PORTABLE_ORDER
    return [{**options, "scheme": name} for name in order]


def clustered_layers(ctx: Context) -> list[str]:
    """The weighted nodes of the float ONNX whose nonzero weights hold at most CLUSTERED_VALUES distinct
    values, and are more than that many: a small or pruned layer is not clustered for having few values
    (prune 0.65 leaves the 640-weight output layer 224 nonzero weights, all distinct)."""
    from onnx import numpy_helper

    model = _fp32_model(ctx)
    inits = {t.name: t for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in inits:
            w = numpy_helper.to_array(inits[node.input[1]])
            nonzero = w[w != 0]
            if nonzero.size > CLUSTERED_VALUES and len(np.unique(nonzero)) <= CLUSTERED_VALUES:
                found.append(node.name)
    return found


def _fp32_model(ctx: Context):
    """The tf2onnx ModelProto for this opset (made once per export call); QAT models: their float twin."""
    opset = min(ctx.options["opset"], TF2ONNX_MAX_OPSET)
    key = ("onnx-fp32", opset)
    if key not in ctx.cache:
        import tensorflow as tf
        import tf2onnx

        shape = (None, *ctx.model.input_shape[1:])  # the model's own (height, width, channels)
        spec = [tf.TensorSpec(shape, tf.float32, name=INPUT_NAME)]
        model = float_twin(ctx.model) if ctx.qat else ctx.model
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
        for value in (*proto.graph.input, *proto.graph.output):
            value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM  # tf2onnx names it unk__NN
        ctx.cache[key] = proto.SerializeToString()
    import onnx

    return onnx.load_from_string(ctx.cache[key])


def fp32(ctx: Context, path: Path) -> None:
    import onnx

    onnx.save(_fp32_model(ctx), str(path))


def _reader(images: np.ndarray):
    """A CalibrationDataReader over float32 images, CALIBRATION_BATCH at a time."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter([images[i:i + CALIBRATION_BATCH]
                                  for i in range(0, len(images), CALIBRATION_BATCH)])

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    return Reader()


def int8(ctx: Context, path: Path) -> None:
    """Static int8 quantisation (QDQ, per-channel weights) of the fp32 ONNX, by ctx.options' scheme."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path = ctx.scratch / "onnx-int8.fp32.onnx"
    pre_path = ctx.scratch / "onnx-int8.pre.onnx"
    onnx.save(_fp32_model(ctx), str(fp32_path))
    quant_pre_process(str(fp32_path), str(pre_path))
    reader = _reader(ctx.calibration(ctx.options["calibration_images"]))
    scheme = SCHEMES[ctx.options["scheme"]]
    keep_float = onnx_nodes_to_exclude(pre_path, ctx.options.get("keep_float"))  # layers left in float
    if scheme.float_ends:
        keep_float += [n for n in _end_nodes(pre_path) if n not in keep_float]
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    quantize_static(str(pre_path), str(path), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=scheme.reduce_range, activation_type=types[scheme.activations],
                    weight_type=types[scheme.weights], nodes_to_exclude=keep_float)
    convert_opset(path, ctx.options["opset"])


def _end_nodes(model_path: Path) -> list[str]:
    """The first and the last weighted node (Conv/Gemm/MatMul) of the float ONNX, in graph order."""
    import onnx

    weighted = [n.name for n in onnx.load(str(model_path)).graph.node if n.op_type in WEIGHTED_OPS and n.name]
    return list(dict.fromkeys(weighted[:1] + weighted[-1:]))


def convert_opset(path: Path, opset: int) -> None:
    """Rewrite the file at `opset` (only above tf2onnx's maximum, which it was made at)."""
    if opset <= TF2ONNX_MAX_OPSET:
        return
    import onnx
    from onnx import version_converter

    onnx.save(version_converter.convert_version(onnx.load(str(path)), opset), str(path))


def weight_range(path: Path) -> dict:
    """The file's own property that decides where its int8 math is exact, whatever the CPU.

    Every integer weight (an initializer a DequantizeLinear turns into a Conv/Gemm/MatMul weight) is
    either int8 with |q - zero_point| <= SATURATION_FREE_WEIGHT (no u8*s8 pair sum can leave int16)
    or uint8 (ONNX Runtime's U8U8 kernels sum in 32 bits). max_abs_weight: the largest |q - zero_point|
    of the int8 weights (null without any); uint8_weights: how many weights are uint8.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    weight_inputs = {n.input[1] for n in model.graph.node if n.op_type in WEIGHTED_OPS}
    worst, unsigned, signed = 0, 0, 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.output[0] not in weight_inputs:
            continue
        q = numpy_helper.to_array(inits[node.input[0]])
        if q.dtype == np.uint8:
            unsigned += 1
            continue
        signed += 1
        q = q.astype(np.int32)
        zp = numpy_helper.to_array(inits[node.input[2]]).astype(np.int32) if len(node.input) > 2 else 0
        if q.size:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if np.ndim(zp):  # per-channel zero points broadcast along the weight's channel axis
                zp = np.expand_dims(zp, [d for d in range(q.ndim) if d != axis % q.ndim])
            worst = max(worst, int(np.abs(q - zp).max()))
    # uint8 weights are safe with uint8 activations (U8U8); with int8 ones no kernel is promised
    signed_activations = any(numpy_helper.to_array(inits[n.input[2]]).dtype == np.int8
                             for n in model.graph.node if n.op_type == "QuantizeLinear"
                             and len(n.input) > 2 and n.input[2] in inits)
    return {"max_abs_weight": worst if signed else None, "uint8_weights": unsigned,
            "saturation_free": worst <= SATURATION_FREE_WEIGHT and not (unsigned and signed_activations)}
