"""Keras -> ONNX with tf2onnx, and ONNX fp32 -> int8 with ONNX Runtime static quantisation.

The int8 route is the fast one TOOLCHAIN.md measured: fp32 ONNX -> quant_pre_process ->
quantize_static(QDQ, per-channel int8), which ORT (ORT_ENABLE_ALL) fuses into QLinearConv/QGemm.

QAT / PQAT sources take the same fast route from their float twin (the QAT model's weights without
its fake-quant ops), calibrated like any model: tf2onnx's own conversion of the fake-quant ops keeps
float weights and runs 3-4x slower in ORT (TOOLCHAIN.md). ORT's int8 grid is not TF-MOT's, so the
top-1 agreement check against the QAT model decides whether the file is good enough. (Passing QAT's
learned ranges to ORT as TensorQuantOverrides made it worse: ORT drops a Relu whose range is not
[0, max], and QAT's relu ranges after short fine-tuning still start near -5.)

Int8 schemes (option `scheme`; why in docs/export.md): "portable" (the default) quantizes weights to
7 bits ([-64, 64], ORT's reduce_range), so the file is exact on every CPU: x86-64 without VNNI sums
u8*s8 product pairs into int16 with saturation, and 2 * 255 * 64 = 32640 cannot overflow it.
"full-range" uses all 8 bits: slightly closer to float where the CPU has VNNI, AMX or ARM
dot-product, but it loses accuracy on AVX2 / AVX-512-without-VNNI CPUs (7.5 points measured).
Opsets 19 and 21 (option `opset`) are made by onnx.version_converter from tf2onnx's opset 18: only
those run in `onnx.reference` (it implements DequantizeLinear from opset 19 on).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepack.explain.selective import onnx_nodes_to_exclude
from edgepack.export.context import Context
from edgepack.runtime.cpu import SATURATION_FREE_WEIGHT

INPUT_NAME = "image"  # the ONNX graph input's name (dynamic batch: shape [N, 32, 32, 3])
BATCH_DIM = "batch"  # name of the dynamic first dimension of the input and output
CALIBRATION_BATCH = 50  # images per calibration feed
TF2ONNX_MAX_OPSET = 18  # higher opsets are converted from this one by onnx.version_converter

# scheme name -> (reduce_range, what the file's metadata says about where it is accurate)
SCHEMES = {
    "portable": (True, "every CPU ONNX Runtime supports: x86-64 with or without VNNI, ARM (7-bit weights "
                       f"within [-{SATURATION_FREE_WEIGHT}, {SATURATION_FREE_WEIGHT}] cannot saturate)"),
    "full-range": (False, "CPUs with VNNI, AMX or ARM; NOT x86-64 without VNNI (AVX2, AVX-512 without VNNI), "
                          "whose int16 pair sums saturate on 8-bit weights"),
}


def _fp32_model(ctx: Context):
    """The tf2onnx ModelProto for this opset (made once per export call); QAT models: their float twin."""
    opset = min(ctx.options["opset"], TF2ONNX_MAX_OPSET)
    key = ("onnx-fp32", opset)
    if key not in ctx.cache:
        import tensorflow as tf
        import tf2onnx

        from edgepack.export.qat import float_twin

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
    """Static int8 quantisation (QDQ, per-channel weights, int8 activations) of the fp32 ONNX."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path = ctx.scratch / "onnx-int8.fp32.onnx"
    pre_path = ctx.scratch / "onnx-int8.pre.onnx"
    onnx.save(_fp32_model(ctx), str(fp32_path))
    quant_pre_process(str(fp32_path), str(pre_path))
    reader = _reader(ctx.calibration(ctx.options["calibration_images"]))
    reduce_range, _ = SCHEMES[ctx.options["scheme"]]
    keep_float = onnx_nodes_to_exclude(pre_path, ctx.options.get("keep_float"))  # layers left in float
    quantize_static(str(pre_path), str(path), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=reduce_range, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=keep_float)
    convert_opset(path, ctx.options["opset"])


def convert_opset(path: Path, opset: int) -> None:
    """Rewrite the file at `opset` (only above tf2onnx's maximum, which it was made at)."""
    if opset <= TF2ONNX_MAX_OPSET:
        return
    import onnx
    from onnx import version_converter

    onnx.save(version_converter.convert_version(onnx.load(str(path)), opset), str(path))


def weight_range(path: Path) -> dict:
    """The file's own property that decides where its int8 math is exact, whatever the CPU.

    max_abs_weight: the largest |q - zero_point| of the integer weights (initializers that a
    DequantizeLinear turns into a Conv/Gemm/MatMul weight). Up to SATURATION_FREE_WEIGHT no u8*s8
    pair sum can leave int16, so the file is exact on CPUs without VNNI too.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    weight_inputs = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")}
    worst = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.output[0] not in weight_inputs:
            continue
        q = numpy_helper.to_array(inits[node.input[0]]).astype(np.int32)
        zp = numpy_helper.to_array(inits[node.input[2]]).astype(np.int32) if len(node.input) > 2 else 0
        if q.size:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if np.ndim(zp):  # per-channel zero points broadcast along the weight's channel axis
                zp = np.expand_dims(zp, [d for d in range(q.ndim) if d != axis % q.ndim])
            worst = max(worst, int(np.abs(q - zp).max()))
    return {"max_abs_weight": worst, "saturation_free": worst <= SATURATION_FREE_WEIGHT}
