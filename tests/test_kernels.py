"""Kernel facts read from the file (edgepack.explain.kernels): Q/DQ fused or not, the dynamic-range path,
XNNPACK off. Small files made here; every assertion is a property of the file, never of this CPU.
(~10 s: one TensorFlow import and three TFLite conversions of a 2-layer model.)"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepack.explain import kernels


def _qdq_conv(path, output_q: bool, act_type=np.uint8):
    """input -> Q -> DQ -> Conv(DQ(int8 weights)) [-> Q -> DQ] -> output: with the output Q/DQ ORT
    fuses it into QLinearConv; without, the Conv must run in float32 between Q/DQ (on every CPU)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.integers(-60, 60, (4, 3, 3, 3)).astype(np.int8), "w_q"),
             numpy_helper.from_array(np.float32(0.01), "w_s"), numpy_helper.from_array(np.int8(0), "w_z"),
             numpy_helper.from_array(np.float32(1 / 255), "x_s"), numpy_helper.from_array(act_type(0), "x_z"),
             numpy_helper.from_array(np.float32(0.05), "y_s"), numpy_helper.from_array(act_type(0), "y_z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["x_q"], name="in_q"),
             helper.make_node("DequantizeLinear", ["x_q", "x_s", "x_z"], ["x_dq"], name="in_dq"),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], name="w_dq"),
             helper.make_node("Conv", ["x_dq", "w"], ["conv_out" if output_q else "y"],
                              name="model/conv1/Conv")]
    if output_q:
        nodes += [helper.make_node("QuantizeLinear", ["conv_out", "y_s", "y_z"], ["y_q"], name="out_q"),
                  helper.make_node("DequantizeLinear", ["y_q", "y_s", "y_z"], ["y"], name="out_dq")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_onnx_fused_qdq(tmp_path):
    f = kernels.file_facts(_qdq_conv(tmp_path / "fused.onnx", output_q=True))
    assert f.fused == ["conv1"] and f.unfused == [] and f.op_counts.get("QLinearConv") == 1
    (line,) = kernels.sentences(f)
    assert line.startswith("Q/DQ pairs fused") and "QLinearConv 1" in line and "every x86-64 CPU" in line
    assert kernels.slow_reasons(f) == []


def test_onnx_unfused_qdq_is_named(tmp_path):
    f = kernels.file_facts(_qdq_conv(tmp_path / "unfused.onnx", output_q=False))
    assert f.unfused == ["conv1"] and f.fused == [] and f.op_counts.get("Conv") == 1
    (line,) = kernels.sentences(f)
    assert line.startswith("Q/DQ pairs not fused: 1 of 1 Conv/MatMul nodes run in float32")
    assert "(conv1)" in line and "every x86-64 CPU" in line
    assert kernels.slow_reasons(f) == ["1 Conv/MatMul nodes left in float32 between unfused Q/DQ pairs"]


def test_onnx_int8_activations_are_fused_too(tmp_path):
    # ORT's x86-64 builds turn int8 activations into uint8 before fusing; its ARM builds fuse int8 as is
    f = kernels.file_facts(_qdq_conv(tmp_path / "s8.onnx", output_q=True, act_type=np.int8))
    assert f.fused == ["conv1"] and f.unfused == []


@pytest.fixture(scope="module")
def tflite_files(tmp_path_factory):
    """One tiny model as float32, dynamic-range and int16x8 TFLite files (int16x8: no XNNPACK)."""
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    layers = keras.layers
    model = keras.Sequential([layers.Conv2D(4, 3, activation="relu", input_shape=(8, 8, 3), name="conv1"),
                              layers.Flatten(name="flat"), layers.Dense(10, name="dense1")])
    out = tmp_path_factory.mktemp("kernels")

    def rep():
        for x in np.random.default_rng(0).random((8, 1, 8, 8, 3), np.float32):
            yield [x]

    paths = {}
    for name in ("fp32", "dynamic", "int16x8"):
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        if name != "fp32":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if name == "int16x8":
            conv.representative_dataset = rep
            ops = tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
            conv.target_spec.supported_ops = [ops]
        paths[name] = out / f"{name}.tflite"
        paths[name].write_bytes(conv.convert())
    return paths


def test_tflite_dynamic_range_path(tflite_files):
    f = kernels.file_facts(tflite_files["dynamic"])
    # dense1 (2,560 weights) is quantized; conv1 (108 weights) is under the converter's 1,024 minimum
    assert f.hybrid == ["dense1"] and f.float_weights == ["conv1"] and f.integer == []
    line = kernels.sentences(f)[0]
    assert line.startswith("dynamic-range path: dense1 take int8 weights with float32 activations")
    assert "conv1 keep float weights" in line and "the same on every CPU" in line
    assert "dynamic-range path" in kernels.slow_reasons(f)[0]


def test_tflite_xnnpack_off(tflite_files):
    f = kernels.file_facts(tflite_files["int16x8"])
    assert f.integer == ["conv1", "dense1"] and f.hybrid == []
    assert len(f.outside_xnnpack) == f.ops > 0  # XNNPACK takes no int16x8 op
    assert any(s.startswith("XNNPACK off: ") for s in kernels.sentences(f))
    assert kernels.slow_reasons(f) == ["2 of 2 conv/dense ops outside XNNPACK (on LiteRT's builtin kernels)"]


def test_float_files_have_no_quantized_facts(tflite_files):
    f = kernels.file_facts(tflite_files["fp32"])
    assert f.float_weights == ["conv1", "dense1"] and f.outside_xnnpack == []  # XNNPACK takes every op
    assert kernels.sentences(f) == [] and kernels.slow_reasons(f) == []
