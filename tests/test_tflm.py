"""TensorFlow Lite Micro: the runtime wrapper (edgepack.runtime.tflm) on the tiny run's real files."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import NO_INT8_GATE, export_files

from edgepack import runtime
from edgepack.errors import EdgepackError
from edgepack.runtime import tflm

pytest.importorskip("tflite_micro")


@pytest.fixture(scope="module")
def tiny_ds(tiny_archive):
    from edgepack.data import load_data

    return load_data(tiny_archive)


@pytest.fixture(scope="module")
def files(tiny_run, tiny_ds, tmp_path_factory) -> dict[str, Path]:
    """The tiny run's TFLite files: int8 (uint8 I/O), dynamic range, fp32, fp16."""
    return export_files(tiny_run, ["tflite-int8", "tflite-dynamic", "tflite-fp32", "tflite-fp16"],
                        tmp_path_factory.mktemp("tflm"), check_images=10, ds=tiny_ds)


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


# --- the tflm target on the real files

def test_target_runs_only_fully_integer_tflite(files, tmp_path):
    from edgepack.target import tflm as target

    assert target.runs(files["tflite-int8"]) is None
    reasons = {k: target.runs(files[k]) for k in ("tflite-dynamic", "tflite-fp32", "tflite-fp16")}
    assert reasons["tflite-dynamic"].startswith("dynamic-range (hybrid) ops CONV_2D, FULLY_CONNECTED")
    assert reasons["tflite-fp32"].startswith("float ops CONV_2D,")
    assert reasons["tflite-fp16"].startswith("float ops DEQUANTIZE,")
    assert all("\n" not in r and "export tflite-int8" in r for r in reasons.values())
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    assert target.runs(onnx).startswith("a .onnx file: TFLM runs .tflite")


def test_target_check_measures_on_tflm(files, tiny_ds):
    from edgepack.target import tflm as target

    lite = runtime.load(files["tflite-int8"]).predict(tiny_ds.x_test).argmax(1)
    lines: list[str] = []
    fig = target.check(files["tflite-int8"], tiny_ds.x_test, tiny_ds.y_test, lite, workers=1,
                       progress=lines.append)
    on_tflm = runtime.load(files["tflite-int8"], kernels="tflm").predict(tiny_ds.x_test).argmax(1)
    assert fig.runs and fig.ram_bytes == allocator_total(files["tflite-int8"])
    assert fig.flash_bytes == files["tflite-int8"].stat().st_size  # as stored, not gzip'ed
    assert fig.accuracy == float((on_tflm == tiny_ds.y_test).mean()) and fig.num_images == len(tiny_ds.y_test)
    assert fig.agreement == float((on_tflm == lite).mean())
    assert lines and lines[-1].endswith(f"{len(tiny_ds.y_test)}/{len(tiny_ds.y_test)} images")
    dyn = target.check(files["tflite-dynamic"], tiny_ds.x_test, tiny_ds.y_test, None)
    assert not dyn.runs and dyn.ram_bytes is None and "CONV_2D" in dyn.reason


def test_target_pool_gives_the_same_probabilities(files, tiny_ds, monkeypatch):
    from edgepack.target import tflm as target

    monkeypatch.setattr(target, "CHUNK", 7)  # 20 images: 3 tasks over 2 processes
    x = tiny_ds.x_test
    pooled = target.predict(files["tflite-int8"], x, workers=2, progress=lambda s: None)
    assert np.array_equal(pooled, runtime.load(files["tflite-int8"], kernels="tflm").predict(x))


def _compare(files, tiny_archive, out, *budget) -> int:
    from edgepack.cli import main

    return main(["compare", str(files["tflite-int8"]), str(files["tflite-dynamic"]), "--data",
                 str(tiny_archive), "--out", str(out), "--no-latency", "--max-drop", "100",
                 "--target", "tflm", *budget])


