"""The browser target: the page folder, its one-line errors, and (slow) the page in headless Chromium
giving ONNX Runtime's predictions for the same files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import NO_INT8_GATE

from edgepack.cli import main
from edgepack.errors import EdgepackError
from edgepack.runtime.metadata import ONNX_KEY, FileMetadata
from edgepack.runtime.preprocess import PRESETS, parse
from edgepack.target import browser
from edgepack.target.chromium import BrowserError


def tiny_onnx(path: Path, scaling: dict | None = None, channel_order: str = "RGB", uint8_input: bool = False,
              metadata: bool = True, shape=(4, 4, 3), classes=("a", "b", "c"), seed: int = 0) -> Path:
    """A hand-built classifier (flatten, matmul, softmax) with edgepack metadata; `uint8_input`: the
    file takes uint8 codes (input_quantization scale 1/255, zero point 0) and dequantizes itself."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.normal(size=(int(np.prod(shape)), len(classes))).astype(np.float32) * 4
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float32(1 / 255), "s")]
    nodes = [helper.make_node("Flatten", ["xf"], ["f"], axis=1),
             helper.make_node("MatMul", ["f", "w"], ["l"]), helper.make_node("Softmax", ["l"], ["y"], axis=1)]
    if uint8_input:
        nodes[:0] = [helper.make_node("Cast", ["x"], ["xc"], to=TensorProto.FLOAT),
                     helper.make_node("Mul", ["xc", "s"], ["xf"])]
    else:
        nodes[:0] = [helper.make_node("Identity", ["x"], ["xf"])]
    x_type = TensorProto.UINT8 if uint8_input else TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", x_type, ["N", *shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", len(classes)])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        meta = FileMetadata(
            format="onnx-fp32", class_names=tuple(classes), input_shape=tuple(shape),
            input_dtype="uint8" if uint8_input else "float32", pixel_scaling=scaling or dict(PRESETS["unit"]),
            source_sha256="0" * 64, technique="baseline", variant="baseline", edgepack_version="0",
            channel_order=channel_order, opset=17,
            input_quantization={"scale": 1 / 255, "zero_point": 0} if uint8_input else None)
        helper.set_model_props(model, {ONNX_KEY: meta.to_json()})
    onnx.save(model, path)
    return path


@pytest.fixture
def fake_ort_web(tmp_path) -> Path:
    """A folder shaped like `npm ci`'s install of the pinned onnxruntime-web (placeholder dist files)."""
    package = tmp_path / "ortweb" / "node_modules" / "onnxruntime-web"
    (package / "dist").mkdir(parents=True)
    (package / "package.json").write_text(json.dumps({"version": browser.ORT_WEB_VERSION}))
    for name in browser.DIST_FILES:
        (package / "dist" / name).write_text(f"// {name}")
    return tmp_path / "ortweb"


def test_folder_holds_model_page_engine_and_config(tmp_path, fake_ort_web):
    model = tiny_onnx(tmp_path / "m.onnx", scaling=parse("symmetric"))
    out = browser.write_folder(model, tmp_path / "web", ort_web=fake_ort_web)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["m.onnx", "config.json", *browser.PAGE_FILES, *browser.DIST_FILES])
    config = json.loads((out / "config.json").read_text())
    assert config == {"model": "m.onnx", "format": "onnx-fp32", "onnxruntime_web": browser.ORT_WEB_VERSION}
    assert (out / "m.onnx").read_bytes() == model.read_bytes()  # the metadata the page reads, unchanged
    page = (out / "classify.js").read_text()
    assert "metadata_props" in page and "./ort.wasm.min.mjs" in page and "pixel_scaling" in page
    assert browser.read_folder(out) == (out / "m.onnx", config)
    with pytest.raises(EdgepackError, match="already exists"):
        browser.write_folder(model, out, ort_web=fake_ort_web)


def test_pinned_version_matches_package_json():
    page = browser.PAGE
    pinned = json.loads((page / "package.json").read_text())["dependencies"]["onnxruntime-web"]
    locked = json.loads((page / "package-lock.json").read_text())["packages"]["node_modules/onnxruntime-web"]
    assert pinned == locked["version"] == browser.ORT_WEB_VERSION


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_onnx_without_metadata_is_one_line(tmp_path, fake_ort_web, capsys):
    bare = tiny_onnx(tmp_path / "bare.onnx", metadata=False)
    line = one_line_error(capsys, ["export", "--model", str(bare), "--target", "browser", "--out",
                                   str(tmp_path / "web"), "--ort-web", str(fake_ort_web)])
    assert "bare.onnx has no edgepack metadata" in line and "edgepack export" in line
    assert not (tmp_path / "web").exists()
    assert "not an .onnx file" in browser.runs(tmp_path / "x.tflite")
    assert browser.runs(bare) is not None and browser.runs(tiny_onnx(tmp_path / "ok.onnx")) is None


def test_missing_onnxruntime_web_names_the_command(tmp_path, capsys):
    model = tiny_onnx(tmp_path / "m.onnx")
    line = one_line_error(capsys, ["export", "--model", str(model), "--target", "browser", "--out",
                                   str(tmp_path / "web"), "--ort-web", str(tmp_path / "nothing")])
    assert f"onnxruntime-web {browser.ORT_WEB_VERSION} not found" in line and "make browser-deps" in line
    assert not (tmp_path / "web").exists()


