"""Golden vectors (issue 14 item 7): export writes them, `edgepack verify` passes on the file as exported
and fails, naming the image, on an altered file and on another model's golden file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import NO_INT8_GATE
from runtime_only_check import altered_copy

from edgepack.runtime import golden

FORMATS = ("tflite-int8", "onnx-fp32", "tflite-fp32", "onnx-int8")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_archive):
    """A 5-epoch tiny model (clear output margins, unlike the 1-epoch one) exported to 4 formats."""
    from edgepack.export import export
    from edgepack.train import TrainConfig, train

    root = tmp_path_factory.mktemp("golden")
    run = train(tiny_archive, root / "run", TrainConfig(epochs=5, batch_size=8))
    summary = export(run, list(FORMATS), root / "export", data_path=tiny_archive, check_images=20,
                     options=NO_INT8_GATE)
    return {name: root / "export" / f["file"] for name, f in summary["formats"].items()}


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_writes_golden_that_passes(exported, fmt):
    path = exported[fmt]
    g = golden.read_golden(golden.golden_path(path))
    assert g["images"].dtype == np.uint8 and g["images"].shape == (16, 32, 32, 3)
    assert sorted(np.bincount(g["labels"], minlength=10)) == [1] * 4 + [2] * 6  # class-balanced
    assert g["meta"]["format"] == fmt and g["meta"]["model_sha256"] == golden.sha256_file(path)
    assert g["meta"]["atol"] == (1e-4 if fmt.endswith("fp32") else 16 / 256)
    result = golden.verify(path, golden.golden_path(path))
    assert result.passed and result.line.startswith(f"PASS {path.name}: 16 golden images"), result.line


@pytest.mark.parametrize("fmt", ("tflite-int8", "onnx-fp32"))
def test_altered_file_fails_naming_the_image(exported, fmt, tmp_path):
    path = exported[fmt]
    bad = altered_copy(path, tmp_path / path.name)
    result = golden.verify(bad, golden.golden_path(path))
    assert not result.passed and result.first_bad is not None
    assert result.line.startswith(f"FAIL {path.name}: image {result.first_bad} (true ")
    assert "(file differs from the exported one)" in result.line


def test_other_models_golden_is_refused(exported):
    result = golden.verify(exported["onnx-int8"], golden.golden_path(exported["tflite-int8"]))
    assert not result.passed and "another model's golden file" in result.line and "format" in result.line


def test_cli_exit_codes_and_one_line_errors(exported, tmp_path, capsys):
    from edgepack.cli import main

    path = exported["tflite-int8"]
    assert main(["verify", str(path), str(golden.golden_path(path))]) == 0
    assert capsys.readouterr().out.startswith("PASS ")
    bad = altered_copy(path, tmp_path / path.name)
    assert main(["verify", str(bad), str(golden.golden_path(path))]) == 1
    assert capsys.readouterr().out.startswith("FAIL ")
    junk = tmp_path / "junk.golden.npz"
    junk.write_bytes(b"not a zip")
    assert main(["verify", str(path), str(junk)]) == 1
    assert main(["verify", str(path), str(tmp_path / "missing.npz")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not an edgepack golden file" in err[0] and "not found" in err[1]


def test_pickled_golden_is_not_loaded(tmp_path):
    obj = np.array([{"x": 1}], dtype=object)
    path = tmp_path / "evil.golden.npz"
    np.savez(path, images=obj, labels=obj, expected=obj, meta=np.array(json.dumps({"atol": 1})))
    with pytest.raises(golden.GoldenError, match="not an edgepack golden file"):
        golden.read_golden(path)


def test_pixels_round_trip_every_preset():
    from edgepack.runtime.preprocess import PRESETS, parse, scale_pixels

    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    for spec in [*PRESETS.values(), parse("mean-std:125,123,114/63,62,66")]:
        assert np.array_equal(golden.pixels_from_input(scale_pixels(pixels, spec), spec), pixels)
    with pytest.raises(golden.GoldenError):
        golden.pixels_from_input(np.full((1, 2, 2, 3), 0.5001, np.float32), PRESETS["unit"])


def test_old_export_without_golden_file_says_reexport(exported, tmp_path, capsys):
    """Files exported before golden vectors existed (e.g. an old pipeline's exports) have none: verify
    says so in one line, GOLDEN defaulting to the file beside the model, and compare notes it."""
    import shutil

    from edgepack.cli import main
    from edgepack.report.evaluate import NO_GOLDEN
    from edgepack.runtime.metadata import sidecar_path

    path = exported["tflite-fp32"]
    assert main(["verify", str(path)]) == 0 and capsys.readouterr().out.startswith("PASS ")
    old = tmp_path / path.name  # copied as an old export: model and sidecar, no golden file
    shutil.copy(path, old)
    shutil.copy(sidecar_path(path), sidecar_path(old))
    assert main(["verify", str(old)]) == 1
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert "no golden file" in err and "re-export the model with this edgepack" in err
    assert "re-export" in NO_GOLDEN and "edgepack verify" in NO_GOLDEN


def test_pipeline_exports_again_a_folder_without_golden_files(exported, tmp_path):
    """The pipeline's resume check: an export folder is complete only with every file's golden file."""
    import shutil

    from edgepack.pipeline import _export_complete

    folder = shutil.copytree(exported["onnx-fp32"].parent, tmp_path / "export")
    assert _export_complete(folder)
    golden.golden_path(folder / "onnx-fp32.onnx").unlink()
    assert not _export_complete(folder)
    (folder / "export.json").write_text("{")
    assert not _export_complete(folder) and not _export_complete(tmp_path / "missing")
