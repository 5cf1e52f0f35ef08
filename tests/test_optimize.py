"""edgepack optimize: options, the validation split, the pick rule, and a killed search that resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from edgepack import data as data_mod
from edgepack import rundir
from edgepack.cli import main
from edgepack.compress.schedule import Phase
from edgepack.optimize import final, space


@pytest.mark.parametrize("args, words", [
    (["--max-drop", "-1", "--objective", "size"], "--max-drop must be >= 0"),
    (["--max-drop", "1e9", "--objective", "size"], "<= 100 accuracy points"),
    (["--max-drop", "1", "--objective", "speed"], "--objective must be one of size, latency"),
    (["--max-drop", "1", "--objective", "size", "--budget-minutes", "0"], "--budget-minutes must be > 0"),
    (["--max-drop", "1", "--objective", "size", "--val-fraction", "0.7"], "--val-fraction must be between"),
    (["--max-drop", "1", "--objective", "size", "--val-fraction", "0"], "--val-fraction must be between"),
    (["--max-drop", "1", "--objective", "size", "--formats", "onnx-fp32"], "int8 formats only"),
])
def test_bad_options_one_line_error(tmp_path, capsys, args, words):
    code = main(["optimize", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert code == 1 and words in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_validation_split_stratified_seeded_and_from_training_images():
    y = np.repeat(np.arange(10), 50)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 255, (500, 4, 4, 3), dtype=np.uint8)
    ds = data_mod.Dataset(x, y, x[:20] + 1, y[:20], tuple("abcdefghij"), "mem", "sha")
    search, record = data_mod.validation_split(ds, 0.1, seed=3)
    assert record["validation_images"] == 50 and record["train_images"] == 450
    assert np.bincount(search.y_test).tolist() == [5] * 10  # stratified
    held = data_mod.stratified_holdout(y, 0.1, 3)
    assert np.array_equal(search.x_test, x[held]) and len(np.intersect1d(held, np.setdiff1d(
        np.arange(500), held))) == 0
    assert data_mod.validation_split(ds, 0.1, seed=3)[1] == record  # seeded
    assert data_mod.validation_split(ds, 0.1, seed=4)[1]["indices_sha256"] != record["indices_sha256"]
    assert data_mod.test_set_sha256(search) != data_mod.test_set_sha256(ds)  # never the test images


def _point(pid, acc, gz, rounds):
    lat = {"p50_ms": float(np.median(rounds)), "round_p50_ms": list(rounds)}
    from edgepack.report.stats import latency_interval

    return {"id": pid, "accuracy": acc, "gzip_bytes": gz, "latency": lat,
            "latency_interval": latency_interval(lat),
            "drop_pts": 100 * (0.70 - acc), "size_ratio": 450_000 / gz}


def test_pick_ignores_latency_within_noise():
    fast = _point("fast", 0.70, 60_000, [0.05, 0.05, 0.06, 0.12, 0.05])
    small = _point("small", 0.70, 40_000, [0.10, 0.09, 0.10, 0.11, 0.10])  # overlaps fast's rounds
    lossy = _point("lossy", 0.60, 10_000, [0.01] * 5)
    assert final.choose([fast, small, lossy], 1.0, "latency")["pick"] == "small"
    slow = _point("slow", 0.70, 40_000, [0.30, 0.31, 0.30, 0.32, 0.30])  # clearly slower
    assert final.choose([fast, slow], 1.0, "latency")["pick"] == "fast"
    chosen = final.choose([fast, slow, lossy], 1.0, "size")
    assert chosen == {"pick": "slow", "ratio_10": "slow", "ratio_15": "lossy"}


def test_space_switches_on_with_compress_techniques():
    from edgepack.compress.techniques import TECHNIQUES

    chains = space.available_chains(TECHNIQUES)
    assert "prune-pqat" in chains and "prune-cluster" in chains
    assert {"cluster-cqat", "prune-cluster-pcqat"} & set(chains) == (
        {"cluster-cqat", "prune-cluster-pcqat"} if "pcqat" in TECHNIQUES else set())
    assert ("polish_epochs" in space.options_for("prune", TECHNIQUES["prune"].defaults)) == (
        "polish_epochs" in TECHNIQUES["prune"].defaults)
    steps = [space.Step("prune", {"epochs": 2, "learning_rate": 1e-3, "polish_epochs": 1,
                                  "polish_learning_rate": 1e-4}), space.Step("pqat", {"epochs": 1})]
    fake = {"prune": TECHNIQUES["prune"], "pqat": TECHNIQUES["pqat"]}
    polish = "polish_epochs" in TECHNIQUES["prune"].defaults
    expected = [Phase(2, 1e-3), Phase(1, 1e-4)] if polish else [Phase(2, 1e-3)]
    assert space.schedule(steps, fake)[:len(expected)] == expected


def test_every_start_recipe_lies_in_the_space():
    """A start recipe is enqueued as Optuna parameters: each value must be one the space offers (FixedTrial
    warns on a value outside its distribution; here that is an error) and must reach its step."""
    import warnings

    from optuna.trial import FixedTrial

    from edgepack.compress.techniques import TECHNIQUES

    starts = space.starts(TECHNIQUES)
    assert len(starts) == len(space.STARTS)  # this toolchain has every technique the starts use
    for start in starts:
        params = dict(start)  # what a start leaves to the sampler gets a value of the space here
        for tech in space.CHAINS[start["chain"]]:
            for key, values in space.options_for(tech, TECHNIQUES[tech].defaults).items():
                params.setdefault(f"{tech}.{key}", values[0])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            chain, steps = space.suggest(FixedTrial(params), TECHNIQUES)
        assert chain == start["chain"]
        got = {f"{s.technique}.{k}": v for s in steps for k, v in s.params.items()}
        for key, value in start.items():
            if key in space.CHAIN_OPTIONS:
                takes = [s for s in steps if key in TECHNIQUES[s.technique].defaults]
                assert takes and all(s.params.get(key) == value for s in takes)
            elif key != "chain":
                assert got[key] == value, key


def test_chain_options_reach_every_step_its_control_and_its_commands():
    """"augment" is drawn once per trial: every step of the chain fine-tunes on the same kind of images,
    the matched control's phases say so, and the reproduce commands pass it."""
    from optuna.trial import FixedTrial

    from edgepack.compress.techniques import TECHNIQUES
    from edgepack.optimize.final import reproduce

    assert {"augment": "flip-shift"}.items() <= space.starts(TECHNIQUES)[0].items()
    trial = FixedTrial({"chain": "prune-cluster", "augment": "flip-shift", "prune.sparsity": 0.7,
                        "prune.epochs": 1, "prune.learning_rate": 1e-3, "prune.polish_epochs": 1,
                        "prune.polish_learning_rate": 1e-4, "cluster.clusters": 8, "cluster.epochs": 1})
    chain, steps = space.suggest(trial, TECHNIQUES)
    assert [s.params["augment"] for s in steps] == ["flip-shift", "flip-shift"]
    # prune, polish, cluster
    assert [p.augment for p in space.schedule(steps, TECHNIQUES)] == ["flip-shift"] * 3
    point = {"trial": 7, "format": "tflite-int8", "recipe": [s.as_dict() for s in steps]}
    command = reproduce(point, "runs/base", "data.tar.gz", 0)
    assert command.count("--augment flip-shift") == 2 and "--sparsity 0.7 " in command
    plain = FixedTrial({**trial.params, "augment": "none"})
    assert all("augment" not in s.params for s in space.suggest(plain, TECHNIQUES)[1])  # the default