def test_formats_must_be_onnx(tmp_path, fake_ort_web, capsys):
    line = one_line_error(capsys, ["export", "--model", str(tmp_path / "run"), "--target", "browser",
                                   "--format", "tflite-int8", "--out", str(tmp_path / "web")])
    assert "tflite-int8 is not an onnx-* format" in line
    model = tiny_onnx(tmp_path / "m.onnx")
    line = one_line_error(capsys, ["export", "--model", str(model), "--target", "browser", "--format",
                                   "onnx-fp32", "--out", str(tmp_path / "web")])
    assert "--format does not apply to an exported file" in line
    line = one_line_error(capsys, ["export", "--model", str(model), "--out", str(tmp_path / "web")])
    assert "--format is required" in line  # optional only with --target


def test_measuring_a_folder_without_its_model_is_one_line(tmp_path, fake_ort_web, capsys):
    out = browser.write_folder(tiny_onnx(tmp_path / "m.onnx"), tmp_path / "web", ort_web=fake_ort_web)
    (out / "m.onnx").unlink()
    line = one_line_error(capsys, ["bench", "--target", "browser", str(out)])
    assert line == (f"edgepack: error: {out} lacks its model m.onnx: copy the .onnx file back or "
                    "re-export the folder")
    line = one_line_error(capsys, ["bench", "--target", "browser", str(tmp_path)])
    assert "is not a browser folder (no config.json)" in line


# --- in the browser (slow): skipped only where Chromium or onnxruntime-web is absent, failed in CI

@pytest.fixture(scope="module")
def browser_ready() -> None:
    try:
        browser.ready()
    except BrowserError as e:
        if os.environ.get("CI"):
            pytest.fail(f"the browser target cannot run: {e}")
        pytest.skip(f"the browser target cannot run here: {e}")


def rows_agree(rows, atol: float) -> None:
    assert rows[0].threads == 1 and all(r.isolated for r in rows), rows
    for r in rows:
        assert r.agreement == 1.0 and r.max_abs_diff <= atol, r
        assert r.browser.startswith("Chromium ") and r.engine == f"onnxruntime-web {browser.ORT_WEB_VERSION}"
        assert r.latency_p50_ms > 0 and r.num_images > 0


# Page cases (the unit preset with float input is the exported run's, below): name -> pixel scaling
SCALINGS = {"symmetric": "symmetric", "mean-std-bgr": "mean-std:125.3,123,113.9/63,62.1,66.7",
            "uint8-input": "unit"}


@pytest.mark.slow
def test_page_scales_pixels_like_the_runtime(browser_ready, tmp_path):
    """The page's own pixel scaling (each preset and mean/std), channel order (BGR) and input
    quantization (uint8 input) give native ONNX Runtime's outputs on the same pixels."""
    files = [tiny_onnx(tmp_path / f"{case}.onnx", scaling=parse(spec), uint8_input=case == "uint8-input",
                       channel_order="BGR" if case.endswith("bgr") else "RGB")
             for case, spec in SCALINGS.items()]
    folders = [browser.write_folder(f, tmp_path / f.stem) for f in files]
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 256, (40, 4, 4, 3), dtype=np.uint8), rng.integers(0, 3, 40)
    rows = browser.measure(folders, x, y, threads=(1,), runs=5, warmup=1, progress=lambda s: None)
    assert [r.file for r in rows] == [f"{case}.onnx" for case in SCALINGS]
    rows_agree(rows, atol=1e-6)


@pytest.mark.slow
def test_exported_run_classifies_like_onnx_runtime(browser_ready, tiny_run, tiny_archive, tmp_path):
    """A run folder exported to the browser (fp32 and int8): the page's top-1 equals ONNX Runtime's on
    every test image, on 1 thread and on every core."""
    from edgepack.data import load_data

    folders, failed = browser.export_folders(tiny_run, ["onnx-fp32", "onnx-int8"], tmp_path / "web",
                                             options=NO_INT8_GATE, data_path=tiny_archive, check_images=20)
    assert not failed and [f.name for f in folders] == ["onnx-fp32", "onnx-int8"]
    assert (tmp_path / "web" / "export.json").is_file()
    ds = load_data(tiny_archive)
    for folder in folders:
        rows = browser.measure(folder, ds.x_test, ds.y_test, runs=5, warmup=1, progress=lambda s: None)
        assert len(rows) == 2 and {r.format for r in rows} == {folder.name}
        rows_agree(rows, atol=1e-5 if folder.name == "onnx-fp32" else 0.05)
    # the registry's check (compare --target browser): the page's accuracy, agreement with the row
    from edgepack import runtime
    from edgepack.target import TARGETS

    model = folders[0] / "onnx-fp32.onnx"
    native_top1 = runtime.load(model).predict(ds.x_test).argmax(axis=1)
    fig = TARGETS["browser"].check(model, ds.x_test, ds.y_test, native_top1, 1, lambda s: None)
    assert fig.runs and fig.agreement == 1.0 and fig.num_images == len(ds.y_test)
    assert fig.accuracy == float(np.mean(native_top1 == ds.y_test))
    assert fig.flash_bytes == model.stat().st_size
    other = model.with_suffix(".tflite")
    assert not TARGETS["browser"].check(other, ds.x_test, ds.y_test, None, 1, print).runs
