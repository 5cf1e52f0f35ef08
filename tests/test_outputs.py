"""Output folders: refused before any work when writing them would destroy an input or the cwd."""

from __future__ import annotations

import shutil
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
