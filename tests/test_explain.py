"""edgepack explain: per-layer int8 error, memory, keep_float and the automatic selective mode.

On the colour set of test_export (a tiny model trained to clear margins); calibration takes 100 of
its 200 training images so that validation images remain.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import result_row, results_of
from test_export import CHECK, clear_run, tiny_ds  # noqa: F401 (fixtures)

from edgepack.cli import main
from edgepack.explain import core, layers, memory, selective
from edgepack.export import export, keep_float
from edgepack.runtime.preprocess import scale_pixels

OPTIONS = {"calibration_images": 100}
IMAGES = 50  # validation images per table


@pytest.fixture(scope="module")
def files(clear_run, tiny_ds, tmp_path_factory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("explain") / "exp"
    export(clear_run, ["tflite-fp32", "tflite-int8", "onnx-fp32", "onnx-int8"], out, options=OPTIONS,
           check_images=CHECK, ds=tiny_ds)
    return out


def _x(tiny_ds):  # noqa: F811
    x, _ = core.validation_images(tiny_ds, IMAGES, OPTIONS["calibration_images"])
    return scale_pixels(x)


def _finite(rows):
    return all(math.isfinite(v) for r in rows
               for v in (r.rmse_over_range, r.snr_db, r.cosine, r.layer_snr_db))


def test_tflite_table_has_a_row_per_quantized_op(files, tiny_ds):  # noqa: F811
    from ai_edge_litert.interpreter import Interpreter

    rows = layers.file_layers(files / "tflite-int8.tflite", files / "tflite-fp32.tflite", _x(tiny_ds))
    it = Interpreter(model_path=str(files / "tflite-int8.tflite"))
    details = it.get_tensor_details()
    # QUANTIZE ops only convert the uint8 input (io=uint8, the default) to int8: no layer of the model
    int8_ops = [op for op in it._get_ops_details() if op["op_name"] not in ("DELEGATE", "QUANTIZE")
                and details[op["outputs"][0]]["dtype"] == np.int8]
    assert len(rows) == len(int8_ops) and _finite(rows)
    assert {"conv1", "conv2", "conv3", "dense1", "probs"} <= {r.layer for r in rows}
    assert [r.layer_snr_db for r in rows] == sorted(r.layer_snr_db for r in rows)  # worst first


def test_onnx_table_has_a_row_per_quantized_activation(files, tiny_ds):  # noqa: F811
    import onnx

    rows = layers.file_layers(files / "onnx-int8.onnx", files / "onnx-fp32.onnx", _x(tiny_ds))
    q = onnx.load(str(files / "onnx-int8.onnx")).graph
    made = {o for n in onnx.load(str(files / "onnx-fp32.onnx")).graph.node for o in n.output}
    expected = {n.input[0] for n in q.node if n.op_type == "QuantizeLinear" and n.input[0] in made}
    assert {r.tensor for r in rows} == expected and len(rows) == len(expected) and _finite(rows)
    assert {"conv1", "conv2", "conv3", "dense1", "probs"} <= {r.layer for r in rows}


def test_a_damaged_onnx_layer_comes_out_worst(files, tiny_ds, tmp_path):  # noqa: F811
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(files / "onnx-int8.onnx"))
    for t in model.graph.initializer:
        if "/conv2/Conv2D/" in t.name and t.name.endswith("_scale"):  # the weight's per-channel scales
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 1.5, t.name))
            break
    else:
        pytest.fail("no conv2 weight scale in the int8 file")
    onnx.save(model, str(tmp_path / "onnx-int8.onnx"))
    rows = layers.file_layers(tmp_path / "onnx-int8.onnx", files / "onnx-fp32.onnx", _x(tiny_ds))
    assert rows[0].layer == "conv2" and rows[0].op == "Conv"


def test_a_damaged_tflite_layer_comes_out_worst(files, clear_run, tiny_ds, tmp_path):  # noqa: F811
    """The int8 file against a float file whose conv2 weights are off by half: conv2 must lead."""
    import tensorflow as tf

    from edgepack import rundir
    from edgepack.model import load_run_model

    model = load_run_model(rundir.load_run(clear_run))
    conv2 = model.get_layer("conv2")
    kernel, bias = conv2.get_weights()
    conv2.set_weights([kernel * 1.5, bias])
    (tmp_path / "bad.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    rows = layers.file_layers(files / "tflite-int8.tflite", tmp_path / "bad.tflite", _x(tiny_ds))
    assert rows[0].layer == "conv2"


def test_compare_against_numbers():
    ref = np.array([0.0, 1.0, 2.0, 3.0])
    rel, snr, cos = layers.compare(ref, ref + 0.1)
    assert rel == pytest.approx(0.1 / 3) and snr == pytest.approx(20 * math.log10(np.linalg.norm(ref) / 0.2))
    assert cos == pytest.approx(float(ref @ (ref + 0.1)) / (np.linalg.norm(ref) * np.linalg.norm(ref + 0.1)))
    assert layers.compare(ref, ref)[1] == layers.CEIL_DB
    assert layers.layer_name("model/conv2/Relu;model/conv2/BiasAdd") == "conv2"
    assert layers.layer_name("model/conv2/Relu:0") == "conv2"


def test_peak_live_by_hand():
    # a (4 B) lives in steps 0-1, b (2 B) in 1-2, c (8 B) in 2-3: peak 10 B at step 2
    sizes = {"a": 4, "b": 2, "c": 8}
    assert memory.peak_live(sizes, {"a": 0, "b": 1, "c": 2}, {"a": 1, "b": 2, "c": 3}, 4) == (10, 2)


@pytest.mark.parametrize("name", ["tflite-fp32.tflite", "tflite-int8.tflite", "onnx-fp32.onnx",
                                  "onnx-int8.onnx"])
def test_memory_bounds_and_weights(files, name):
    m = memory.file_memory(files / name)
    assert m.largest_activation_bytes <= m.activation_bytes <= m.total_activation_bytes
    if name.endswith(".onnx"):
        import onnx
        from onnx import numpy_helper

        inits = onnx.load(str(files / name)).graph.initializer
        assert m.weight_bytes == sum(numpy_helper.to_array(t).nbytes for t in inits)
    else:
        from tensorflow.lite.tools import flatbuffer_utils

        fb = flatbuffer_utils.read_model(str(files / name))
        stored = {t.buffer for t in fb.subgraphs[0].tensors if fb.buffers[t.buffer].data is not None}
        assert m.weight_bytes == sum(len(fb.buffers[b].data) for b in stored)


def test_measured_rss_is_a_fresh_process(files):
    big = np.ones((64, 1 << 20), np.uint8)  # 64 MiB in this process must not show in the child's
    rss = memory.measured_rss(files / "onnx-int8.onnx")
    assert big.sum() and 0 < rss["rss_base_mb"] <= rss["peak_rss_mb"]
    assert rss["rss_model_mb"] == pytest.approx(rss["peak_rss_mb"] - rss["rss_base_mb"], abs=0.11)


def test_keep_float_onnx_leaves_the_node_float(clear_run, tiny_ds, tmp_path):  # noqa: F811
    import onnx

    export(clear_run, "onnx-int8", tmp_path / "x", options={**OPTIONS, "keep_float": "conv2"},
           check_images=CHECK, ds=tiny_ds)
    g = onnx.load(str(tmp_path / "x" / "onnx-int8.onnx")).graph
    dq_out = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = {layers.layer_name(n.name): n for n in g.node if n.op_type == "Conv"}
    # conv2 runs in float: float32 weight and bias, its output not quantized (its input is the
    # previous int8 layer's dequantized value)
    inits = {t.name: t for t in g.initializer}
    assert all(inits[i].data_type == onnx.TensorProto.FLOAT for i in convs["conv2"].input[1:])
    quantized = {n.input[0] for n in g.node if n.op_type == "QuantizeLinear"}
    assert not set(convs["conv2"].output) & quantized
    assert set(convs["conv1"].input) & dq_out and set(convs["conv3"].input) & dq_out


def test_keep_float_tflite_leaves_the_op_float(clear_run, tiny_ds, tmp_path):  # noqa: F811
    from ai_edge_litert.interpreter import Interpreter

    export(clear_run, "tflite-int8", tmp_path / "x", options={**OPTIONS, "keep_float": "conv2"},
           check_images=CHECK, ds=tiny_ds)
    it = Interpreter(model_path=str(tmp_path / "x" / "tflite-int8.tflite"))
    details = it.get_tensor_details()
    kinds = {}
    for op in it._get_ops_details():
        if op["op_name"] == "CONV_2D":
            name = details[op["outputs"][0]]["name"]
            kinds[layers.layer_name(name)] = {details[i]["dtype"] for i in (*op["inputs"], *op["outputs"])}
    assert kinds["conv2"] == {np.float32} and np.int8 in kinds["conv1"] and np.int8 in kinds["conv3"]


def test_unknown_layer_is_one_line(tmp_path, capsys):
    with pytest.raises(Exception) as e:
        keep_float.resolve(["nosuch"], ["m/conv1/Conv", "m/conv2/Conv"], "onnx-int8")
    assert "unknown layer 'nosuch'" in str(e.value) and "conv1, conv2" in str(e.value)


def test_auto_stops_at_the_first_k_that_meets_the_goal(monkeypatch, tmp_path):
    made = []
    monkeypatch.setattr(selective, "export", lambda *a, **k: made.append(k["options"]["keep_float"]))
    accuracies = iter([0.50, 0.70, 0.93, 0.99])  # k = 0, 1, 2, 3
    monkeypatch.setattr(selective, "step_figures",
                        lambda *a: {"accuracy": next(accuracies), "bytes": 1, "p50_ms": 0.1})

    class Clf:
        format, metadata = "onnx-int8", SimpleNamespace(options={})

    steps, _ = selective._steps(tmp_path / "onnx-int8.onnx", Clf, "run", ["conv2", "conv1", "probs"],
                                None, None, {"accuracy": 0.95}, 3.0, tmp_path, None, None)
    assert [s["k"] for s in steps] == [0, 1, 2] and steps[-1]["met"] and not steps[1]["met"]
    assert made == ["conv2", "conv2,conv1"]


def test_cli_explain_prints_the_table_and_auto_writes_its_folder(files, clear_run, tiny_ds, tmp_path,  # noqa: F811
                                                                   capsys, monkeypatch):
    from edgepack import data as data_mod

    monkeypatch.setattr(data_mod, "load_data", lambda *a, **k: tiny_ds)
    assert main(["explain", str(files / "onnx-int8.onnx"), "--images", str(IMAGES)]) == 0
    out = capsys.readouterr().out
    assert "conv2" in out and "peak activations" in out and "peak RSS" in out
    shutil.copytree(files, tmp_path / "exp")
    assert main(["explain", str(tmp_path / "exp" / "onnx-int8.onnx"), "--images", str(IMAGES), "--auto",
                 "--max-drop", "100", "--out", str(tmp_path / "sel")]) == 0
    written = sorted(p.name for p in (tmp_path / "sel").iterdir())
    assert written == ["onnx-int8.onnx", "steps.json", "steps.md"]


def test_cli_errors(files, clear_run, tiny_ds, tmp_path, capsys):  # noqa: F811
    def err(*argv) -> str:
        assert main(list(argv)) != 0
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    assert "not found" in err("explain", str(tmp_path / "nope.onnx"))
    assert "is not int8 (format onnx-fp32)" in err("explain", str(files / "onnx-fp32.onnx"))
    assert "--auto needs --max-drop" in err("explain", str(files / "onnx-int8.onnx"), "--auto")
    line = err("export", "--model", str(clear_run), "--format", "onnx-int8", "--keep-float", "conv9",
               "--data", tiny_ds.source, "--out", str(tmp_path / "x"))
    assert "unknown layer 'conv9' in keep_float: choose from" in line and "conv2" in line
    assert not (tmp_path / "x").exists()


def test_report_worst_layers_and_table(files, tiny_ds):  # noqa: F811
    from edgepack.report.render import memory_table

    worst = core.worst_layers(files / "tflite-int8.tflite", tiny_ds, images=IMAGES)
    assert len(worst) == 3 and worst[0]["layer_snr_db"] <= worst[2]["layer_snr_db"]
    assert core.worst_layers(files / "tflite-int8.tflite", tiny_ds, images=10_000) is None  # too few images
    row = result_row("v/tflite-int8", memory=memory.describe(files / "tflite-int8.tflite", rss=False),
                     worst_layers=worst)
    title, _, rows = memory_table(results_of([row, result_row("v/keras", memory=None)]))
    assert len(rows) == 1 and worst[0]["layer"] in rows[0][-1]


def test_worst_layers_find_the_float_file_in_the_pipelines_layout(files, tiny_ds, tmp_path):  # noqa: F811
    """The pipeline exports each format to exports/<variant>/<format>/: the float twin is a sibling folder."""
    for name in ("tflite-int8", "tflite-fp32"):
        (tmp_path / name).mkdir()
        core.copy_file(files / f"{name}.tflite", tmp_path / name)
    worst = core.worst_layers(tmp_path / "tflite-int8" / "tflite-int8.tflite", tiny_ds, images=IMAGES)
    assert worst == core.worst_layers(files / "tflite-int8.tflite", tiny_ds, images=IMAGES)
    int8 = tmp_path / "tflite-int8" / "tflite-int8.tflite"
    found = core.float_source(int8, "tflite-int8", None, None, tmp_path)
    assert found == tmp_path / "tflite-fp32" / "tflite-fp32.tflite"  # `edgepack explain` finds it too


def test_explaining_an_onnx_file_needs_no_tensorflow(files, tiny_ds):  # noqa: F811
    import subprocess
    import sys

    code = ("import sys; from edgepack.explain import core; from edgepack.data import load_data; "
            f"r = core.explain_file({str(files / 'onnx-int8.onnx')!r}, images={IMAGES}, rss=False, "
            f"ds=load_data({tiny_ds.source!r})); "
            "print(len(r['layers']), 'tensorflow' in sys.modules); print(core.render(r))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    n, tf_loaded = out.stdout.splitlines()[0].split()
    assert int(n) > 0 and tf_loaded == "False"
    # the kernel facts read from the file (edgepack.explain.kernels): export's QDQ file is fused
    assert "kernels (from the file): Q/DQ pairs fused: every Conv/MatMul runs as an integer" in out.stdout


def test_keras_memory_equals_its_fp32_tflite_file(files, clear_run):  # noqa: F811
    """A Keras row's memory, counted from its layers, against an independent count: the same network
    converted to fp32 TFLite and read from the flatbuffer (same weights, same activation arena)."""
    from edgepack import rundir
    from edgepack.model import load_run_model

    k = memory.keras_memory(load_run_model(rundir.load_run(clear_run)))
    f = memory.file_memory(files / "tflite-fp32.tflite")
    assert k.activation_bytes == f.activation_bytes
    assert k.largest_activation_bytes == f.largest_activation_bytes
    assert abs(k.weight_bytes - f.weight_bytes) <= 64  # the converter adds a shape constant or two
