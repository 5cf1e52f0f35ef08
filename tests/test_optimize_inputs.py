"""edgepack optimize's inputs: a source that learned the validation images is refused, --val-data, and
bad input (model, options, --out, study.journal) is one line, exit 1, nothing left behind."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import tiny_members, write_archive

from edgepack import rundir
from edgepack.cli import main

GOAL = ["--max-drop", "1", "--objective", "size", "--quick", "--trials", "1"]


def _fails(capsys, argv, words) -> str:
    code = main(["optimize", *argv])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and err.count("\n") == 1, err
    assert words in err, err
    return err


def _failed_executor(jobs):  # trials that ran nothing: the search's own machinery without training
    return [{"number": j["number"], "chain": j["chain"], "recipe": j["steps"], "steps": [], "points": [],
             "status": "failed", "error": "not run", "seconds": 0.1} for j in jobs]


def _search(model, archive, out, **kw):
    from edgepack.optimize import SearchOptions, optimize

    kw = {"trials": 1, **kw}
    return optimize(SearchOptions(model=str(model), out=str(out), max_drop=1.0, objective="size",
                                  data=str(archive), quick=True, **kw), executor=_failed_executor)


def test_source_that_learned_the_validation_images_is_refused(tmp_path, capsys, tiny_run, tiny_archive):
    """tiny_run trained on every training image: the split would score it on images it learned."""
    out = tmp_path / "o"
    err = _fails(capsys, ["--model", str(tiny_run), "--data", str(tiny_archive), "--out", str(out), *GOAL],
                 "records no held-out training images")
    assert "edgepack train --validation-split 0.1" in err and "--val-data FOLDER_OR_ARCHIVE" in err
    assert not out.exists()
    # a user's model file: its training images are unknown
    shutil.copy(tiny_run / rundir.load_run(tiny_run).metadata.model_file, tmp_path / "mine.keras")
    mine = ["--model", str(tmp_path / "mine.keras"), "--preprocess", "unit"]
    _fails(capsys, [*mine, "--data", str(tiny_archive), "--out", str(out), *GOAL],
           "is a model file: edgepack cannot know which images it was trained on")
    assert not out.exists()


@pytest.mark.parametrize("args, words", [
    (["--val-fraction", "0.2"], "held out its validation images with --val-fraction 0.1"),
    (["--seed", "3"], "held out its validation images with --seed 0"),
    (["--limit-train", "50"], "that this --data and --limit-train do not give back"),
])
def test_a_split_other_than_the_sources_is_refused(tmp_path, capsys, tiny_split_run, tiny_archive, args,
                                                   words):
    out = tmp_path / "o"
    _fails(capsys, ["--model", str(tiny_split_run), "--data", str(tiny_archive), "--out", str(out), *GOAL,
                    *args], words)
    assert not out.exists()


def test_val_data_scores_on_its_images_and_trains_on_all_of_data(tmp_path, tiny_run, tiny_archive, capsys):
    """~15 s: --val-data makes a source without a split usable; an empty --out folder is fine."""
    val = write_archive(tmp_path / "val.tar.gz", tiny_members(per_batch=4, n_test=10, seed=5))
    out = tmp_path / "o"
    out.mkdir()
    report = _search(tiny_run, tiny_archive, out, val_data=str(val))
    split = report["validation_split"]
    assert split["validation_images"] == 5 * 4 + 10 and split["train_images"] == 100
    assert split["val_data_sha256"] == rundir.sha256_file(val) and split["held_out_by_source"] == 0
    md = (out / "report.md").read_text()
    assert "the 30 images of --val-data" in md and "TEST accuracy" in md
    # the source's figure is on --val-data's images; its test figure is on the test images
    assert report["source"]["val_accuracy"] == rundir.load_run(out / "source").metrics.accuracy
    assert 0 <= report["source"]["test_accuracy"] <= 1
    _fails(capsys, ["--model", str(tiny_run), "--data", str(tiny_archive), "--val-data", str(tiny_archive),
                    "--out", str(tmp_path / "same"), *GOAL], "is the same data as --data")
    assert not (tmp_path / "same").exists()


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _lambda_model(path):
    from edgepack.tfkeras import keras

    k = keras()
    m = k.Sequential([k.layers.Input((32, 32, 3)), k.layers.Lambda(lambda x: x * 2.0), k.layers.Flatten(),
                      k.layers.Dense(10)])
    m.save(path)
    return path


@pytest.mark.parametrize("make, words", [
    (lambda p: p / "none.keras", "none.keras"),
    (lambda p: _write(p / "x.keras", b"not a model"), "x.keras"),
    (lambda p: _write(p / "img.png", b"\x89PNG\r\n\x1a\n" + bytes(64)), "img.png"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "empty"),
    (lambda p: _lambda_model(p / "lambda.keras"), "lambda.keras"),
])
def test_unreadable_model_leaves_no_out_folder(tmp_path, capsys, tiny_archive, make, words):
    model = make(tmp_path)
    out = tmp_path / "runs" / "o"
    _fails(capsys, ["--model", str(model), "--data", str(tiny_archive), "--out", str(out), *GOAL], words)
    assert not out.exists() and not out.parent.exists()


@pytest.mark.parametrize("kind", ["run", "file-inside", "file"])
def test_out_that_is_not_a_search_folder_is_refused(tmp_path, capsys, tiny_run, tiny_split_run, tiny_archive,
                                                    kind):
    """Another command's folder (a run, an export or pipeline folder: files but no study.journal), or a
    file, is never written into."""
    out = tmp_path / "o"
    if kind == "run":
        shutil.copytree(tiny_run, out)
    elif kind == "file-inside":
        out.mkdir()
        (out / "export.json").write_text("{}")
    else:
        out.write_text("x")
    before = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
    _fails(capsys, ["--model", str(tiny_split_run), "--data", str(tiny_archive), "--out", str(out), *GOAL],
           "is not a folder this command made (no study.journal)")
    assert (sorted(p.name for p in out.iterdir()) if out.is_dir() else None) == before


@pytest.mark.parametrize("garbage, words", [
    (b"\x00\xff\xfe\x80binary" * 20, "line 1 is not a study record"),
    (b"hello, this is text\nand more text\n", "line 1 is not a study record"),
    (b'{"op_code": 0}\n{"op_co\n{"op_code": 1}\n', "line 2 is not a study record"),
])
def test_damaged_journal_is_one_line(tmp_path, capsys, tiny_split_run, tiny_archive, garbage, words):
    out = tmp_path / "o"
    out.mkdir()
    (out / "study.journal").write_bytes(garbage)
    err = _fails(capsys, ["--model", str(tiny_split_run), "--data", str(tiny_archive), "--out", str(out),
                          *GOAL], words)
    assert "study.journal is damaged" in err and "move it away" in err
    assert sorted(p.name for p in out.iterdir()) == ["study.journal"]


def test_half_written_last_journal_record_is_cut_off_and_the_search_resumes(tmp_path, capsys, tiny_split_run,
                                                                            tiny_archive):
    """~15 s: a killed writer's partial last line (no newline) is dropped; resuming twice works."""
    out = tmp_path / "o"
    _search(tiny_split_run, tiny_archive, out)
    journal = out / "study.journal"
    good = journal.read_bytes()
    journal.write_bytes(good + b'{"op_code": 5, "worker_id": "x", "trial_id": 0, "us')
    capsys.readouterr()
    for trials in (2, 3):  # the second resume reads what the first appended after the cut
        report = _search(tiny_split_run, tiny_archive, out, trials=trials)
        assert len(report["trials"]) == trials
    assert "cut off a half-written last record" in capsys.readouterr().out
    assert journal.read_bytes().startswith(good)
    assert all(json.loads(line) for line in journal.read_bytes().splitlines())


def test_resume_with_other_settings_is_refused_before_the_journal_is_touched(tmp_path, capsys,
                                                                             tiny_split_run, tiny_archive):
    """~10 s: the study's records stay as they were when a resume is refused."""
    out = tmp_path / "o"
    _search(tiny_split_run, tiny_archive, out)
    before = (out / "study.journal").read_bytes()
    _fails(capsys, ["--model", str(tiny_split_run), "--data", str(tiny_archive), "--out", str(out),
                    "--max-drop", "2", "--objective", "latency", "--quick", "--trials", "1"],
           "holds a search with other settings (max_drop, objective)")
    assert (out / "study.journal").read_bytes() == before
