"""Export: every format round-trips on a tiny run, carries its metadata, and bad exports fail.

The quantised formats' check (top-1 agreement >= 97%) needs a model with clear margins: the shared
tiny run (one epoch on classes that differ by overlapping brightness) predicts near-ties that int8
rounding flips. So the round trips use a tiny set of 10 well-separated colours and a model trained
to 100% on it; the error cases use the shared `tiny_run`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASS_NAMES, NO_INT8_GATE, batch_bytes, meta_bytes, write_archive

from edgepack.cli import main
from edgepack.errors import EdgepackError
from edgepack.export import FORMATS, SUMMARY, export
from edgepack.runtime import metadata

CHECK = 200  # test images in the colour archive
COLOURS = np.array([[r, g, b] for r in (0, 200) for g in (0, 200) for b in (0, 200)]
                   + [[100, 100, 100], [200, 100, 0]])  # one per class, far apart


def colour_members(per_batch: int = 40, n_test: int = CHECK, seed: int = 0) -> dict[str, bytes]:
    """Batch files of a tiny set whose classes are 10 distinct colours plus noise."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = np.arange(n) % 10
        return (COLOURS[y][:, None, None, :] + rng.integers(0, 50, (n, 32, 32, 3))).astype(np.uint8), y

    members = {"batches.meta": meta_bytes()}
    for i in range(1, 6):
        members[f"data_batch_{i}"] = batch_bytes(*make(per_batch))
    members["test_batch"] = batch_bytes(*make(n_test))
    return members


@pytest.fixture(scope="module")
def tiny_ds(tmp_path_factory):
    from edgepack.data import load_data

    return load_data(write_archive(tmp_path_factory.mktemp("colours") / "cifar-10-python.tar.gz",
                                      colour_members()))


@pytest.fixture(scope="module")
def clear_run(tiny_ds, tmp_path_factory) -> Path:
    """A baseline run folder trained to clear margins on the colour set (8 epochs, a few seconds)."""
    from edgepack.train import TrainConfig, train

    run = train(None, tmp_path_factory.mktemp("runs") / "colours", TrainConfig(epochs=8, batch_size=16),
                ds=tiny_ds)
    assert json.loads((run / "metrics.json").read_text())["accuracy"] >= 0.95
    return run


@pytest.fixture(scope="module")
def exported(clear_run, tiny_ds, tmp_path_factory) -> tuple[Path, dict]:
    """One export of every format, shared by the tests below."""
    out = tmp_path_factory.mktemp("export") / "all"
    return out, export(clear_run, ["all"], out, check_images=CHECK, ds=tiny_ds)


@pytest.fixture(scope="module")
def source_probs(clear_run, tiny_ds) -> tuple[np.ndarray, np.ndarray]:
    """Float32 test images of the tiny set and the source Keras model's probabilities."""
    from edgepack import rundir
    from edgepack.model import load_run_model, predict_proba
    from edgepack.runtime.preprocess import scale_pixels

    x = scale_pixels(tiny_ds.x_test)
    return x, predict_proba(load_run_model(rundir.load_run(clear_run)), x)


def run_file(path: Path, x: np.ndarray) -> np.ndarray:
    """Run an exported file the way an app would, independently of edgepack's export code."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return s.run(None, {"image": x})[0]
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    out = []
    for image in x:  # batch 1, as the file was converted
        it.allocate_tensors()
        feed = image[None]
        if i["dtype"] != np.float32:
            s, z = i["quantization"]
            info = np.iinfo(i["dtype"])  # int8 or uint8 input
            feed = np.clip(np.round(feed / s) + z, info.min, info.max).astype(i["dtype"])
        it.set_tensor(i["index"], feed)
        it.invoke()
        y = it.get_tensor(o["index"])[0]
        if o["dtype"] != np.float32:
            s, z = o["quantization"]
            y = (y.astype(np.float32) - z) * s
        out.append(y)
    return np.array(out, dtype=np.float32)


def read_meta(path: Path) -> dict:
    """The file's edgepack metadata as JSON, read without the runtime and checked by FileMetadata."""
    if path.suffix == ".onnx":
        import onnx

        text = {p.key: p.value for p in onnx.load(str(path)).metadata_props}[metadata.ONNX_KEY]
    else:
        text = metadata.sidecar_path(path).read_text()
    assert metadata.FileMetadata.from_json(text, str(path)) == metadata.read(path)
    return json.loads(text)