def test_hopeless_trial_is_pruned_and_complete_work_is_reused(tmp_path, capsys, tiny_split_run, tiny_archive):
    """~10 s: the explicit pruning rule stops a chain after the step that misses the goal by > 3 points;
    run_trial is a pure function of its job whose complete result is reused, never re-run."""
    from edgepack.optimize.search import QUICK_TIMING
    from edgepack.optimize.trial import run_trials

    spec = {"path": str(tiny_archive), "seed": 0, "limit_train": None, "limit_test": None,
            "val_fraction": 0.1, "image_size": [32, 32]}
    job = {"number": 0, "chain": "prune-pqat", "steps": [{"technique": "prune", "params": {"epochs": 1}},
                                                         {"technique": "pqat", "params": {"epochs": 1}}],
           "source": str(tiny_split_run), "data": spec, "formats": ["tflite-int8"],
           "out": str(tmp_path / "t0"),
           "seed": 0, "timing": QUICK_TIMING, "reference_accuracy": 1.0, "max_drop": 0.0}
    [result] = run_trials([job])
    said = capsys.readouterr().out  # a step inside a search names its figures for what they are
    assert "90 training / 10 validation images" in said and "validation accuracy" in said
    assert result["status"] == "pruned" and result["pruned_at"] == 0 and len(result["steps"]) == 1
    assert "max_drop + 3" in result["pruned_rule"] and not (tmp_path / "t0" / "export").exists()
    stamp = (tmp_path / "t0" / "result.json").stat().st_mtime_ns
    assert run_trials([job]) == [result]
    assert (tmp_path / "t0" / "result.json").stat().st_mtime_ns == stamp
    # A retry of a trial cut off by a kill copies that trial's complete steps instead of re-training.
    (tmp_path / "0").mkdir()
    (tmp_path / "t0" / "steps").rename(tmp_path / "0" / "steps")
    capsys.readouterr()
    [again] = run_trials([{**job, "number": 1, "out": str(tmp_path / "1"), "retry_of": 0}])
    assert "trial 1: reused steps/0-prune of trial 0" in capsys.readouterr().out
    assert again["status"] == "pruned"
    assert again["steps"][0]["val_accuracy"] == result["steps"][0]["val_accuracy"]


