"""`optimize()`: an Optuna search for the smallest (or fastest) int8 file within an accuracy goal.

Every trial is scored on VALIDATION images the source never learned (edgepack.optimize.holdout: the
split its training run held out, or --val-data); the test images are read only at the end, for the
picks (edgepack.optimize.report). Every input and option is checked before the search folder is made.
The study lives in out/study.journal (Optuna JournalStorage): a killed search resumes there. Trials
left RUNNING by a killed process are marked failed and their parameters re-enqueued; finished trials
are never re-run, and a trial the sampler asks with a finished trial's parameters is told that trial's
result instead of training the same recipe again (SAME_AS). Multi-objective (maximize validation
accuracy, minimize gzip'ed size or 1-thread batch-1 p50 latency), TPE seeded, with the accuracy goal as
a constraint (Trial.set_constraint). A trial whose Keras validation accuracy falls more than max_drop + 3
points under the source's after any step is pruned (multi-objective studies have no
trial.report/should_prune: the rule is explicit, trial.PRUNE_MARGIN_POINTS).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from edgepack import rundir
from edgepack.compress.techniques import TECHNIQUES
from edgepack.errors import EdgepackError, require_toolchain
from edgepack.fitting import adopt
from edgepack.optimize import holdout, journal, space
from edgepack.optimize.journal import SAME_AS, finished
from edgepack.optimize.report import write_report
from edgepack.optimize.space import recipe_text
from edgepack.optimize.trial import run_trials
from edgepack.report.pick import OBJECTIVES
from edgepack.report.stats import LATENCY_ROUNDS
from edgepack.report.weights import sizes
from edgepack.target import Budget, check_budget

INT8_FORMATS = ("tflite-int8", "onnx-int8")
STUDY = "edgepack-optimize"
JOURNAL = "study.journal"
SETTINGS = "settings.json"
# Batch-1 latency per file (1 thread): timed calls, untimed warm-up calls, rounds giving the spread.
TIMING = {"runs": 300, "warmup": 30, "rounds": LATENCY_ROUNDS}
QUICK_TIMING = {"runs": 20, "warmup": 2, "rounds": LATENCY_ROUNDS}
# A trial whose parameters equal a finished trial's is not run again (user attribute journal.SAME_AS);
# the search stops when the sampler asks for this many such repeats in a row.
MAX_REPEATS_IN_A_ROW = 20


@dataclass(frozen=True)
class SearchOptions:
    """What `edgepack optimize` searches for; every field is recorded in out/settings.json."""

    model: str  # run folder or model file
    out: str  # the search folder (resumable)
    max_drop: float  # accuracy points the pick may lose against the source (validation)
    objective: str  # "size" (gzip'ed bytes) or "latency" (1-thread batch-1 p50)
    data: str | None = None  # None: the data the source was trained on, then the usual search
    budget_minutes: float = 60.0  # no new trial starts when it would end past this
    trials: int | None = None  # stop after this many finished trials (None: budget only)
    quick: bool = False  # tests: one epoch per step, short latency measurement
    seed: int | None = None  # split, sampler and training seed (None: the source's split's, else 0)
    val_fraction: float | None = None  # held-out share of training images (None: the source's split's)
    val_data: str | None = None  # held-out images to score on instead (folder or CIFAR-format archive)
    formats: tuple[str, ...] = INT8_FORMATS  # int8 formats each trial is exported to
    class_names: str | None = None  # a model file's class names (edgepack.rundir.load_source)
    preprocessing: str | None = None  # a model file's pixel scaling
    limit_train: int | None = None  # class-balanced subsets (tests)
    limit_test: int | None = None
    target: str = "host"  # the pick must run there and fit (edgepack.target); host: any file
    ram_bytes: int | None = None  # the target's RAM budget (--ram)
    flash_bytes: int | None = None  # the target's flash budget (--flash)

    def check(self) -> None:
        """One-line errors for bad values, before any work."""
        if not 0 <= self.max_drop <= 100:  # accuracy points: 0-100
            raise EdgepackError(f"--max-drop must be >= 0 and <= 100 accuracy points, got {self.max_drop:g}")
        if self.objective not in OBJECTIVES:
            raise EdgepackError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if not self.budget_minutes > 0:
            raise EdgepackError(f"--budget-minutes must be > 0, got {self.budget_minutes:g}")
        if self.trials is not None and self.trials < 1:
            raise EdgepackError(f"--trials must be >= 1, got {self.trials}")
        if self.val_fraction is not None and not 0 < self.val_fraction < 0.5:
            raise EdgepackError("--val-fraction must be between 0 and 0.5 (exclusive), got "
                                f"{self.val_fraction:g}")
        bad = [f for f in self.formats if f not in INT8_FORMATS]
        if bad or not self.formats:
            raise EdgepackError(f"--formats takes int8 formats only ({', '.join(INT8_FORMATS)}), got "
                                f"{', '.join(bad) or 'none'}")
        check_budget(self.target, Budget(self.ram_bytes, self.flash_bytes))

    def record(self) -> dict:
        """The settings a resumed search must share (budget and trials may change between runs)."""
        d = dataclasses.asdict(self)
        for key in ("budget_minutes", "trials", "out", "target", "ram_bytes", "flash_bytes"):  # pick only
            d.pop(key)
        d["formats"] = list(self.formats)
        return d


def optimize(opts: SearchOptions, executor=run_trials, batch: int = 1) -> dict:
    """Run (or resume) the search in opts.out and write its report; returns report.json's content.

    `executor(jobs) -> results` runs trial jobs (edgepack.optimize.trial.run_trials by default),
    `batch` of them at a time (a parallel executor asks for more than 1; TPE's constant liar keeps
    the trials of one batch apart)."""
    if not isinstance(batch, int) or batch < 1:
        raise EdgepackError(f"batch must be a whole number >= 1, got {batch!r}")
    opts.check()

    require_toolchain("edgepack optimize")
    _require_optuna()
    out = rundir.check_output_path(opts.out, {"--model": opts.model, "--data": opts.data,
                                              "--val-data": opts.val_data}, resume_marker=JOURNAL)
    opts, src, spec, ds, split = holdout.resolve(opts)  # refuses a source that learned the validation images
    with rundir.output_lock(out):
        journal.check(out / JOURNAL)
        out.mkdir(parents=True, exist_ok=True)
        _check_settings(out, opts)  # a resume with other settings is refused before the journal is touched
        study = _study(out, opts)  # the journal, then settings.json: the journal marks a search folder
        if not (out / SETTINGS).is_file():
            rundir.write_json(out / SETTINGS, opts.record())
        source = _prepare_source(out, opts, src, ds, split)
        if not study.trials and not opts.quick:
            for start in space.starts(TECHNIQUES):
                study.enqueue_trial(start, user_attrs={"start": True})
        recovered = _recover_killed(study)
        stop, spent = _loop(study, out, opts, source, spec, executor, batch)

        return write_report(out, opts, study, source, spec, split,
                            {"stopped_by": stop, "spent_seconds": round(spent, 1), "recovered": recovered})


def _require_optuna() -> None:
    if importlib.util.find_spec("optuna") is None:
        raise EdgepackError("edgepack optimize needs optuna (toolchain extra): run pip install "
                            "'edgepack[toolchain]'")


def _check_settings(out: Path, opts: SearchOptions) -> None:
    path = out / SETTINGS
    if path.is_file():
        old = rundir.read_json(path)
        diff = sorted(k for k in set(old) | set(opts.record()) if old.get(k) != opts.record().get(k))
        if diff:
            raise EdgepackError(f"{out} holds a search with other settings ({', '.join(diff)}): resume it "
                                "with the same options or choose another --out")


def _prepare_source(out: Path, opts: SearchOptions, src, ds, split: dict) -> dict:
    """The source as a run folder out/source (a copy evaluated on validation images) and its figures."""
    folder = out / "source"
    if not rundir.is_run_folder(folder):
        adopt(opts.model, folder, ds, class_names=opts.class_names, preprocessing=opts.preprocessing)

    run = rundir.load_run(folder)
    raw, gz = sizes(run.model_path)  # weights only: edgepack saves models without optimizer state
    held = src.metadata.validation or {}
    return {"run": str(folder), "model": str(opts.model), "val_accuracy": run.metrics.accuracy,
            "bytes": raw, "gzip_bytes": gz,
            # compress and export hold out what the source held out (edgepack.sources.held_out_like):
            # then the reproduce commands fine-tune on exactly the trials' training images
            "held_out_search_split": bool(held) and (held.get("indices_sha256") == split.get("indices_sha256")
                                                     or bool(opts.val_data))}


def _study(out: Path, opts: SearchOptions):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:  # journal.check passed every line as JSON; a record Optuna cannot replay is damage too
        storage = JournalStorage(JournalFileBackend(str(out / JOURNAL)))
        study = optuna.create_study(storage=storage, study_name=STUDY, load_if_exists=True,
                                    directions=["maximize", "minimize"])
    except (KeyError, TypeError, ValueError) as e:
        raise EdgepackError(f"{out / JOURNAL} is damaged ({type(e).__name__}: {str(e)[:100]}): move it away "
                            "to start the search again, or choose another --out") from None
    # Seeded by the trials already in the study: a resumed search does not replay the same draws.
    # The accuracy goal is a constraint each trial sets (Trial.set_constraint, optuna >= 5).
    study.sampler = optuna.samplers.TPESampler(seed=opts.seed + len(study.trials), multivariate=True,
                                               group=True)
    study.set_metric_names(["val_accuracy", "gzip_bytes" if opts.objective == "size" else "p50_ms"])
    return study


def _recover_killed(study) -> list[int]:
    """Trials left RUNNING by a killed process: marked failed (recorded) and their params re-enqueued."""
    from optuna.trial import TrialState

    killed = list(study.user_attrs.get("killed", []))
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        killed.append(t.number)
        recovered.append(t.number)
    if recovered:
        study.set_user_attr("killed", killed)
        print(f"resuming: trial(s) {', '.join(map(str, recovered))} were cut off by a stop; re-queued",
              flush=True)
    return recovered


def _loop(study, out: Path, opts: SearchOptions, source: dict, spec: dict, executor, batch: int
          ) -> tuple[str, float]:
    started, before = time.time(), float(study.user_attrs.get("spent_seconds", 0.0))
    budget = 60 * opts.budget_minutes

    def spent() -> float:  # seconds of this search, over every run of it
        return before + time.time() - started

    in_a_row = 0  # repeated recipes since the last trial that ran
    while True:
        done = [t for t in finished(study) if SAME_AS not in t.user_attrs]  # repeats ran nothing
        room = batch if opts.trials is None else min(batch, opts.trials - len(done))
        if room < 1:
            return "trials", spent()
        durations = [t.user_attrs["seconds"] for t in done if "seconds" in t.user_attrs]
        if spent() + (statistics.median(durations) if durations else 0.0) > budget:
            return "budget", spent()
        if in_a_row >= MAX_REPEATS_IN_A_ROW:
            print(f"stopping: the sampler asked for {in_a_row} recipes in a row that had already run "
                  "(the space looks explored)", flush=True)
            return "repeats", spent()
        trials = [study.ask() for _ in range(room)]
        jobs = [_job(t, out, opts, source, spec) for t in trials]
        same = _repeats(study, trials)
        fresh = [j for j in jobs if j["number"] not in same]
        results = iter(executor(fresh) if fresh else [])
        for trial, job in zip(trials, jobs, strict=True):  # in order: a repeat follows what it repeats
            if trial.number in same:
                _tell_repeat(study, trial, same[trial.number], opts, source)
                print(f"trial {trial.number} {recipe_text(job['steps'])}: the same recipe as trial "
                      f"{same[trial.number]}, whose result is reused (not run)", flush=True)
                in_a_row += 1
                continue
            result = next(results)
            _tell(study, trial, result, opts, source)
            study.set_user_attr("spent_seconds", spent())
            print(progress_line(result, source, spent(), budget), flush=True)
            in_a_row = 0


def _repeats(study, trials) -> dict[int, int]:
    """{trial number: the earlier trial with the same parameters (the same recipe, data and seed, so
    the same result)} for the asked `trials` that repeat a complete or pruned trial, or an earlier one
    of the same batch. Optuna's FAQ way to skip duplicated samples: tell the earlier result again."""
    from optuna.trial import TrialState

    earlier = [t for t in finished(study) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    same = {}
    for i, trial in enumerate(trials):
        match = next((t.number for t in earlier if t.params == trial.params), None)
        if match is None:
            match = next((t.number for t in trials[:i] if t.params == trial.params and t.number not in same),
                         None)
        if match is not None:
            same[trial.number] = match
    return same


def _tell_repeat(study, trial, number: int, opts: SearchOptions, source: dict) -> None:
    """Tell `trial` the result of the earlier trial `number` it repeats (already told)."""
    from optuna.trial import TrialState

    first = study.get_trials(deepcopy=False)[number]
    trial.set_user_attr(SAME_AS, number)
    trial.set_user_attr("seconds", 0.0)
    for key in ("status", "pruned_rule", "error", "drop_pts", "format"):
        if key in first.user_attrs:
            trial.set_user_attr(key, first.user_attrs[key])
    if first.state == TrialState.COMPLETE:
        trial.set_constraint("max_drop", first.user_attrs["drop_pts"] - opts.max_drop)
        study.tell(trial, list(first.values))
    else:  # pruned, or failed within this batch
        study.tell(trial, state=first.state)


def _job(trial, out: Path, opts: SearchOptions, source: dict, spec: dict) -> dict:
    """A trial's job (JSON-able): its recipe from the sampler, the paths, the seed, the goal."""
    try:
        chain, steps = space.suggest(trial, TECHNIQUES, opts.quick)
    except ValueError as e:  # optuna refuses a parameter whose choices changed within a study
        raise EdgepackError(f"the search space changed since {out} was started ({str(e)[:200]}): "
                            "choose another --out") from None
    return {"number": trial.number, "chain": chain, "steps": [s.as_dict() for s in steps],
            "source": source["run"], "data": spec, "formats": list(opts.formats),
            "out": str(out / "trials" / str(trial.number)), "seed": opts.seed,
            "timing": QUICK_TIMING if opts.quick else TIMING,
            "reference_accuracy": source["val_accuracy"], "max_drop": opts.max_drop,
            "retry_of": trial.user_attrs.get("retry_of")}  # its complete folders are reused


def chosen_point(points: list[dict], opts: SearchOptions, reference: float) -> dict | None:
    """The file a trial is scored by: the best for the objective within the goal, else the most accurate."""
    if not points:
        return None
    key = objective_value(opts.objective)
    ok = [p for p in points if 100 * (reference - p["accuracy"]) <= opts.max_drop + 1e-9]
    return min(ok, key=key) if ok else max(points, key=lambda p: p["accuracy"])


def objective_value(objective: str):
    if objective == "size":
        return lambda p: p["gzip_bytes"]
    return lambda p: p["latency"]["p50_ms"]


def _tell(study, trial, result: dict, opts: SearchOptions, source: dict) -> None:
    from optuna.trial import TrialState

    trial.set_user_attr("seconds", result["seconds"])
    trial.set_user_attr("status", result["status"])
    if result["status"] == "pruned":
        trial.set_user_attr("pruned_rule", result["pruned_rule"])
        study.tell(trial, state=TrialState.PRUNED)
        return
    point = chosen_point(result["points"], opts, source["val_accuracy"])
    if result["status"] != "ok" or point is None:
        trial.set_user_attr("error", result.get("error") or "no file was exported")
        study.tell(trial, state=TrialState.FAIL)
        return
    drop = 100 * (source["val_accuracy"] - point["accuracy"])
    trial.set_user_attr("drop_pts", drop)
    trial.set_constraint("max_drop", drop - opts.max_drop)  # <= 0: within the goal (validation)
    trial.set_user_attr("format", point["format"])
    study.tell(trial, [point["accuracy"], objective_value(opts.objective)(point)])


def progress_line(result: dict, source: dict, spent: float, budget: float) -> str:
    head = f"trial {result['number']} {recipe_text(result['recipe'])}"
    tail = f"{result['seconds']:.0f} s; {spent / 60:.1f}/{budget / 60:.0f} min"
    if result["status"] != "ok" or not result["points"]:
        return f"{head}: {result['status']} ({result.get('pruned_rule') or result.get('error')}) ({tail})"
    figures = "; ".join(f"{p['format']} val {p['accuracy']:.2%}, {p['gzip_bytes'] / 1024:.1f} KiB "
                        f"({source['gzip_bytes'] / p['gzip_bytes']:.1f}x), "
                        f"p50 {p['latency']['p50_ms']:.3f} ms"
                        for p in result["points"])
    return f"{head}: {figures} ({tail})"