def test_every_format_round_trips(exported, source_probs, clear_run):
    from edgepack import rundir
    from edgepack.model import load_run_model, predict_proba, with_weights

    out, summary = exported
    x, ref = source_probs
    model = load_run_model(rundir.load_run(clear_run))
    assert list(summary["formats"]) == list(FORMATS)
    for name, fmt in FORMATS.items():
        path = out / fmt.filename
        probs = run_file(path, x)
        assert probs.shape == ref.shape, name
        if fmt.check.weights:  # the source with its weights rounded as the file stores them
            rounded = with_weights(model, [w.astype(fmt.check.weights).astype(w.dtype)
                                           for w in model.get_weights()])
            assert np.max(np.abs(probs - predict_proba(rounded, x))) <= fmt.check.threshold, name
            assert np.max(np.abs(probs - ref)) <= 1e-2, name  # and close to the source itself
        elif not fmt.check.quantized:
            assert np.max(np.abs(probs - ref)) <= fmt.check.threshold, name
        else:  # this CPU's kernels, run by hand: the default rules hold here too (clear margins)
            assert np.mean(probs.argmax(1) == ref.argmax(1)) >= 0.95, name
            labels = np.arange(len(x)) % 10
            drop = np.mean(ref.argmax(1) == labels) - np.mean(probs.argmax(1) == labels)
            assert drop <= 0.01, name


def test_export_json_describes_each_file(exported):
    out, summary = exported
    assert json.loads((out / SUMMARY).read_text()) == json.loads(json.dumps(summary))
    for name, fmt in FORMATS.items():
        r = summary["formats"][name]
        assert r["file"] == fmt.filename and r["status"] == "ok" and r["seconds"] > 0
        assert r["bytes"] == (out / r["file"]).stat().st_size
        assert 0 < r["gzip_bytes"] < r["bytes"]
        c = r["checks"]
        assert (c["rule"], c["passed"], c["refused_by"], c["images"]) == (
            fmt.check.describe(r["options"]), True, None, CHECK)
        assert c["loads_in"] in ("ai_edge_litert", "onnxruntime")
        if fmt.check.quantized:  # judged on the reference kernels; this CPU's figures beside them
            assert c["kernels"] == "reference" and c["local"]["images"] == CHECK
            assert c["kernel_gap_points"] == pytest.approx(100 * (c["accuracy"] - c["local"]["accuracy"]))
            assert c["kernel_path"]
        else:
            assert c["kernels"] == "default" and c["max_abs_diff"] <= fmt.check.threshold
            assert ("vs_source" in c) == bool(fmt.check.weights)  # the rounding's own cost, beside
    assert summary["formats"]["onnx-fp32"]["checks"]["onnx_checker"] == "passed"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [SUMMARY] + [f.filename for f in FORMATS.values()]
        + [f.filename + ".json" for f in FORMATS.values() if f.suffix == ".tflite"]
        + [f.filename + ".golden.npz" for f in FORMATS.values()])  # edgepack.runtime.golden


def test_a_file_that_stores_rounded_weights_is_judged_against_the_rounded_source(monkeypatch):
    """tflite-fp16 must compute the source with float16 weights (within 1e-4); what the rounding costs
    against the source itself (here 0.02 on one image) is recorded, not judged."""
    from edgepack.export import core

    x, labels = np.zeros((3, 2, 2, 3), np.float32), np.array([0, 1, 0])
    source = np.array([[0.6, 0.4], [0.3, 0.7], [0.8, 0.2]], np.float32)
    rounded = source + np.array([[-0.02, 0.02], [0, 0], [0, 0]], np.float32)
    for got, passed in ((rounded + 1e-6, True), (rounded + np.float32(1e-3), False)):
        file = type("File", (), {"predict": lambda self, x, got=got: got})()
        monkeypatch.setattr(core.runtime, "load", lambda path, file=file: file)
        checks = core.check_file(FORMATS["tflite-fp16"], Path("f.tflite"), x, labels, source, {}, rounded)
        assert checks["passed"] is passed
        assert checks["rule"].endswith("against the source with float16 weights")
        assert checks["vs_source"]["max_abs_diff"] == pytest.approx(0.02 + (0 if passed else 1e-3), abs=2e-6)
        assert passed or checks["refused_by"].startswith("max_abs_diff 0.001 > 0.0001 against the source")


def test_int8_files_are_under_30_percent_of_fp32(exported):
    formats = exported[1]["formats"]
    for family in ("tflite", "onnx"):
        assert formats[f"{family}-int8"]["bytes"] <= 0.30 * formats[f"{family}-fp32"]["bytes"]