def _cmd(run, archive, out, trials):
    return [sys.executable, "-m", "edgepack", "optimize", "--model", str(run), "--data", str(archive),
            "--out", str(out), "--max-drop", "100", "--objective", "size", "--quick", "--trials", str(trials)]


@pytest.mark.slow
def test_killed_search_resumes_and_reports(tmp_path, tiny_split_run, tiny_archive):
    """~90 s: a search killed (SIGKILL) in its second trial resumes; finished trials are not re-run;
    trials score on validation images only; the report has a front, a pick, its test figures."""
    out = tmp_path / "opt"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(_cmd(tiny_split_run, tiny_archive, out, 2), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (out / "trials" / "1").exists():
        time.sleep(0.1)  # trials/1 appears once trial 0 is told and trial 1 started
    assert proc.poll() is None, "the search ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = (out / "trials" / "0" / "result.json")
    stamp = first.stat().st_mtime_ns
    assert not (out / "report.json").exists()

    again = subprocess.run(_cmd(tiny_split_run, tiny_archive, out, 2), capture_output=True, text=True,
                           env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming: trial(s) 1" in again.stdout and "trial 2 " in again.stdout
    assert "trial 0 " not in again.stdout and first.stat().st_mtime_ns == stamp  # not re-run
    report = json.loads((out / "report.json").read_text())
    trials = {t["number"]: t for t in report["trials"]}
    assert sorted(trials) == [0, 2] and trials[2]["retry_of"] == 1
    assert report["search"]["stopped_by"] == "trials" and report["search"]["spent_seconds"] > 0
    # Every trial step's figures are on the validation images, never the test images.
    split = report["validation_split"]
    full = data_mod.load_data(tiny_archive)
    search, record = data_mod.validation_split(full, split["fraction"], split["seed"])
    assert record == split and split["validation_images"] + split["train_images"] == len(full.y_train)
    for n in trials:
        for step in (out / "trials" / str(n) / "steps").iterdir():
            meta = rundir.load_run(step).metadata
            assert meta.test_images_sha256 == data_mod.test_set_sha256(search)
            assert meta.test_images_sha256 != data_mod.test_set_sha256(full)
            assert meta.num_train_images == split["train_images"]
    assert any(p["on_front"] for p in report["points"]) and report["chosen"]["pick"]
    pick = report["picks"][report["chosen"]["pick"]]
    assert pick["test_images"] == len(full.y_test) and "edgepack compress" in pick["command"]
    assert "vs_control" in pick and pick["control"]["phases"]
    md = (out / "report.md").read_text()
    assert "## Pareto front" in md and "TEST accuracy" in md and "Matched fine-tune control" in md
    # the source held out exactly the search's validation images, so its reproduce commands do too
    assert split == rundir.load_run(tiny_split_run).metadata.validation
    assert report["source"]["held_out_search_split"] is True and "hold out what the source held out" in md
    src = report["source"]
    assert 0 <= src["test_accuracy"] <= 1 and f"TEST accuracy {src['test_accuracy']:.2%}" in md
    assert (out / "pareto.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "pareto.csv").read_text().startswith("id,trial,chain")


def test_executor_seam_gets_json_jobs_in_batches(tmp_path, tiny_split_run, tiny_archive):
    """~10 s: the one seam a parallel executor replaces: batches of JSON-able jobs in, results out."""
    from edgepack.optimize import SearchOptions, optimize

    batches = []

    def executor(jobs):
        batches.append(json.loads(json.dumps(jobs)))  # jobs travel as JSON
        return [{"number": j["number"], "chain": j["chain"], "recipe": j["steps"], "steps": [], "points": [],
                 "status": "failed", "error": "not run", "seconds": 0.1} for j in jobs]

    out = tmp_path / "opt"
    report = optimize(SearchOptions(model=str(tiny_split_run), out=str(out), max_drop=1.0,
                                    objective="latency", data=str(tiny_archive), trials=3, quick=True),
                      executor=executor, batch=2)
    assert [len(b) for b in batches] == [2, 1]
    numbers = [j["number"] for b in batches for j in b]
    assert numbers == [0, 1, 2] and all(j["out"] == str(out / "trials" / str(j["number"])) for b in batches
                                          for j in b)
    assert [t["state"] for t in report["trials"]] == ["FAIL"] * 3 and report["chosen"]["pick"] is None
    assert "No file is within 1 points" in (out / "report.md").read_text()


def _study_with(out, params: dict, copies: int):
    """A search folder whose study starts with `copies` enqueued trials of the same parameters."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from edgepack.optimize import search

    out.mkdir()
    study = optuna.create_study(storage=JournalStorage(JournalFileBackend(str(out / search.JOURNAL))),
                                study_name=search.STUDY, directions=["maximize", "minimize"])
    for _ in range(copies):
        study.enqueue_trial(params)


@pytest.mark.parametrize("batch, max_in_a_row, trials, ran, stopped_by, same", [
    (2, 20, 2, [[0], [3]], "trials", {1: 0, 2: 0}),  # a repeat within a batch, then of a finished trial
    (1, 2, 9, [[0]], "repeats", {1: 0, 2: 0}),  # the sampler asks only for recipes that ran: stop
])
def test_repeated_recipe_reuses_the_earlier_result(tmp_path, tiny_split_run, tiny_archive, monkeypatch,
                                                   capsys, batch, max_in_a_row, trials, ran, stopped_by,
                                                   same):
    """~10 s: TPE may ask for parameters it has had (session 5's search trained one recipe twice); the
    repeat gets the earlier trial's result, costs no training, and does not count as a trial run."""
    from edgepack.optimize import SearchOptions, optimize, search

    monkeypatch.setattr(search, "MAX_REPEATS_IN_A_ROW", max_in_a_row)
    recipe = {"chain": "prune", "augment": "none", "prune.sparsity": 0.7, "prune.epochs": 1,
              "prune.learning_rate": 1e-3, "prune.polish_epochs": 0, "prune.polish_learning_rate": 1e-4}
    out = tmp_path / "opt"
    _study_with(out, recipe, 3)
    batches = []

    def executor(jobs):
        batches.append([j["number"] for j in jobs])
        return [{"number": j["number"], "chain": j["chain"], "recipe": j["steps"], "steps": [],
                 "status": "ok", "seconds": 5.0,
                 "points": [{"format": "tflite-int8", "accuracy": 0.1 + j["number"] / 100, "gzip_bytes": 1000,
                             "latency": {"p50_ms": 1.0}}]} for j in jobs]

    report = optimize(SearchOptions(model=str(tiny_split_run), out=str(out), max_drop=100.0, objective="size",
                                    data=str(tiny_archive), trials=trials, quick=True),
                      executor=executor, batch=batch)
    assert batches == ran and report["search"]["stopped_by"] == stopped_by
    by_number = {t["number"]: t for t in report["trials"]}
    assert {n: t["same_as"] for n, t in by_number.items() if "same_as" in t} == same
    for n, first in same.items():
        assert by_number[n]["state"] == "COMPLETE" and by_number[n]["seconds"] == 0
        assert by_number[n]["drop_pts"] == by_number[first]["drop_pts"]
    printed = capsys.readouterr().out
    assert "the same recipe as trial 0, whose result is reused (not run)" in printed
    assert "1 = 0, 2 = 0" in (out / "report.md").read_text()


def test_changed_search_space_is_a_one_line_error(tmp_path):
    """A study started before compress gained techniques cannot take the new choices: say so."""
    import optuna

    from edgepack.errors import EdgepackError
    from edgepack.optimize.search import SearchOptions, _job

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    old = study.ask()
    old.suggest_categorical("chain", ["prune"])
    study.tell(old, 1.0)
    opts = SearchOptions(model="m", out=str(tmp_path), max_drop=1.0, objective="size")
    with pytest.raises(EdgepackError, match="search space changed since .* choose another --out"):
        _job(study.ask(), tmp_path, opts, {"run": "r", "val_accuracy": 0.7}, {})
