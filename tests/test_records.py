"""The JSON records edgepack writes and reads back, typed and checked by the one validator
(edgepack.typed.validate): a run folder's metrics.json, an export folder's export.json, and each export
format's options (run metadata: tests/test_runmeta.py). Per file: a wrong type is one line naming the
file, the key and the fix; a file written before a key was added still loads; what is written reads
back as written."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from edgepack import rundir
from edgepack.cli import main
from edgepack.errors import EdgepackError, RunFolderError
from edgepack.export import summary as export_summary
from edgepack.export.formats import options_for
from edgepack.metrics import Metrics


def _set(raw: dict, path: str, value) -> dict:
    """`raw` with the value at a dotted key path replaced."""
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node[key]
    node[last] = value
    return raw


def _known(value):
    """A record as JSON without the keys it does not have (None: not written)."""
    if isinstance(value, dict):
        return {k: _known(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_known(v) for v in value]
    return value


# --- metrics.json


def test_metrics_json_reads_back_as_written(tiny_run):
    run = rundir.load_run(tiny_run)
    raw = json.loads((tiny_run / rundir.METRICS).read_text())
    assert isinstance(run.metrics, Metrics) and run.metrics.class_names == raw["class_names"]
    assert _known(dataclasses.asdict(run.metrics)) == raw  # every key typed, none lost or renamed
    name = raw["class_names"][0]
    assert run.metrics.per_class[name].support == raw["per_class"][name]["support"]


@pytest.mark.parametrize("key, value, words", [
    ("accuracy", "0.9", "accuracy: must be a number, got '0.9'"),
    ("per_class.{name}.support", 2.5, "per_class.{name}.support: must be a whole number, got 2.5"),
    ("confusion_matrix", [[1, "2"]], r"confusion_matrix[0][1]: must be a whole number, got '2'"),
    ("num_test_images", None, "num_test_images: must be a whole number, got None"),
])
def test_wrong_metrics_json_is_one_line_naming_file_and_key(tiny_run, tmp_path, capsys, key, value, words):
    """load_run refuses it, and so does every command given the run folder, before any work."""
    copy = shutil.copytree(tiny_run, tmp_path / "run")
    raw = json.loads((copy / rundir.METRICS).read_text())
    name = raw["class_names"][0]
    (copy / rundir.METRICS).write_text(json.dumps(_set(raw, key.format(name=name), value)))
    with pytest.raises(RunFolderError) as info:
        rundir.load_run(copy)
    msg = str(info.value)
    assert msg == (f"{copy / rundir.METRICS}: {words.format(name=name)}: re-create the run folder with this "
                   "edgepack version")
    assert main(["export", "--model", str(copy), "--out", str(tmp_path / "e"), "--format", "onnx-fp32"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0] and not (tmp_path / "e").exists()


def test_metrics_json_without_later_keys_still_loads(tiny_run, tmp_path):
    """Run folders written before weak classes were recorded (and a newer writer's extra key)."""
    copy = shutil.copytree(tiny_run, tmp_path / "run")
    raw = json.loads((copy / rundir.METRICS).read_text())
    del raw["weak_classes"]
    (copy / rundir.METRICS).write_text(json.dumps({**raw, "calibration_error": 0.1}))
    metrics = rundir.load_run(copy).metrics
    assert metrics.weak_classes is None and metrics.accuracy == raw["accuracy"]


def test_a_writers_wrong_metrics_are_a_bug_before_anything_is_written(tmp_path):
    from edgepack.metrics import classification_metrics

    good = classification_metrics([0, 1, 1], [0, 1, 0], ["cat", "dog"])
    assert rundir.checked_metrics(good, "metrics: ", ValueError).per_class["dog"].recall == 0.5
    with pytest.raises(ValueError, match="metrics: accuracy: must be a number, got '1'"):
        rundir.checked_metrics({**good, "accuracy": "1"}, "metrics: ", ValueError)
    with pytest.raises(ValueError, match="metrics: schema_version: missing"):
        rundir.checked_metrics({"accuracy": 1.0}, "metrics: ", ValueError)


# --- export.json


@pytest.fixture
def export_folder(tiny_exports, tmp_path):
    """A copy of a real export folder (tflite-int8, onnx-fp32) to damage."""
    return shutil.copytree(next(iter(tiny_exports.values())).parent, tmp_path / "export")


def test_export_json_reads_back_as_written(tiny_exports):
    folder = next(iter(tiny_exports.values())).parent
    summary = export_summary.read(folder)
    raw = json.loads((folder / export_summary.SUMMARY).read_text())
    assert _known(dataclasses.asdict(summary)) == _known(raw)
    assert {n: f.file for n, f in summary.formats.items()} == {n: p.name for n, p in tiny_exports.items()}
    assert summary.formats["tflite-int8"].options["calibration_images"] == 500 and summary.check.images == 20


@pytest.mark.parametrize("key, value, words", [
    ("formats.onnx-fp32.bytes", "12", "formats.onnx-fp32.bytes: must be a whole number, got '12'"),
    ("formats.onnx-fp32.status", "done", "formats.onnx-fp32.status: must be one of ok, error, got 'done'"),
    ("check.images", 2.5, "check.images: must be a whole number, got 2.5"),
    ("formats.tflite-int8.file", None, "formats.tflite-int8.file: a format whose status is ok must name"),
    ("qat_source", "no", "qat_source: must be true or false, got 'no'"),
])
def test_wrong_export_json_is_one_line_naming_file_and_key(export_folder, key, value, words):
    """compare turns it into a row with that line; explain and optimize refuse it with the same line."""
    from edgepack.report.inputs import recorded_failures

    path = export_folder / export_summary.SUMMARY
    path.write_text(json.dumps(_set(json.loads(path.read_text()), key, value)))
    with pytest.raises(EdgepackError) as info:
        export_summary.read(export_folder)
    msg = str(info.value)
    assert msg.startswith(f"{path}: {words}") and msg.endswith(": re-run the export") and "\n" not in msg
    [row] = recorded_failures(export_folder)
    assert row.error == msg


def test_export_json_without_later_keys_still_loads(export_folder):
    """Export folders written before skipped/failed formats, `all`, trials and the data check were
    recorded (and a newer writer's extra key)."""
    path = export_folder / export_summary.SUMMARY
    raw = json.loads(path.read_text())
    for key in ("data_matches_source", "skipped", "failed", "all"):
        del raw[key]
    for entry in raw["formats"].values():
        entry.pop("trials", None)
    path.write_text(json.dumps({**raw, "made_on": "a newer edgepack"}))
    summary = export_summary.read(export_folder)
    later = (summary.skipped, summary.failed, summary.all, summary.data_matches_source)
    assert later == ({}, [], False, None)
    assert summary.formats["onnx-fp32"].status == "ok"


def test_a_writers_wrong_export_json_is_a_bug_before_anything_is_written():
    with pytest.raises(ValueError, match="export.json: source: missing"):
        export_summary.check({"schema_version": 1})


# --- export options (each format's options model)


@pytest.mark.parametrize("formats, options, words", [
    (["tflite-int8"], {"calibration_images": "abc"},
     "tflite-int8: option calibration_images: must be a whole number >= 10, got 'abc'"),
    (["tflite-int8"], {"calibration_images": 64.5},
     "tflite-int8: option calibration_images: must be a whole number >= 10, got 64.5"),
    (["tflite-int8"], {"io": "int16"}, "option io: must be one of uint8, int8, float, got 'int16'"),
    (["tflite-int8"], {"max_drop": True}, "option max_drop: must be a number from 0 to 100, got True"),
    (["tflite-int8"], {"min_agreement": "inf"}, "option min_agreement: must be a number from 0 to 1"),
    (["onnx-fp32", "onnx-int8"], {"opset": "19"},
     "onnx-fp32: option opset: must be one of 13, 14, 15, 16, 17, 18, got 19"),
    (["onnx-int8"], {"scheme": "fast"}, "onnx-int8: option scheme: must be one of portable, s8s8-7bit"),
])
def test_format_options_are_checked_by_their_model(formats, options, words):
    with pytest.raises(EdgepackError) as info:
        options_for(formats, options)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_format_options_parse_text_and_keep_defaults():
    """Command-line text is parsed to the option's type; a settings file's values must have it."""
    opts = options_for(["tflite-int8", "onnx-int8"], {"calibration_images": "64", "max_drop": "2",
                                                      "keep_float": "conv2"})
    assert opts["tflite-int8"]["calibration_images"] == 64 and opts["onnx-int8"]["max_drop"] == 2.0
    assert opts["onnx-int8"]["scheme"] == "portable" and opts["tflite-int8"]["keep_float"] == "conv2"
    assert options_for(["onnx-int8"], {"opset": 19, "max_drop": 1})["onnx-int8"]["max_drop"] == 1.0
    with pytest.raises(EdgepackError, match="calibration_images: must be a whole number >= 10, got '64'"):
        options_for(["tflite-int8"], {"calibration_images": "64"}, strict=True)


def test_records_and_the_cli_import_without_pydantic():
    """The runtime-only install has no pydantic: its CLI imports the run folder and export records
    (edgepack.rundir, .metrics, .export.summary), which import edgepack.typed only to check one."""
    import subprocess
    import sys

    code = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('pydantic', 'pydantic_core'):\n"
        "            raise ModuleNotFoundError(name, name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from edgepack.cli import build_parser\n"
        "build_parser()\n"
        "import edgepack.export.summary, edgepack.metrics, edgepack.rundir, edgepack.report.inputs\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
