"""Keras -> TFLite with `TFLiteConverter.from_keras_model` (the routes TOOLCHAIN.md measured fast).

Each converter writes one .tflite file; metadata and checks are added by edgepack.export.core.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from edgepack.export import keep_float
from edgepack.export.context import Context

IO_TYPES = {"int8": "int8", "uint8": "uint8", "float": None}  # option value -> tf dtype name (None: float32)


def _converter(ctx: Context):
    import tensorflow as tf

    return tf, tf.lite.TFLiteConverter.from_keras_model(ctx.model)


def _write(conv, path: Path) -> None:
    with warnings.catch_warnings():
        # int8 I/O without input statistics: expected, the scale comes from calibration / QAT ranges.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        path.write_bytes(conv.convert())


def fp32(ctx: Context, path: Path) -> None:
    _, conv = _converter(ctx)
    _write(conv, path)


def fp16(ctx: Context, path: Path) -> None:
    tf, conv = _converter(ctx)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_types = [tf.float16]
    _write(conv, path)


def dynamic(ctx: Context, path: Path) -> None:
    """Dynamic-range quantisation: int8 weights, float activations, no calibration."""
    tf, conv = _converter(ctx)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    _write(conv, path)


def int8(ctx: Context, path: Path) -> None:
    """Full integer: int8 weights and activations.

    Plain models are calibrated on `calibration_images` class-balanced training images; QAT / PQAT
    models carry learned ranges and convert with Optimize.DEFAULT alone (no calibration sample);
    without DEFAULT their fake-quant ops would stay float (TOOLCHAIN.md).
    """
    tf, conv = _converter(ctx)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if not ctx.qat:
        images = ctx.calibration(ctx.options["calibration_images"])

        def representative():
            for i in range(len(images)):
                yield [images[i:i + 1]]  # batch of 1, as the converter expects

        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    io = IO_TYPES[ctx.options["io"]]
    if io is not None:
        conv.inference_input_type = getattr(tf, io)
        conv.inference_output_type = getattr(tf, io)
    if ctx.options.get("keep_float"):  # named layers in float: edgepack.explain.selective
        return keep_float.tflite_int8(conv, ctx, path)
    _write(conv, path)