def test_metadata_is_present_and_right(exported, clear_run):
    from ai_edge_litert.interpreter import Interpreter

    from edgepack import __version__
    from edgepack.runtime.preprocess import PIXEL_SCALING

    out, summary = exported
    run_meta = json.loads((clear_run / "metadata.json").read_text())
    for name, fmt in FORMATS.items():
        meta = read_meta(out / fmt.filename)
        assert meta["format"] == name
        assert meta["class_names"] == CLASS_NAMES
        assert meta["input_shape"] == [32, 32, 3]
        assert meta["pixel_scaling"] == PIXEL_SCALING
        assert meta["source_sha256"] == run_meta["model_sha256"] == summary["source_sha256"]
        assert (meta["technique"], meta["variant"]) == ("baseline", "baseline")
        assert meta["edgepack_version"] == __version__
        assert meta["schema_version"] == metadata.SCHEMA_VERSION == 2
        assert (meta["layout"], meta["channel_order"]) == ("NHWC", "RGB")
        assert meta["resize"] == {"crop": "centre square", "filter": "bilinear", "antialias": True,
                                  "library": "Pillow", "same_size": "used pixel for pixel"}
        assert "source_model_sha256" not in meta
        if name != "tflite-int8":
            assert meta["input_dtype"] == "float32"
            assert meta["input_quantization"] is None and meta["output_quantization"] is None
    # The int8 file's scale and zero point are the interpreter's own.
    meta = read_meta(out / "tflite-int8.tflite")
    it = Interpreter(model_path=str(out / "tflite-int8.tflite"))
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    assert meta["input_dtype"] == "uint8" and i["dtype"] == np.uint8  # the default: the Task Library's
    assert meta["input_quantization"]["zero_point"] == 0
    assert (meta["input_quantization"]["scale"], meta["input_quantization"]["zero_point"]) == pytest.approx(
        i["quantization"])
    assert (meta["output_quantization"]["scale"], meta["output_quantization"]["zero_point"]) == pytest.approx(
        o["quantization"])


