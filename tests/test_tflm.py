"""TensorFlow Lite Micro: the runtime wrapper (edgepack.runtime.tflm) on the tiny run's real files."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import NO_INT8_GATE

from edgepack import runtime
from edgepack.errors import EdgepackError
from edgepack.runtime import tflm

pytest.importorskip("tflite_micro")


@pytest.fixture(scope="module")
def tiny_ds(tiny_archive):
    from edgepack.data import load_cifar10

    return load_cifar10(tiny_archive)


@pytest.fixture(scope="module")
def files(tiny_run, tiny_ds, tmp_path_factory) -> dict[str, Path]:
    """The tiny run's TFLite files: int8 (uint8 I/O), dynamic range, fp32, fp16."""
    from edgepack.export import export

    out = tmp_path_factory.mktemp("tflm") / "export"
    s = export(tiny_run, ["tflite-int8", "tflite-dynamic", "tflite-fp32", "tflite-fp16"], out,
               options=NO_INT8_GATE, check_images=10, ds=tiny_ds)
    return {name: out / f["file"] for name, f in s["formats"].items()}


def allocator_total(path: Path) -> int:
    """The RecordingMicroAllocator's own "Arena allocation total" for `path`, read independently."""
    from tflite_micro import runtime as micro

    it = micro.Interpreter.from_file(str(path))
    d = it.get_input_details(0)
    it.set_input(np.zeros(d["shape"], d["dtype"]), 0)
    it.invoke()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            it.print_allocations()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode()
    return int(re.search(r"Arena allocation total (\d+) bytes", text).group(1))


def test_load_tflm_runs_the_int8_file_like_litert(files, tiny_ds):
    clf = runtime.load(files["tflite-int8"], kernels="tflm")
    assert isinstance(clf, runtime.TflmClassifier) and clf.runtime == "tflm" and clf.fixed_batch == 1
    x = tiny_ds.x_test[:12]
    got = clf.predict(x)
    want = runtime.load(files["tflite-int8"], kernels="reference").predict(x)
    assert got.shape == want.shape == (12, 10)
    # both are TFLite's reference int8 arithmetic: at most one output quantum apart
    assert np.abs(got - want).max() <= 1 / 256 + 1e-6
    assert [p[0].class_id for p in clf.classify(x[:3])] == list(got[:3].argmax(1))


def test_arena_bytes_is_the_allocators_total_and_enough(files):
    from tflite_micro import runtime as micro

    path = files["tflite-int8"]
    n = tflm.arena_bytes(path)
    assert n == allocator_total(path) == tflm.arena_bytes(path.read_bytes())
    micro.Interpreter.from_file(str(path), arena_size=n)  # that many bytes suffice
    with pytest.raises(tflm.TflmError, match="TFLM cannot run"):
        tflm.interpreter(path, arena_size=n // 2)  # half do not


def test_ops_in_graph_order(files):
    assert tflm.ops(files["tflite-int8"])[:2] == ["QUANTIZE", "CONV_2D"]
    assert {"CONV_2D", "FULLY_CONNECTED", "SOFTMAX"} <= set(tflm.ops(files["tflite-dynamic"]))


def test_refusal_names_the_op_in_one_line(files):
    assert tflm.refusal(files["tflite-int8"]) is None
    dynamic = tflm.refusal(files["tflite-dynamic"])
    assert "\n" not in dynamic and "CONV_2D" in dynamic and "Hybrid" in dynamic
    fp16 = tflm.refusal(files["tflite-fp16"])
    assert "\n" not in fp16 and "DEQUANTIZE" in fp16
    with pytest.raises(tflm.TflmError, match="tflite-dynamic.tflite: op CONV_2D"):
        runtime.load(files["tflite-dynamic"], kernels="tflm")


def test_unknown_kernels_name_tflm(files):
    with pytest.raises(ValueError, match="no-xnnpack, tflm for .tflite"):
        runtime.load(files["tflite-int8"], kernels="cmsis")


def test_missing_wheel_is_one_line(files, monkeypatch):
    monkeypatch.setitem(sys.modules, "tflite_micro", None)  # import fails as if not installed
    with pytest.raises(EdgepackError, match=r"pip install 'edgepack\[tflm\]'"):
        tflm.arena_bytes(files["tflite-int8"])
