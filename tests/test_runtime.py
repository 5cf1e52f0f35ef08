"""Runtime: TF-free import, predict on every input kind and format, errors, threads, CLI, example."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASS_NAMES, NO_INT8_GATE, ROOT
from runtime_only_check import write_check_folder

from edgepack import runtime
from edgepack.cli import main
from edgepack.errors import EdgepackError
from edgepack.runtime import metadata as md

CHECK = 20  # the tiny archive has 20 test images
MODELS_ENV = "EDGEPACK_RUNTIME_MODELS"  # `make test` sets it: exported files for `make runtime-check`
NO_TF = "assert not [m for m in sys.modules if m.split('.')[0] == 'tensorflow'], 'tensorflow imported'"


@pytest.fixture(scope="module")
def tiny_ds(tiny_archive):
    from edgepack.data import load_data

    return load_data(tiny_archive)


@pytest.fixture(scope="module")
def exported(tiny_run, tiny_ds, tmp_path_factory) -> dict[str, Path]:
    """Every export format of the tiny run, plus tflite-int8 with int8 I/O: name -> file."""
    from edgepack.export import export

    out = tmp_path_factory.mktemp("export")
    s = export(tiny_run, ["all"], out / "all", options=NO_INT8_GATE, check_images=CHECK, ds=tiny_ds)
    files = {name: out / "all" / f["file"] for name, f in s["formats"].items()}
    i8 = export(tiny_run, ["tflite-int8"], out / "i8", options={"io": "int8", **NO_INT8_GATE},
                check_images=CHECK, ds=tiny_ds)
    files["tflite-int8-int8"] = out / "i8" / i8["formats"]["tflite-int8"]["file"]
    if os.environ.get(MODELS_ENV):  # `make test`: leave them for `make runtime-check`
        write_check_folder(Path(os.environ[MODELS_ENV]), files, tiny_ds.x_test)
    return files


def direct(path: Path, pixels: np.ndarray) -> np.ndarray:
    """Probabilities from the bare engine, written independently of edgepack.runtime: pixels / 255,
    quantized with the tensor's own scale and zero point; TFLite one image per invoke (batch 1)."""
    x = (pixels / 255.0).astype(np.float32)
    if path.suffix == ".onnx":
        import onnxruntime as ort

        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return s.run(None, {s.get_inputs()[0].name: x})[0]
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    if i["dtype"] != np.float32:
        scale, zero = i["quantization"]
        info = np.iinfo(i["dtype"])
        x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(i["dtype"])
    out = []
    for k in range(len(x)):
        it.set_tensor(i["index"], x[k:k + 1])
        it.invoke()
        out.append(it.get_tensor(o["index"]))
    y = np.concatenate(out)
    if o["dtype"] != np.float32:
        scale, zero = o["quantization"]
        y = (y.astype(np.float32) - zero) * scale
    return y


