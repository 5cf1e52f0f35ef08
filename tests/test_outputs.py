"""Output folders: refused before any work when writing them would destroy an input or the cwd."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgepack.cli import main


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edgepack: error:"), err
    return err[0]


@pytest.fixture
def run_copy(tmp_path, tiny_run) -> Path:
    """A copy of the tiny run: a test that fails must not destroy the session's run folder."""
    return Path(shutil.copytree(tiny_run, tmp_path / "baseline"))


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("argv, option", [
    (["export", "--model", "{run}", "--format", "tflite-fp32", "--out", "{run}", "--force"], "--model"),
    (["export", "--model", "{run}", "--format", "tflite-fp32", "--out", "{run}/exp"], "--model"),
    (["compress", "--model", "{run}", "--technique", "finetune", "--epochs", "1", "--out", "{run}/ft"],
     "--model"),
    (["compare", "{run}", "--no-latency", "--out", "{run}/report"], "RUN_OR_FILE"),
    (["compare", "{run}", "--no-latency", "--out", "{tmp}", "--force"], "RUN_OR_FILE"),
    (["pipeline", "--config", "{tmp}/pipe/settings.toml", "--out", "{tmp}/pipe"], "--config"),
])
def test_output_overlapping_an_input_is_refused_before_any_work(tmp_path, capsys, run_copy, argv, option):
    before = _snapshot(run_copy)
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "settings.toml").write_text("[train]\nepochs = 1\n")
    argv = [a.format(run=run_copy, tmp=tmp_path) for a in argv]
    assert main(argv) == 1
    err = one_line_error(capsys)
    assert option in err and "destroy the input" in err and "--out" in err
    assert _snapshot(run_copy) == before  # source run intact, nothing written inside it


def test_train_output_inside_its_data_folder_is_refused(tmp_path, capsys, tiny_archive):
    import tarfile

    with tarfile.open(tiny_archive) as tar:
        tar.extractall(tmp_path, filter="data")
    data = tmp_path / "cifar-10-batches-py"
    assert main(["train", "--data", str(data), "--epochs", "1", "--out", str(data / "run")]) == 1
    assert "--data" in one_line_error(capsys) and not (data / "run").exists()


@pytest.mark.parametrize("out", [".", "..", "/"])
def test_cwd_its_parents_and_root_are_refused_before_training(tmp_path, monkeypatch, capsys, tiny_archive,
                                                              out):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code = main(["train", "--data", str(tiny_archive), "--epochs", "1", "--out", out, "--force"])
    assert code == 1
    assert "current folder or one of its parents" in one_line_error(capsys)
    assert list(work.iterdir()) == [] and [p.name for p in tmp_path.iterdir()] == ["work"]


# A process that holds the lock of an output folder until it is killed (prints "locked" when it has it).
HOLDER = """
import sys, time
from edgepack import rundir
with rundir.claim_output(sys.argv[1], resume=True):
    print("locked", flush=True)
    time.sleep(300)
"""


@pytest.fixture
def holder(tmp_path):
    """Start a lock holder on tmp_path/out; yields (process, out)."""
    from conftest import ROOT

    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True,
                            env=env, cwd=tmp_path)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc, out
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_second_writer_is_refused_naming_the_holder(holder, capsys, tiny_archive):
    proc, out = holder
    assert main(["train", "--data", str(tiny_archive), "--epochs", "1", "--out", str(out)]) == 1
    err = one_line_error(capsys)
    assert "another edgepack process" in err and f"pid {proc.pid}" in err and "--out" in err
    assert not out.exists()


def test_pipeline_takes_the_lock_before_removing_leftovers(holder, tmp_path):
    from edgepack.errors import RunFolderError
    from edgepack.pipeline import pipeline

    proc, out = holder
    leftover = out / "runs" / ".baseline.tmp-1234abcd"  # atomic.TMP_MARK: what remove_leftovers deletes
    leftover.mkdir(parents=True)
    with pytest.raises(RunFolderError, match=f"pid {proc.pid}"):
        pipeline(out, data_path=tmp_path / "no-data.tar.gz")
    assert leftover.is_dir()  # the other run's unfinished folder survives


def test_lock_of_a_sigkilled_holder_does_not_block_the_next_run(holder):
    from edgepack import rundir

    proc, out = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with rundir.claim_output(out, resume=True):
        holder_file = rundir.lock_paths(out)[1]
        assert json.loads(holder_file.read_text())["pid"] == os.getpid()
    assert list(out.parent.iterdir()) == []  # lock and holder files go with the lock


@pytest.mark.parametrize("argv", [
    ["train", "--data", "nope.tar.gz", "--out", "x", "--learning-rate", "inf"],
    ["train", "--data", "nope.tar.gz", "--out", "x", "--learning-rate", "nan"],
    ["train", "--data", "nope.tar.gz", "--out", "x", "--validation-split", "nan"],
    ["compress", "--model", "m", "--technique", "prune", "--out", "x", "--learning-rate", "inf"],
    ["compress", "--model", "m", "--technique", "prune", "--out", "x", "--sparsity", "nan"],
    ["compare", "m", "--out", "x", "--max-drop", "inf"],
    ["pipeline", "--data", "nope.tar.gz", "--out", "x", "--fail-over", "nan"],
])
def test_non_finite_options_are_refused_by_the_cli(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    finite = ("must be a number from 0 to 100, got 'nan'" if argv[0] == "pipeline"  # the settings' field
              else "expected a finite number")
    assert e.value.code == 2 and finite in err[-1], err


@pytest.mark.parametrize("rate", [float("inf"), float("nan")])
def test_train_config_refuses_a_non_finite_learning_rate(rate):
    from edgepack.errors import EdgepackError
    from edgepack.train import TrainConfig

    with pytest.raises(EdgepackError, match="--learning-rate must be a finite number"):
        TrainConfig(learning_rate=rate).check()


def test_diverging_training_stops_with_an_error_and_no_run_folder(tmp_path, tiny_archive):
    from edgepack.errors import EdgepackError
    from edgepack.train import TrainConfig, train

    out = tmp_path / "run"
    with pytest.raises(EdgepackError, match="diverged.*lower --learning-rate"):
        train(tiny_archive, out, TrainConfig(epochs=2, batch_size=16, learning_rate=1e30))
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_write_json_is_strict_and_says_which_values_were_not_finite(tmp_path):
    import numpy as np

    from edgepack import rundir

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))

    rundir.write_json(tmp_path / "h.json", {"loss": [1.0, float("nan")], "p50": np.float32("inf"), "ok": 2})
    data = strict((tmp_path / "h.json").read_text())
    assert data["loss"] == [1.0, None] and data["p50"] is None and data["ok"] == 2
    assert set(data["non_finite"]) == {"loss[1]", "p50"} and "nan" in data["non_finite"]["loss[1]"]


def test_full_disk_while_saving_leaves_nothing_in_tmpdir(tmp_path, monkeypatch, capsys, tiny_archive):
    import errno
    import tempfile

    from tf_keras.src.saving import saving_lib

    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))  # gettempdir() caches $TMPDIR at first use

    def disk_full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(saving_lib.H5IOStore, "close", disk_full)  # writing the weights into the .keras
    out = tmp_path / "run"
    assert main(["train", "--data", str(tiny_archive), "--epochs", "1", "--out", str(out)]) == 1
    assert "No space left on device" in one_line_error(capsys)
    # TensorFlow's autograph keeps the sources it generates until the process exits (atexit): not ours.
    left = [p.name for p in tmpdir.iterdir() if not p.name.startswith("__autograph_generated_file")]
    assert left == [] and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmpdir"]
