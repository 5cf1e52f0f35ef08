"""The one-command pipeline: settings, a complete small run, and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgepack import rundir
from edgepack.errors import EdgepackError
from edgepack.pipeline import DEFAULTS, load_settings

SMALL = """
[train]
epochs = 1
batch_size = 16

[finetune]
epochs = 1

[[variants]]
name = "prune-0.5"
technique = "prune"
params = {sparsity = 0.5}

[export]
formats = ["tflite-fp32", "onnx-fp32"]

[compare]
runs = 5
warmup = 1
"""


def test_settings_layering_and_errors(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(SMALL)
    s = load_settings(cfg, quick=True, overrides={"compare": {"runs": 7}})
    assert s["train"]["epochs"] == 1 and s["data"]["limit_train"] == 5000  # file over --quick
    assert s["compare"]["runs"] == 7 and s["quick"] is True  # CLI over file
    # One control per fine-tuning recipe, added before the variants: prune's lr with the file's epochs.
    assert [v["name"] for v in s["variants"]] == ["finetune-e1-lr0.001", "prune-0.5"]
    defaults = load_settings()
    assert [v["name"] for v in defaults["variants"][:3]] == [
        "finetune-e1-lr0.0001", "finetune-e2-lr0.0001", "finetune-e2-lr0.001"]
    assert len(defaults["variants"]) == len(DEFAULTS["variants"]) + 3
    for text, message in (("[trian]\nepochs = 1", "unknown section"), ("epochs = ", "not valid TOML"),
                          ('[export]\nformats = ["tflite-fp64"]', "unknown export format"),
                          ('[[variants]]\nname = "x"\ntechnique = "shrink"', "unknown technique"),
                          ('[[variants]]\nname = "p"\ntechnique = "pqat"\nsource = "nope"', "source 'nope'"),
                          ("[compare]\nmax-drop = 2", "unknown key 'max-drop' in \\[compare\\]"),
                          ("[train]\nepochs = 'ten'", "train.epochs must be int"),
                          ('[[variants]]\nname = "x"\ntechnique = "prune"\nparams = 3', "must be dict"),
                          ('[[variants]]\nname = "finetune-e2-lr0.001"\ntechnique = "prune"', "unique"),
                          ("controls = 1", "controls must be bool")):
        cfg.write_text(text)
        with pytest.raises(EdgepackError, match=message):
            load_settings(cfg)
    with pytest.raises(EdgepackError, match="not found"):
        load_settings(tmp_path / "missing.toml")


def test_example_settings_file_is_valid():
    from conftest import ROOT

    s = load_settings(ROOT / "examples" / "pipeline.toml")
    assert [v["name"] for v in s["variants"]] == [
        "finetune-e1-lr0.0001", "finetune-e2-lr0.0001", "finetune-e2-lr0.001",
        "prune-0.8", "cluster-16", "qat"]
    assert s["export"]["options"] == {"calibration_images": 500}


def _pipeline_cmd(data: Path, out: Path, cfg: Path) -> list[str]:
    return [sys.executable, "-m", "edgepack", "pipeline", "--data", str(data), "--out", str(out),
            "--config", str(cfg)]


@pytest.mark.slow
def test_resume_after_sigkill_then_complete_report(tmp_path, tiny_archive):
    cfg = tmp_path / "small.toml"
    cfg.write_text(SMALL)
    out = tmp_path / "out"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(_pipeline_cmd(tiny_archive, out, cfg), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    # Kill it in the middle of a stage: after training completed, while a later stage is writing.
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        # A stage's temporary output folder (not a JSON file's brief temporary name) is being written.
        if (out / "stages" / "train.json").exists() and [
                p for p in out.rglob(f"*{rundir.TMP_MARK}*") if p.is_dir()]:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "pipeline ended before it could be killed mid-stage"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(out.rglob(f"*{rundir.TMP_MARK}*")), "expected a half-written temporary output"
    assert not (out / "report" / "results.json").exists()

    again = subprocess.run(_pipeline_cmd(tiny_archive, out, cfg), capture_output=True, text=True, env=env,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "skip train baseline" in again.stdout and "removed" in again.stdout
    assert not list(out.rglob(f"*{rundir.TMP_MARK}*"))
    results = json.loads((out / "report" / "results.json").read_text())
    variants = {(r["variant"], r["format"]) for r in results["rows"]}
    for name in ("baseline", "prune-0.5", "finetune-e1-lr0.001"):
        for fmt in ("keras", "tflite-fp32", "onnx-fp32"):
            assert (name, fmt) in variants
    prune = next(r for r in results["rows"] if r["id"] == "prune-0.5/onnx-fp32")
    assert prune["control_ref"] == "finetune-e1-lr0.001/onnx-fp32"  # the control with prune's recipe
    # The report's accuracy equals each run's own metrics.json.
    for name in ("baseline", "prune-0.5", "finetune-e1-lr0.001"):
        own = json.loads((out / "runs" / name / "metrics.json").read_text())["accuracy"]
        row = next(r for r in results["rows"] if r["variant"] == name and r["format"] == "keras")
        assert row["accuracy"] == own
    settings = json.loads((out / "settings.json").read_text())
    assert settings["export"]["formats"] == ["tflite-fp32", "onnx-fp32"]

    third = subprocess.run(_pipeline_cmd(tiny_archive, out, cfg), capture_output=True, text=True, env=env,
                           timeout=600)
    assert third.returncode == 0 and third.stdout.count("skip ") >= 1 + 2 + 6, third.stdout