def test_import_loads_no_tensorflow_and_no_engine(exported):
    """Importing the runtime, loading and predicting with both engines keeps TensorFlow out."""
    code = f"""
import sys
import edgepack.runtime
assert "onnxruntime" not in sys.modules and "ai_edge_litert" not in sys.modules, "engines imported eagerly"
{NO_TF}
import numpy as np
from edgepack.runtime.images import predict_files
for p in sys.argv[1:3]:
    edgepack.runtime.load(p).classify(np.zeros((2, 32, 32, 3), np.uint8))
predict_files(sys.argv[1], [sys.argv[3]])
from edgepack.cli import build_parser
build_parser()
{NO_TF}
print("ok")
"""
    npy = exported["onnx-fp32"].parent / "zeros.npy"
    np.save(npy, np.zeros((32, 32, 3), np.uint8))
    files = [str(exported["onnx-int8"]), str(exported["tflite-int8"]), str(npy)]
    done = subprocess.run([sys.executable, "-c", code, *files], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_every_format_and_input_kind_matches_the_engine(exported, tiny_ds):
    x = tiny_ds.x_test  # (20, 32, 32, 3) uint8
    for name, path in exported.items():
        clf = runtime.load(path, threads=1)
        ref = direct(path, x)
        probs = clf.predict(x)
        assert probs.dtype == np.float32 and probs.shape == (len(x), 10), name
        np.testing.assert_allclose(probs, ref, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=0.05, err_msg=name)
        np.testing.assert_allclose(clf.predict(x[3]), ref[3:4], atol=1e-6, err_msg=name)  # one image
        scaled = x / 255.0  # float64, as apps often have it
        np.testing.assert_array_equal(clf.predict(scaled), probs, err_msg=name)
        np.testing.assert_array_equal(clf.predict(scaled.astype(np.float32)), probs, err_msg=name)
        np.testing.assert_array_equal(clf.predict(list(x[:2])), probs[:2], err_msg=name)


def test_any_batch_size_including_more_than_one_chunk(exported, tiny_ds):
    big = np.concatenate([tiny_ds.x_test] * 14)[:275]  # > CHUNK (256), not a multiple
    for name in ("tflite-int8", "onnx-fp32"):
        clf = runtime.load(exported[name])
        ref = direct(exported[name], big)
        for n in (1, 2, 275, 1):  # batch sizes that force TFLite re-allocations
            np.testing.assert_allclose(clf.predict(big[:n]), ref[:n], atol=1e-6, err_msg=f"{name} N={n}")


@pytest.mark.parametrize("batch", [1, 4])
def test_fixed_batch_model_handles_any_n(exported, tiny_ds, tmp_path, batch):
    """An ONNX file whose input has a fixed batch: looped, the last chunk padded."""
    import onnx

    m = onnx.load(str(exported["onnx-fp32"]))
    dim = m.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = batch
    onnx.save(m, str(tmp_path / "fixed.onnx"))
    clf = runtime.load(tmp_path / "fixed.onnx")
    assert clf.fixed_batch == batch
    x = tiny_ds.x_test[:7]
    ref = runtime.load(exported["onnx-fp32"]).predict(x)
    for n in (1, 4, 7):
        np.testing.assert_allclose(clf.predict(x[:n]), ref[:n], atol=1e-6, err_msg=f"N={n}")


def test_classify_and_properties(exported, tiny_ds):
    clf = runtime.load(exported["tflite-int8"])
    assert clf.format == "tflite-int8" and clf.runtime == "litert" and clf.input_dtype == np.uint8
    assert clf.class_names == tuple(CLASS_NAMES) and clf.input_shape == (32, 32, 3)
    assert clf.metadata.input_quantization["zero_point"] == 0  # scale: 1/(calibration's pixel range)
    assert (clf.metadata.layout, clf.metadata.channel_order) == ("NHWC", "RGB")
    clf.metadata.pixel_scaling["divisor"] = 1.0  # a copy
    assert clf.metadata.pixel_scaling["divisor"] == 255.0
    assert "tflite-int8.tflite" in repr(clf)
    probs = clf.predict(tiny_ds.x_test[:4])
    top = clf.classify(tiny_ds.x_test[:4], top_k=3)
    assert len(top) == 4 and all(len(t) == 3 for t in top)
    for p, t in zip(probs, top, strict=True):
        assert [c.class_id for c in t][0] == int(np.argmax(p))
        assert [c.score for c in t] == sorted((c.score for c in t), reverse=True)
        assert all(c.label == CLASS_NAMES[c.class_id] and c.score == pytest.approx(p[c.class_id]) for c in t)
    assert len(clf.classify(tiny_ds.x_test[0])) == 1  # one image -> one list
    onnx = runtime.load(exported["onnx-int8"], threads=2)
    assert onnx.runtime == "onnxruntime" and onnx.threads == 2 and onnx.input_dtype == np.float32
    for bad in (0, 11, 1.5):
        with pytest.raises(ValueError, match="top_k"):
            clf.classify(tiny_ds.x_test[0], top_k=bad)


@pytest.mark.parametrize("images, expected", [
    (np.zeros((32, 32), np.uint8), r"expected images of shape \(N, 32, 32, 3\).*got shape \(32, 32\)"),
    (np.zeros((1, 32, 32, 3, 1), np.uint8), r"got shape \(1, 32, 32, 3, 1\)"),
    (np.zeros((2, 28, 28, 3), np.uint8), r"got shape \(2, 28, 28, 3\)"),
    (np.zeros((2, 3, 32, 32), np.uint8), r"got shape \(2, 3, 32, 32\) \(channels first"),
    (np.zeros((0, 32, 32, 3), np.uint8), r"expected at least one image, got an empty batch"),
    (np.zeros((1, 32, 32, 3), np.int64), r"expected uint8 pixels or float images.*got dtype int64"),
    (np.zeros((1, 32, 32, 3), bool), r"got dtype bool"),
    (np.full((1, 32, 32, 3), np.nan, np.float32), r"expected finite pixel values.*got NaN"),
    (np.full((1, 32, 32, 3), np.inf), r"got NaN or infinity"),
    (np.full((1, 32, 32, 3), 255.0, np.float32),
     r"expected float images scaled to \[0, 1\].*got values from 255"),
    (np.full((1, 32, 32, 3), -0.1), r"got values from -0.1 to -0.1"),
    ([np.zeros((32, 32, 3)), np.zeros((3,))], r"expected an array of images"),
])
def test_bad_inputs_say_expected_and_got(exported, images, expected):
    for name in ("tflite-int8", "onnx-fp32"):
        with pytest.raises(runtime.InputError, match=expected) as e:
            runtime.load(exported[name]).predict(images)
        assert isinstance(e.value, ValueError) and isinstance(e.value, EdgepackError)


def _write(path: Path, data: bytes, sidecar_of: Path | None = None) -> Path:
    path.write_bytes(data)
    if sidecar_of is not None:
        shutil.copy(md.sidecar_path(sidecar_of), md.sidecar_path(path))
    return path


def _onnx_without_metadata(src: Path, dest: Path) -> Path:
    import onnx

    m = onnx.load(str(src))
    del m.metadata_props[:]
    onnx.save(m, str(dest))
    return dest


def test_bad_model_files_name_the_file(exported, tmp_path):
    onnx_bytes, tfl = exported["onnx-fp32"].read_bytes(), exported["tflite-fp32"]
    bad, missing = runtime.ModelFileError, runtime.ModelNotFoundError
    cases = {
        "missing": (tmp_path / "missing.onnx", missing, "not found"),
        "folder": (tmp_path / "dir.tflite", bad, "is not a file"),
        "suffix": (_write(tmp_path / "model.pb", onnx_bytes), bad, "unknown model file type"),
        "truncated onnx": (_write(tmp_path / "t.onnx", onnx_bytes[:len(onnx_bytes) // 2]), bad,
                           "not a valid onnx model file, or is truncated"),
        "empty onnx": (_write(tmp_path / "e.onnx", b""), bad, "not a valid onnx"),
        "truncated tflite": (_write(tmp_path / "t.tflite", tfl.read_bytes()[:5000], tfl), bad,
                             "not a valid tflite model file, or is truncated"),
        "text tflite": (_write(tmp_path / "x.tflite", b"hello\n" * 100, tfl), bad, "not a valid tflite"),
        "no sidecar": (_write(tmp_path / "n.tflite", tfl.read_bytes()), missing,
                       "no metadata sidecar n.tflite.json"),
        "onnx without metadata": (_onnx_without_metadata(exported["onnx-fp32"], tmp_path / "nm.onnx"), bad,
                                  "has no edgepack metadata"),
        "wrong sidecar": (_write(tmp_path / "w.tflite", tfl.read_bytes(), exported["tflite-int8"]), bad,
                          "metadata says uint8 input but the model takes float32"),
    }
    (tmp_path / "dir.tflite").mkdir()
    bad_json = _write(tmp_path / "j.tflite", tfl.read_bytes())
    md.sidecar_path(bad_json).write_text("{not json")
    cases["bad json"] = (bad_json, runtime.ModelFileError, "not valid JSON")
    partial = _write(tmp_path / "p.tflite", tfl.read_bytes())
    md.sidecar_path(partial).write_text(json.dumps({"format": "tflite-fp32", "schema_version": 2}))
    cases["missing keys"] = (partial, runtime.ModelFileError, "lacks class_names")
    meta = json.loads(md.sidecar_path(exported["tflite-int8"]).read_text())
    for i, (key, value, message) in enumerate([
            ("input_shape", [32, 32], "input_shape must be [height, width, channels]"),
            ("input_dtype", "float64", "input_dtype must be one of"),
            ("pixel_scaling", {"divisor": 0}, "pixel_scaling must have a positive divisor"),
            ("pixel_scaling", {"divisor": 255.0, "range": [1, 0]}, "pixel_scaling range must be"),
            ("input_quantization", {"scale": "x", "zero_point": 0}, "input_quantization must be null or"),
            ("input_quantization", None, "the model's input is uint8 but its metadata gives no input_quant"),
            ("schema_version", 1, "schema 1 is older than 2: re-export the model with this edgepack"),
            ("pixel_scaling", {"divisor": 1.0, "mean": [1, 2], "std": [1, 1]}, "mean/std must be 3 numbers"),
            ("class_names", CLASS_NAMES[:9], "gives 10 outputs but its metadata names 9 classes")]):
        broken = _write(tmp_path / f"meta{i}.tflite", exported["tflite-int8"].read_bytes())
        md.sidecar_path(broken).write_text(json.dumps({**meta, key: value}))
        cases[f"metadata {key} {i}"] = (broken, runtime.ModelFileError, message)
    for what, (path, kind, message) in cases.items():
        with pytest.raises(kind) as e:
            runtime.load(path)
        assert message in str(e.value) and path.name in str(e.value), what
        assert isinstance(e.value, EdgepackError) and "\n" not in str(e.value), what
    assert isinstance(e.value, ValueError)
    with pytest.raises(FileNotFoundError):
        runtime.load(tmp_path / "missing.tflite")


@pytest.mark.parametrize("name", ["tflite-int8", "tflite-fp32", "onnx-int8"])
def test_one_model_shared_by_8_threads_matches_sequential(exported, tiny_ds, name):
    clf = runtime.load(exported[name], threads=1)
    x = tiny_ds.x_test
    jobs = [x[i % 20:i % 20 + 1 + i % 7] for i in range(64)]  # batch sizes 1..7: TFLite resizes a lot
    sequential = [clf.predict(j) for j in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            threaded = list(pool.map(clf.predict, jobs))
            for s, t in zip(sequential, threaded, strict=True):
                np.testing.assert_array_equal(s, t)


# --- edgepack predict

def _png(path: Path, pixels: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(pixels).save(path)
    return path


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_cli_png_jpeg_npy_and_json(exported, tiny_ds, tmp_path, capsys):
    from PIL import Image

    x = tiny_ds.x_test
    png = _png(tmp_path / "a.png", x[0])
    jpg = tmp_path / "b.jpg"
    Image.fromarray(x[1]).resize((96, 64)).save(jpg, quality=95)
    npy = tmp_path / "batch.npy"
    np.save(npy, x[:3])
    model = exported["onnx-int8"]
    code, out, err = _cli(capsys, "predict", model, png, jpg, npy, "--top-k", "2")
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == [str(png), str(jpg), f"{npy}[0]", f"{npy}[1]", f"{npy}[2]"]
    top = runtime.load(model).classify(x[0], top_k=2)[0]
    assert lines[0] == f"{png}: {top[0].label} {top[0].score:.4f}, {top[1].label} {top[1].score:.4f}"
    assert lines[2].split(":", 1)[1] == lines[0].split(":", 1)[1]  # a 32x32 PNG is used pixel for pixel
    code, out, _ = _cli(capsys, "predict", exported["tflite-int8"], png, npy, "--json", "--threads", "1")
    result = json.loads(out)
    assert code == 0 and result["format"] == "tflite-int8" and result["runtime"] == "litert"
    assert len(result["predictions"]) == 4 and result["predictions"][0]["input"] == str(png)
    assert result["predictions"][0]["top"][0]["label"] in CLASS_NAMES


def test_predict_resizes_by_centre_crop(exported, tmp_path):
    from edgepack.runtime.images import read_image

    img = np.zeros((60, 100, 3), np.uint8)  # landscape: red bands left and right, a grey centre square
    img[:, :20] = img[:, 80:] = (255, 0, 0)
    img[:, 20:80] = (90, 90, 90)
    small = read_image(_png(tmp_path / "wide.png", img))
    assert small.shape == (32, 32, 3) and small.dtype == np.uint8
    assert np.all(small == 90)  # only the centred 60x60 square is kept
    rgba = np.dstack([np.full((40, 40, 3), 7, np.uint8), np.zeros((40, 40), np.uint8)])
    assert np.all(read_image(_png(tmp_path / "rgba.png", rgba)) == 7)  # alpha dropped
    gray = read_image(_png(tmp_path / "gray.png", np.full((32, 32), 50, np.uint8)))
    assert gray.shape == (32, 32, 3) and np.all(gray == 50)


def test_predict_cli_bad_files_get_one_line(exported, tiny_ds, tmp_path, capsys, monkeypatch):
    model = exported["tflite-fp32"]
    text = _write(tmp_path / "notes.png", b"just text, not an image\n")
    truncated = _write(tmp_path / "cut.png", _png(tmp_path / "ok.png", tiny_ds.x_test[0]).read_bytes()[:60])
    pickled = tmp_path / "obj.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((2, 3, 32, 32), np.uint8))
    cases = {text: "not a PNG, JPEG or .npy file", tmp_path / "nope.jpg": "file not found",
             truncated: "not a readable image", pickled: "not a readable .npy image array",
             wrong: "expected images of shape (N, 32, 32, 3)", tmp_path: "is a folder"}
    for path, message in cases.items():
        code, out, err = _cli(capsys, "predict", model, tmp_path / "ok.png", path)
        assert code == 1 and out == "", path
        assert err.startswith(f"edgepack: error: {path}") and message in err and err.count("\n") == 1, err
    code, _, err = _cli(capsys, "predict", tmp_path / "missing.onnx", tmp_path / "ok.png")
    assert code == 1 and "missing.onnx not found" in err
    code, _, err = _cli(capsys, "predict", model, tmp_path / "ok.png", "--top-k", "11")
    assert code == 1 and "--top-k must be from 1 to 10, got 11" in err
    monkeypatch.setitem(sys.modules, "PIL", None)  # Pillow not installed
    code, _, err = _cli(capsys, "predict", model, tmp_path / "ok.png")
    assert code == 1 and "pip install 'edgepack[images]'" in err and err.count("\n") == 1


# --- edgepack bench and the example

def test_bench_rows_and_failed_file(exported, tmp_path, capsys):
    from edgepack.bench import bench, render

    bad = _write(tmp_path / "bad.onnx", b"nonsense")
    result = bench([exported["onnx-int8"], exported["tflite-int8"], bad], runs=20, warmup=2, import_repeats=1)
    ok, failed = result["files"][:2], result["files"][2]
    assert [r["format"] for r in ok] == ["onnx-int8", "tflite-int8"]
    assert all(r["status"] == "ok" and r["edgepack"]["p50_ms"] > 0 and r["ratio_p50"] > 0 for r in ok)
    assert failed["status"] == "error" and "bad.onnx" in failed["error"]
    assert result["import"]["status"] == "ok" and result["import"]["tensorflow_imported"] is False
    table = render(result)
    assert "tflite-int8" in table and "error: ModelFileError" in table and "tensorflow imported: no" in table
    code, out, _ = _cli(capsys, "bench", exported["tflite-fp32"], "--runs", "10", "--warmup", "1",
                        "--import-repeats", "1", "--json")
    assert code == 0 and json.loads(out)["files"][0]["raw"]["runs"] == 10
    code, out, _ = _cli(capsys, "bench", bad, "--runs", "5", "--import-repeats", "1")
    assert code == 1 and "error" in out


def test_bench_kernel_choices_and_threads(exported, capsys):
    """A row per file, kernel choice and thread count; .onnx files have no no-xnnpack choice; the
    header names the CPU's int8 paths."""
    code, out, _ = _cli(capsys, "bench", exported["tflite-int8"], exported["onnx-int8"], "--runs", "10",
                        "--warmup", "1", "--import-repeats", "1", "--kernels", "default", "no-xnnpack",
                        "--threads", "1", "2", "--json")
    result = json.loads(out)
    assert code == 0 and all(r["status"] == "ok" for r in result["files"])
    assert [(r["format"], r["kernels"], r["threads"]) for r in result["files"]] == [
        ("tflite-int8", "default", 1), ("tflite-int8", "default", 2), ("tflite-int8", "no-xnnpack", 1),
        ("tflite-int8", "no-xnnpack", 2), ("onnx-int8", "default", 1), ("onnx-int8", "default", 2)]
    assert set(result["device"]["cpu"]["int8_paths"]) == {"isa", "onnxruntime", "litert"}
    from edgepack.bench import render

    assert "int8 paths (" in render(result) and "no-xnnpack" in render(result)


def test_reference_kernels_equal_independent_references(exported, tiny_ds, tmp_path):
    """kernels="reference" is the file's own arithmetic: ONNX Runtime without graph optimizations gives
    onnx.reference's outputs (the ONNX spec in numpy, opset 19 copy of the file), and LiteRT's
    BUILTIN_REF kernels differ from XNNPACK by at most a few int8 steps (rounding of requantization)."""
    import onnx
    from onnx import version_converter
    from onnx.reference import ReferenceEvaluator

    x = tiny_ds.x_test[:4]
    path19 = tmp_path / "o19.onnx"
    onnx.save(version_converter.convert_version(onnx.load(str(exported["onnx-int8"])), 19), str(path19))
    want = ReferenceEvaluator(str(path19)).run(None, {"image": (x / 255.0).astype(np.float32)})[0]
    got = runtime.load(exported["onnx-int8"], kernels="reference").predict(x)
    np.testing.assert_allclose(got, want, atol=1e-5)
    clf = runtime.load(exported["tflite-int8"], kernels="reference")
    step = clf.metadata.output_quantization["scale"]
    xnnpack = runtime.load(exported["tflite-int8"]).predict(x)
    assert np.max(np.abs(clf.predict(x) - xnnpack)) <= 3 * step + 1e-7
    with pytest.raises(ValueError, match="kernels must be one of default, reference for .onnx"):
        runtime.load(exported["onnx-int8"], kernels="no-xnnpack")


def test_example_app_classifies_images(exported, tiny_ds, tmp_path):
    pngs = [_png(tmp_path / f"img{i}.png", tiny_ds.x_test[i]) for i in range(3)]
    app = ROOT / "examples" / "classify_app.py"
    done = subprocess.run([sys.executable, str(app), str(exported["onnx-fp32"]), *map(str, pngs)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    top = runtime.load(exported["onnx-fp32"]).classify(tiny_ds.x_test[:3], top_k=2)
    assert done.stdout.splitlines() == [
        f"{p}: {t[0].label} ({t[0].score:.0%}), {t[1].label} ({t[1].score:.0%})"
        for p, t in zip(pngs, top, strict=True)]


# --- real data

@pytest.mark.real
def test_runtime_equals_the_engines_on_real_test_images(exported, real_cifar):
    """Every exported format on 2,000 real test images: the runtime's probabilities are bit-identical
    to the bare engines' (TFLite: one image per invoke; the runtime batches 256 per invoke).
    (The tiny model is trained on synthetic images: what is checked is the runtime, not accuracy.)"""
    from edgepack.data import balanced_subset

    x = real_cifar.x_test[balanced_subset(real_cifar.y_test, 2000, 1)]
    for name, path in exported.items():
        probs = runtime.load(path).predict(x)
        np.testing.assert_array_equal(probs, direct(path, x), err_msg=name)
        assert np.ptp(probs, axis=0).max() > 0.01, name  # outputs vary with the image


@pytest.mark.parametrize("spec", ["symmetric", "raw", "mean-std:125,123,114/63,62,66"])
def test_pixel_path_is_the_full_spec_formula(exported, tiny_ds, tmp_path, spec):
    """Offset and per-channel mean/std are applied (float and int8 inputs), exactly as scale_pixels."""
    from edgepack.runtime.preprocess import parse, scale_pixels

    x = tiny_ds.x_test
    for name in ("tflite-fp32", "tflite-int8-int8"):
        path = _write(tmp_path / f"{name}.tflite", exported[name].read_bytes())
        meta = json.loads(md.sidecar_path(exported[name]).read_text())
        md.sidecar_path(path).write_text(json.dumps({**meta, "pixel_scaling": parse(spec)}))
        clf = runtime.load(path)
        want = scale_pixels(x, parse(spec))
        q = meta["input_quantization"]
        if q:
            want = np.round(want / np.float32(q["scale"])) + q["zero_point"]
            want = np.clip(want, -128, 127).astype(np.int8)
        np.testing.assert_array_equal(clf.prepare(x), want, err_msg=f"{name} {spec}")


def test_uint8_input_is_the_pixels_and_bgr_is_reordered(exported, tiny_ds, tmp_path):
    x = tiny_ds.x_test
    path = _write(tmp_path / "u8.tflite", exported["tflite-int8"].read_bytes())
    meta = json.loads(md.sidecar_path(exported["tflite-int8"]).read_text())
    q = {"scale": float(np.float32(1 / 255)), "zero_point": 0}  # what calibration on 0..255 pixels gives
    md.sidecar_path(path).write_text(json.dumps({**meta, "input_quantization": q}))
    np.testing.assert_array_equal(runtime.load(path).prepare(x), x)
    for name in ("tflite-int8", "onnx-fp32"):
        clf = runtime.load(exported[name])
        np.testing.assert_array_equal(clf.predict(x[..., ::-1], channel_order="BGR"), clf.predict(x))
        assert clf.classify(x[:1, ..., ::-1], channel_order="BGR") == clf.classify(x[:1])
    with pytest.raises(runtime.InputError, match="channel_order must be one of RGB, BGR, got 'bgr'"):
        clf.predict(x, channel_order="bgr")
