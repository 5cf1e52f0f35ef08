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
    leftover = out / "runs" / ".baseline.tmp-1234abcd"  # rundir.TMP_MARK: what remove_leftovers deletes
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
