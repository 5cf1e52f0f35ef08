"""Keras -> ONNX with tf2onnx, and ONNX fp32 -> int8 with ONNX Runtime static quantisation.

The int8 route is the fast one TOOLCHAIN.md measured: fp32 ONNX -> quant_pre_process ->
quantize_static(QDQ, per-channel int8), which ORT (ORT_ENABLE_ALL) fuses into QLinearConv/QGemm.

QAT / PQAT sources take the same fast route from their float twin (the QAT model's weights without
its fake-quant ops), calibrated like any model: tf2onnx's own conversion of the fake-quant ops keeps
float weights and runs 3-4x slower in ORT (TOOLCHAIN.md). ORT's int8 grid is not TF-MOT's, so the
top-1 agreement check against the QAT model decides whether the file is good enough. (Passing QAT's
learned ranges to ORT as TensorQuantOverrides made it worse: ORT drops a Relu whose range is not
[0, max], and QAT's relu ranges after short fine-tuning still start near -5.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepack.export.context import Context
from edgepack.model import INPUT_SHAPE

INPUT_NAME = "image"  # the ONNX graph input's name (dynamic batch: shape [N, 32, 32, 3])
BATCH_DIM = "batch"  # name of the dynamic first dimension of the input and output
CALIBRATION_BATCH = 50  # images per calibration feed


def _fp32_model(ctx: Context):
    """The tf2onnx ModelProto for this opset (made once per export call); QAT models: their float twin."""
    opset = ctx.options["opset"]
    key = ("onnx-fp32", opset)
    if key not in ctx.cache:
        import tensorflow as tf
        import tf2onnx

        from edgepack.export.qat import float_twin

        spec = [tf.TensorSpec((None, *INPUT_SHAPE), tf.float32, name=INPUT_NAME)]
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
    quantize_static(str(pre_path), str(path), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