def test_onnx_has_named_input_and_dynamic_batch(exported):
    import onnx

    for name in ("onnx-fp32", "onnx-int8"):
        model = onnx.load(str(exported[0] / f"{name}.onnx"))
        onnx.checker.check_model(model)
        (inp,) = model.graph.input
        assert inp.name == "image"
        dims = inp.type.tensor_type.shape.dim
        assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [32, 32, 3]
        assert any(op.domain in ("", "ai.onnx") and op.version == 17 for op in model.opset_import)
    ops = {n.op_type for n in onnx.load(str(exported[0] / "onnx-int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format


def test_portable_int8_cannot_saturate_and_full_range_can(exported, clear_run, tiny_ds, tmp_path):
    """The file property behind "exact on every CPU", read from the files (no CPU involved): the default
    (portable) file of this clear model is the first scheme tried, whose weights stay within [-64, 64],
    so no u8*s8 pair sum leaves int16 (2*255*64 = 32640); full-range weights reach 127, which
    VPMADDUBSW kernels (x86-64 without VNNI) can saturate."""
    from edgepack.export.to_onnx import weight_range

    meta = read_meta(exported[0] / "onnx-int8.onnx")
    scheme = meta["int8_scheme"]
    assert (scheme["name"], scheme["weight_bits"], scheme["saturation_free"]) == ("s8s8-7bit", 7, True)
    assert exported[1]["formats"]["onnx-int8"]["trials"][0]["passed"] and "refused_before" not in scheme
    assert 32 < scheme["max_abs_weight"] <= 64
    assert scheme["max_abs_weight"] == weight_range(exported[0] / "onnx-int8.onnx")["max_abs_weight"]
    assert "without VNNI" in scheme["accurate_on"] and meta["runs_in"][0] == "onnxruntime"
    s = export(clear_run, "onnx-int8", tmp_path / "full", options={"scheme": "full-range"},
               check_images=CHECK, ds=tiny_ds)
    full = read_meta(tmp_path / "full" / "onnx-int8.onnx")["int8_scheme"]
    assert (full["weight_bits"], full["saturation_free"]) == (8, False) and full["max_abs_weight"] > 64
    assert "NOT x86-64 without VNNI" in full["accurate_on"] and not full["portable"]
    assert s["formats"]["onnx-int8"]["options"]["scheme"] == "full-range"
    assert "trials" not in s["formats"]["onnx-int8"]  # one scheme asked: one file tried


def test_opset_19_runs_in_onnx_reference(clear_run, tiny_ds, tmp_path):
    """onnx.reference implements DequantizeLinear from opset 19: the default opset-17 file does not run
    there, the opset-19 one does and gives ONNX Runtime's outputs (both checked at export)."""
    s = export(clear_run, "onnx-int8", tmp_path / "o19", options={"opset": 19}, check_images=CHECK,
               ds=tiny_ds)
    meta = read_meta(tmp_path / "o19" / "onnx-int8.onnx")
    assert meta["opset"] == 19 and "onnx.reference" in meta["runs_in"]
    assert s["formats"]["onnx-int8"]["checks"]["passed"]


def test_default_opset_17_int8_is_said_not_to_run_in_onnx_reference(exported):
    meta = read_meta(exported[0] / "onnx-int8.onnx")
    assert meta["opset"] == 17 and "onnx.reference" not in meta["runs_in"]
    assert "opset=19" in meta["does_not_run_in"]["onnx.reference"]
    assert "onnx.reference" in read_meta(exported[0] / "onnx-fp32.onnx")["runs_in"]


def test_single_format_with_options(clear_run, tiny_ds, tmp_path):
    out = tmp_path / "one"
    s = export(clear_run, "tflite-int8", out, options={"io": "float", "calibration_images": "50"},
               check_images=CHECK, ds=tiny_ds)
    assert list(s["formats"]) == ["tflite-int8"]
    assert s["formats"]["tflite-int8"]["options"] == {"calibration_images": 50, "io": "float",
                                                      "keep_float": "", "max_drop": 1.0,
                                                      "min_agreement": 0.95}
    assert read_meta(out / "tflite-int8.tflite")["input_dtype"] == "float32"


def _perturb_onnx(real):
    """A converter that changes a weight after conversion (a deliberately broken export)."""
    def convert(ctx, path):
        import onnx
        from onnx import numpy_helper

        real(ctx, path)
        model = onnx.load(str(path))
        init = max(model.graph.initializer, key=lambda t: np.prod(t.dims) if len(t.dims) == 1 else 0)
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 1.0, init.name))  # a bias
        onnx.save(model, str(path))
    return convert


def _perturb_keras(real):
    """A converter that converts a model whose weights differ from the source's."""
    def convert(ctx, path):
        model = ctx.model
        weights = model.get_weights()
        weights[-1] = weights[-1] + np.eye(weights[-1].size, dtype=np.float32)[0] * 100  # always class 0
        clone = type(model).from_config(model.get_config())
        clone.set_weights(weights)
        real(dataclasses.replace(ctx, model=clone), path)
    return convert


@pytest.mark.parametrize("name, breaker, rule", [
    ("onnx-fp32", _perturb_onnx, r"max_abs_diff [0-9.e+-]+ > 0.0001"),
    ("tflite-fp32", _perturb_keras, r"max_abs_diff [0-9.e+-]+ > 0.0001"),
    ("tflite-int8", _perturb_keras, r"accuracy fell [0-9.]+ points .* allowed 1 \(option max_drop\); "
                                    r"top-1 agreement [0-9.]+ < 0.95 \(option min_agreement\)"),
])
def test_broken_export_fails_and_leaves_nothing(clear_run, tiny_ds, tmp_path, monkeypatch, name, breaker,
                                                rule):
    fmt = FORMATS[name]
    monkeypatch.setitem(FORMATS, name, dataclasses.replace(fmt, convert=breaker(fmt.convert)))
    out = tmp_path / "broken"
    with pytest.raises(EdgepackError, match=rf"{name}: check failed on {CHECK} check images: {rule}") as e:
        export(clear_run, [name], out, check_images=CHECK, ds=tiny_ds)
    assert "\n" not in str(e.value)
    assert not out.exists() and not [p for p in tmp_path.iterdir()]  # no temporary folder either


def _tiny_qat_run(folder: Path, source: Path, tiny_ds):
    """A run folder holding a QAT model fine-tuned from `source` (saved as compress does: .h5)."""
    import tensorflow_model_optimization as tfmot

    from edgepack import rundir
    from edgepack.fitting import evaluate
    from edgepack.model import compile_model, load_run_model, save_model
    from edgepack.runtime.preprocess import scale_pixels
    from edgepack.train import data_metadata, seed_everything

    seed_everything(0)
    model = tfmot.quantization.keras.quantize_model(load_run_model(rundir.load_run(source)))
    compile_model(model, learning_rate=1e-4)
    model.fit(scale_pixels(tiny_ds.x_train), tiny_ds.y_train, epochs=1, batch_size=16, verbose=0)
    folder.mkdir()
    save_model(model, folder / "model.h5")
    rundir.write_run_files(folder, {"kind": "compress", "technique": "qat", "variant": "qat",
                                    "model_file": "model.h5", "model_format": "keras-qat-h5",
                                    **data_metadata(tiny_ds)}, evaluate(model, tiny_ds)[0])
    return folder, model


def test_qat_source_exports_integer_formats_without_calibration(clear_run, tiny_ds, tmp_path):
    from edgepack.export import to_tflite
    from edgepack.export.context import Context

    run, model = _tiny_qat_run(tmp_path / "qat", clear_run, tiny_ds)

    def no_calibration(n):
        raise AssertionError("a QAT model must convert to int8 TFLite without a calibration sample")

    ctx = Context(model, {"calibration_images": 500, "io": "int8"}, no_calibration, qat=True,
                  scratch=tmp_path)
    to_tflite.int8(ctx, tmp_path / "direct.tflite")

    # Through export(): float formats do not apply to a QAT model; refused by name, left out of `all`.
    with pytest.raises(EdgepackError, match="tflite-fp32 does not apply to a QAT/PQAT model"):
        export(run, ["tflite-fp32", "tflite-int8"], tmp_path / "refused", check_images=CHECK, ds=tiny_ds)
    s = export(run, "all", tmp_path / "all", check_images=CHECK, ds=tiny_ds)
    assert s["qat_source"] is True
    assert list(s["formats"]) == ["tflite-dynamic", "tflite-int8", "onnx-int8"]
    assert sorted(s["skipped"]) == ["onnx-fp32", "tflite-fp16", "tflite-fp32"]
    meta = read_meta(tmp_path / "all" / "tflite-int8.tflite")
    assert (meta["technique"], meta["input_dtype"]) == ("qat", "uint8")  # io=uint8, the default
    for name in s["formats"]:  # int8 kernels, not a ~500 KB float model
        assert s["formats"][name]["bytes"] < 150_000, name


def test_check_thresholds_are_the_users(clear_run, tiny_ds, tmp_path, monkeypatch):
    """The rules' thresholds are options: a broken file passes when the user allows it, and each rule
    that refuses is named on its own."""
    fmt = FORMATS["tflite-int8"]
    monkeypatch.setitem(FORMATS, "tflite-int8", dataclasses.replace(fmt, convert=_perturb_keras(fmt.convert)))
    s = export(clear_run, "tflite-int8", tmp_path / "allowed", options=NO_INT8_GATE, check_images=CHECK,
               ds=tiny_ds)
    c = s["formats"]["tflite-int8"]["checks"]
    assert c["passed"] and c["top1_agreement"] < 0.5 and c["drop_points"] > 50
    refused = r"images: top-1 agreement [0-9.]+ < 0.5 \(option min_agreement\);"
    with pytest.raises(EdgepackError, match=refused):
        export(clear_run, "tflite-int8", tmp_path / "agreement", check_images=CHECK, ds=tiny_ds,
               options={"max_drop": 100, "min_agreement": 0.5})
    with pytest.raises(EdgepackError, match="option max_drop: must be a number from 0 to 100, got '-1'"):
        export(clear_run, "tflite-int8", tmp_path / "bad", options={"max_drop": "-1"}, ds=tiny_ds)
    with pytest.raises(EdgepackError, match="option min_agreement: must be a number from 0 to 1, got 'nan'"):
        export(clear_run, "tflite-int8", tmp_path / "bad", options={"min_agreement": "nan"}, ds=tiny_ds)


def test_kernel_note_says_which_side_lost():
    from edgepack.export.core import kernel_note

    assert kernel_note(0.4, True) is None
    assert kernel_note(7.5, True) == (
        "this CPU's int8 kernels lose 7.50 points against the file's exact reference; the file itself "
        "is fine (its exact reference passes the check)")
    assert "the file itself fails the check too" in kernel_note(2.0, False)


# --- errors, through the CLI: one line each, exit 1, nothing written

def _cli_error(capsys, *argv) -> str:
    assert main(["export", *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgepack: error: ") and "\n" not in err
    return err


def test_cli_errors(tiny_run, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["--model", str(tiny_run), "--out", str(out)]
    assert "unknown export format 'tflite-int4'" in _cli_error(capsys, *base, "--format", "tflite-int4")
    err = _cli_error(capsys, *base, "--format", "tflite-fp32", "--option", "io=float")
    assert "'io' is not accepted by tflite-fp32" in err and "tflite-int8" in err
    err = _cli_error(capsys, *base, "--format", "tflite-int8", "--option", "io=int4")
    assert "tflite-int8: option io: must be one of uint8, int8, float, got 'int4'" in err
    assert "must look like KEY=VALUE" in _cli_error(capsys, *base, "--format", "all", "--option", "opset")
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    shutil.copy(tiny_run / "model.keras", incomplete)
    assert "not a complete run folder" in _cli_error(capsys, "--model", str(incomplete), "--out", str(out),
                                                     "--format", "onnx-fp32")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_run, corrupt)
    (corrupt / "model.keras").write_bytes(b"PK\x03\x04 not really a zip")
    assert "changed or corrupt" in _cli_error(capsys, "--model", str(corrupt), "--out", str(out),
                                              "--format", "onnx-fp32")
    meta = json.loads((corrupt / "metadata.json").read_text())
    del meta["model_sha256"]  # no recorded hash: the loader itself must refuse the file
    (corrupt / "metadata.json").write_text(json.dumps(meta))
    assert "cannot load model" in _cli_error(capsys, "--model", str(corrupt), "--out", str(out),
                                             "--format", "onnx-fp32")
    assert not out.exists()


def test_cli_exports_and_refuses_existing_output(tiny_run, tiny_archive, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["export", "--model", str(tiny_run), "--format", "onnx-fp32", "--data", str(tiny_archive),
            "--check-images", "20", "--out", str(out)]
    assert main(argv) == 0
    assert "onnx-fp32" in capsys.readouterr().out
    assert (out / "onnx-fp32.onnx").is_file()
    assert "already exists" in _cli_error(capsys, *argv[1:])


def test_help_lists_every_format(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = capsys.readouterr().out
    assert "example:" in text and all(name in text for name in FORMATS)


@pytest.mark.real
@pytest.mark.slow
def test_int8_accuracy_on_real_data(real_data, real_cifar, tmp_path):
    """A baseline trained in-test on 5,000 real images: int8 files within 1 point, <= 30% of fp32."""
    from edgepack.train import TrainConfig, train

    run = train(real_data, tmp_path / "run", TrainConfig(epochs=4), ds=_subset(real_cifar))
    s = export(run, ["tflite-fp32", "tflite-int8", "onnx-fp32", "onnx-int8"], tmp_path / "out",
               check_images=2000, ds=real_cifar)
    f = s["formats"]
    for family in ("tflite", "onnx"):
        c = f[f"{family}-int8"]["checks"]
        assert c["images"] == 2000
        # Within 1 point by the exact reference (the file, any CPU) and by this CPU's kernels.
        assert abs(c["accuracy"] - c["source_accuracy"]) <= 0.01, (family, c)
        assert abs(c["local"]["accuracy"] - c["source_accuracy"]) <= 0.01, (family, c)
        assert f[f"{family}-int8"]["bytes"] <= 0.30 * f[f"{family}-fp32"]["bytes"]
    assert s["check"]["source_accuracy"] > 0.3  # the model learned something: the check means something


def _subset(ds):
    from edgepack.data import balanced_subset

    idx = balanced_subset(ds.y_train, 5000, 0)
    return dataclasses.replace(ds, x_train=ds.x_train[idx], y_train=ds.y_train[idx])


def test_tflite_files_carry_standard_metadata(exported):
    """Labels, RGB and normalization as the TFLite Task Library reads them (its schema, M001)."""
    from ai_edge_litert.interpreter import Interpreter

    from edgepack.export import tflite_metadata

    out, _ = exported
    for name, fmt in FORMATS.items():
        if fmt.suffix != ".tflite":
            continue
        std = tflite_metadata.read((out / fmt.filename).read_bytes())
        assert std["labels"] == CLASS_NAMES and std["label_file"] == "labels.txt", name
        assert (std["mean"], std["std"]) == ([0.0] * 3, [255.0] * 3), name  # pixels / 255
        assert std["color_space"] == 1 and std["content_type"] == 2, name  # RGB ImageProperties
        Interpreter(model_path=str(out / fmt.filename)).allocate_tensors()  # the zip is ignored


def test_tflite_normalization_follows_the_pixel_scaling():
    from edgepack.export.tflite_metadata import normalization
    from edgepack.runtime.preprocess import parse

    def meta(spec):
        return metadata.FileMetadata("tflite-fp32", tuple("abc"), (8, 8, 3), "float32", parse(spec), "0" * 64,
                                     "baseline", "baseline", "0")

    assert normalization(meta("symmetric")) == ([127.5] * 3, [127.5] * 3)
    assert normalization(meta("raw")) == ([0.0] * 3, [1.0] * 3)
    assert normalization(meta("mean-std:125,123,114/63,62,66")) == ([125.0, 123.0, 114.0], [63.0, 62.0, 66.0])


def test_all_keeps_the_formats_that_passed(clear_run, tiny_ds, tiny_run, tiny_archive, tmp_path, monkeypatch,
                                           capsys):
    fmt = FORMATS["onnx-fp32"]
    monkeypatch.setitem(FORMATS, "onnx-fp32", dataclasses.replace(fmt, convert=_perturb_onnx(fmt.convert)))
    out = tmp_path / "some"
    s = export(clear_run, ["tflite-fp32", "onnx-fp32"], out, check_images=CHECK, ds=tiny_ds)
    assert s["failed"] == ["onnx-fp32"] and s["formats"]["tflite-fp32"]["status"] == "ok"
    bad = s["formats"]["onnx-fp32"]
    assert bad["status"] == "error" and "check failed" in bad["error"] and bad["file"] is None
    assert json.loads((out / SUMMARY).read_text())["failed"] == ["onnx-fp32"]
    assert sorted(p.name for p in out.iterdir()) == [
        SUMMARY, "tflite-fp32.tflite", "tflite-fp32.tflite.golden.npz", "tflite-fp32.tflite.json"]
    argv = ["export", "--model", str(tiny_run), "--format", "tflite-fp32", "onnx-fp32", "--data",
            str(tiny_archive), "--check-images", "20", "--out", str(tmp_path / "cli")]
    assert main(argv) == 1
    assert "failed: onnx-fp32" in capsys.readouterr().out
    assert (tmp_path / "cli" / "tflite-fp32.tflite").is_file()


def test_a_full_disk_still_stops_everything(clear_run, tiny_ds, tmp_path, monkeypatch):
    def full(ctx, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(FORMATS, "onnx-fp32", dataclasses.replace(FORMATS["onnx-fp32"], convert=full))
    with pytest.raises(OSError):
        export(clear_run, ["tflite-fp32", "onnx-fp32"], tmp_path / "full", check_images=CHECK, ds=tiny_ds)
    assert list(tmp_path.iterdir()) == []


def _break_schemes(real, broken: set[str]):
    """onnx-int8's converter, converting a model that always says class 0 for the schemes in `broken`."""
    def convert(ctx, path):
        if ctx.options["scheme"] not in broken:
            return real(ctx, path)
        model = ctx.model
        weights = model.get_weights()
        weights[-1] = weights[-1] + np.eye(weights[-1].size, dtype=np.float32)[0] * 100
        clone = type(model).from_config(model.get_config())
        clone.set_weights(weights)
        real(dataclasses.replace(ctx, model=clone, cache={}), path)  # its own fp32 ONNX, not the shared one
    return convert


def test_portable_falls_back_to_the_next_scheme_and_records_why(clear_run, tiny_ds, tmp_path, monkeypatch):
    """A file refused under s8s8-7bit: the u8u8 file is kept, and export.json and the file say why."""
    from edgepack.export.to_onnx import weight_range

    fmt = FORMATS["onnx-int8"]
    monkeypatch.setitem(FORMATS, "onnx-int8", dataclasses.replace(fmt, convert=_break_schemes(fmt.convert,
                                                                                                {"s8s8-7bit"})))
    out = tmp_path / "o"
    entry = export(clear_run, "onnx-int8", out, check_images=CHECK, ds=tiny_ds)["formats"]["onnx-int8"]
    assert entry["status"] == "ok" and entry["options"]["scheme"] == "u8u8" and entry["checks"]["passed"]
    refused, kept = entry["trials"]
    assert refused["options"] == {"scheme": "s8s8-7bit"} and not refused["passed"]
    assert "(option max_drop)" in refused["refused_by"] and refused["top1_agreement"] < 0.95
    assert kept["options"] == {"scheme": "u8u8"} and kept["passed"] and kept["refused_by"] is None
    scheme = read_meta(out / "onnx-int8.onnx")["int8_scheme"]
    assert (scheme["name"], scheme["weights"], scheme["activations"]) == ("u8u8", "uint8", "uint8")
    assert scheme["saturation_free"] and scheme["portable"] and scheme["max_abs_weight"] is None
    assert scheme["uint8_weights"] == weight_range(out / "onnx-int8.onnx")["uint8_weights"] > 0
    assert scheme["refused_before"][0]["scheme"] == "s8s8-7bit"
    assert read_meta(out / "onnx-int8.onnx")["options"]["scheme"] == "u8u8"  # re-exporting makes this file


def test_uint8_weights_with_int8_activations_are_not_called_saturation_free(tmp_path):
    """weight_range's proof, read from a hand-made file: uint8 weights are safe only beside uint8
    activations (U8U8 kernels); an int8 weight beyond 64 is not."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgepack.export.to_onnx import weight_range

    def model(weight: np.ndarray, act_zp: np.ndarray) -> Path:
        inits = [numpy_helper.from_array(weight, "w_q"), numpy_helper.from_array(np.float32(0.1), "s"),
                 numpy_helper.from_array(np.zeros((), weight.dtype), "w_zp"),
                 numpy_helper.from_array(act_zp, "x_zp")]
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", "x_zp"], ["xq"]),
                 helper.make_node("DequantizeLinear", ["xq", "s", "x_zp"], ["xd"]),
                 helper.make_node("DequantizeLinear", ["w_q", "s", "w_zp"], ["w"]),
                 helper.make_node("MatMul", ["xd", "w"], ["y"])]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], inits)
        path = tmp_path / f"m{len(list(tmp_path.iterdir()))}.onnx"
        onnx.save(helper.make_model(graph), str(path))
        return path

    u8 = np.full((2, 2), 200, np.uint8)
    assert weight_range(model(u8, np.uint8(0))) == {"max_abs_weight": None, "uint8_weights": 1,
                                                    "saturation_free": True}
    assert not weight_range(model(u8, np.int8(0)))["saturation_free"]
    assert weight_range(model(np.full((2, 2), 64, np.int8), np.int8(0)))["saturation_free"]
    assert weight_range(model(np.full((2, 2), 65, np.int8), np.int8(0)))["max_abs_weight"] == 65
    assert not weight_range(model(np.full((2, 2), 65, np.int8), np.int8(0)))["saturation_free"]


@pytest.fixture()
def no_portable_scheme():
    """onnx-int8 with every portable scheme refused; only the ONNX formats (quick `all`). Restored whole
    afterwards: monkeypatch.delitem would put the deleted formats back at the end of the table."""
    saved = dict(FORMATS)
    fmt = FORMATS["onnx-int8"]
    portable = {"s8s8-7bit", "u8u8", "u8u8-float-ends"}
    FORMATS["onnx-int8"] = dataclasses.replace(fmt, convert=_break_schemes(fmt.convert, portable))
    for name in [n for n in FORMATS if n.startswith("tflite")]:
        del FORMATS[name]
    yield
    FORMATS.clear()
    FORMATS.update(saved)


def test_when_no_scheme_passes_each_try_is_named_with_its_figures(clear_run, tiny_ds, tmp_path,
                                                                  no_portable_scheme):
    out = tmp_path / "none"
    with pytest.raises(EdgepackError) as e:
        export(clear_run, "onnx-int8", out, check_images=CHECK, ds=tiny_ds)
    text = str(e.value)
    assert text.startswith(f"onnx-int8: none of 3 files passed its check on {CHECK} check images (")
    assert all(f"scheme={s}: accuracy fell" in text for s in ("s8s8-7bit", "u8u8", "u8u8-float-ends"))
    assert "could help: --option keep_float=LAYER" in text and "scheme=full-range" in text
    assert "\n" not in text and not out.exists()
    s = export(clear_run, ["onnx-fp32", "onnx-int8"], out, check_images=CHECK, ds=tiny_ds)
    bad = s["formats"]["onnx-int8"]
    assert s["failed"] == ["onnx-int8"] and bad["status"] == "error" and bad["file"] is None
    assert [t["options"]["scheme"] for t in bad["trials"]] == ["s8s8-7bit", "u8u8", "u8u8-float-ends"]
    assert all(not t["passed"] and t["accuracy"] < t["source_accuracy"] for t in bad["trials"])
    assert not (out / "onnx-int8.onnx").exists()


def test_format_all_lists_a_failed_format_and_exits_0_a_named_one_exits_1(tiny_run, tiny_archive, tmp_path,
                                                                          no_portable_scheme, capsys):
    base = ["export", "--model", str(tiny_run), "--data", str(tiny_archive), "--check-images", "20"]
    assert main([*base, "--format", "all", "--out", str(tmp_path / "all")]) == 0
    out = capsys.readouterr().out
    assert "onnx-int8       FAILED: onnx-int8: none of 3 files passed" in out and "failed: onnx-int8" in out
    assert json.loads((tmp_path / "all" / SUMMARY).read_text())["all"] is True
    assert main([*base, "--format", "onnx-int8", "--out", str(tmp_path / "one")]) == 1  # named: a failure
    assert "could help: --option keep_float" in capsys.readouterr().err
    assert not (tmp_path / "one").exists()


def test_check_images_are_training_images_no_calibration_uses(exported, tiny_ds):
    """The check decides (a portable scheme is the first that passes): never on test images."""
    from edgepack.data import balanced_subset
    from edgepack.export.core import CALIBRATION_SEED, check_indices

    _, summary = exported
    assert summary["check"]["split"] == "train"
    # this tiny set's training images are fewer than the 500 calibration images: all calibrate
    assert summary["check"]["apart_from_calibration"] is (len(tiny_ds.y_train) > 500)
    y = tiny_ds.y_train
    idx, apart = check_indices(y, 30, [20, 40])
    assert apart and len(idx) == 30 == len(set(idx.tolist()))
    for k in (20, 40):
        assert not set(idx.tolist()) & set(balanced_subset(y, k, CALIBRATION_SEED).tolist())
    assert np.bincount(y[idx]).max() - np.bincount(y[idx]).min() <= 1  # class-balanced
    # so little data that calibration takes every image: checked on them all, and said so
    idx, apart = check_indices(y, 30, [len(y)])
    assert not apart and len(idx) == 30


def test_clustered_weights_try_the_8_bit_schemes_first(clear_run, tmp_path):
    """7-bit rounding moves every weight of a cluster alike: u8u8 comes first for clustered layers."""
    from edgepack import rundir
    from edgepack.export.context import Context
    from edgepack.export.to_onnx import CLUSTERED_ORDER, PORTABLE_ORDER, candidates, clustered_layers
    from edgepack.model import load_run_model

    model = load_run_model(rundir.load_run(clear_run))
    ctx = Context(model, {"opset": 17}, lambda n: None, qat=False, scratch=tmp_path)
    assert clustered_layers(ctx) == []
    assert [c["scheme"] for c in candidates({"scheme": "portable"}, ctx)] == list(PORTABLE_ORDER)
    assert candidates({"scheme": "u8u8"}, ctx) == [{"scheme": "u8u8"}]  # asked: only that one

    # pruned, not clustered: a layer left with fewer nonzero weights than 256 has few values too
    dense = [layer for layer in model.layers if layer.__class__.__name__ == "Dense"][-1]
    w, *rest = dense.get_weights()
    dense.set_weights([np.where(np.arange(w.size).reshape(w.shape) < 200, w, 0), *rest])
    assert clustered_layers(Context(model, {"opset": 17}, lambda n: None, qat=False, scratch=tmp_path)) == []

    conv = next(layer for layer in model.layers if layer.__class__.__name__ == "Conv2D")
    kernel, *rest = conv.get_weights()
    centroids = np.linspace(kernel.min(), kernel.max(), 8)
    nearest = centroids[np.abs(kernel[..., None] - centroids).argmin(axis=-1)].astype(kernel.dtype)
    conv.set_weights([nearest, *rest])
    clustered = Context(model, {"opset": 17}, lambda n: None, qat=False, scratch=tmp_path)
    assert len(clustered_layers(clustered)) == 1
    assert [c["scheme"] for c in candidates({"scheme": "portable"}, clustered)] == list(CLUSTERED_ORDER)