def test_compare_target_tflm_end_to_end(files, tiny_archive, tmp_path, capsys):
    from edgepack.report import read_results

    assert _compare(files, tiny_archive, tmp_path / "fits", "--ram", "64KiB", "--flash", "256KiB") == 0
    res = read_results(tmp_path / "fits" / "results.json")
    rows = {r.format: r for r in res.rows}
    i8, dyn = rows["tflite-int8"].target, rows["tflite-dynamic"].target
    assert i8.runs and i8.fits and i8.ram_bytes == allocator_total(files["tflite-int8"])
    assert not dyn.runs and "hybrid" in dyn.reason
    assert res.target.fitting == [rows["tflite-int8"].id]
    assert res.target.budget == {"ram_bytes": 65536, "flash_bytes": 262144}
    assert res.recommended == rows["tflite-int8"].id
    md = (tmp_path / "fits" / "report.md").read_text()
    assert "## Target tflm" in md and "not runnable: dynamic-range (hybrid) ops" in md
    assert "target_ram_bytes" in (tmp_path / "fits" / "results.csv").read_text().splitlines()[0]
    assert "id='target'" in (tmp_path / "fits" / "report.html").read_text()

    capsys.readouterr()
    assert _compare(files, tiny_archive, tmp_path / "none", "--ram", "1KiB") == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edgepack: error: no file fits tflm within RAM 1,024 B")
    assert f"closest: {rows['tflite-int8'].id}" in err[0]
    assert (tmp_path / "none" / "report.md").is_file()  # the report is written first


@pytest.mark.slow  # clusters and exports a model of its own (~20 s on a quiet machine)
def test_clustered_file_fits_after_lut_compression(tiny_run, tiny_archive, tiny_ds, tmp_path):
    """A clustered int8 file: flash after TFLM's look-up tables is smaller, its arena measured too, and
    a flash budget between the two sizes fits only the compressed form."""
    from edgepack.compress import compress
    from edgepack.export import export
    from edgepack.target import Budget
    from edgepack.target import tflm as target

    run = compress(tiny_run, "cluster", tmp_path / "cluster", params={"clusters": 16, "epochs": 1,
                   "batch_size": 16}, data_path=tiny_archive, variant="cluster-16")
    s = export(run, ["tflite-int8"], tmp_path / "x", options=NO_INT8_GATE, check_images=10, ds=tiny_ds)
    path = tmp_path / "x" / s["formats"]["tflite-int8"]["file"]
    x, y = tiny_ds.x_test[:4], tiny_ds.y_test[:4]
    fig = target.check(path, x, y, None, progress=lambda s: None)
    assert fig.compression["applies"] and fig.compressed_flash_bytes < fig.flash_bytes
    packed, _ = target.compressed(path.read_bytes())
    assert fig.compressed_ram_bytes == tflm.arena_bytes(packed) >= fig.ram_bytes  # decoded in the arena
    between = Budget(fig.compressed_ram_bytes, (fig.flash_bytes + fig.compressed_flash_bytes) // 2)
    judged = between.judge(fig)
    assert judged.fits and judged.fits_as == "compressed" and judged.over == {"flash": pytest.approx(
        fig.flash_bytes / between.flash_bytes)}


def test_optimize_picks_only_files_that_fit_the_target(files):
    from types import SimpleNamespace

    from edgepack.optimize import SearchOptions
    from edgepack.optimize.final import choose

    def point(name, gzip):
        return {"id": name, "file": str(files[name]), "accuracy": 0.7, "gzip_bytes": gzip, "drop_pts": 0.0,
                "latency": None, "size_ratio": 1.0}

    points = [point("tflite-dynamic", 100), point("tflite-int8", 200)]  # the dynamic file is smaller
    assert choose(points, 1.0, "size")["pick"] == "tflite-dynamic"  # host: any file
    mcu = SimpleNamespace(target="tflm", ram_bytes=65536, flash_bytes=262144)
    assert choose(points, 1.0, "size", mcu)["pick"] == "tflite-int8"
    tiny = SimpleNamespace(target="tflm", ram_bytes=1024, flash_bytes=None)
    assert choose(points, 1.0, "size", tiny)["pick"] is None
    with pytest.raises(EdgepackError, match="--ram/--flash are budgets of a device"):
        SearchOptions(model="m", out="o", max_drop=1.0, objective="size", ram_bytes=1024).check()
