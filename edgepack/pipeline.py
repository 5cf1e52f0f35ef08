"""`edgepack pipeline`: train -> compress -> export -> compare, resumable, in one command.

Output folder layout:
    settings.json        the resolved settings (defaults < TOML file < CLI), recorded for the report
    runs/<variant>/      run folders: baseline (train) and every compressed variant (compress)
    exports/<variant>/   exported files of each run folder (export)
    report/              report.md, report.html, results.json/.csv, plots (compare)
    stages/<stage>.json  completion markers: the stage's settings key and wall time
    stage-times.json     where the last run's wall time went, by kind of stage (also printed)

Resuming: a stage is skipped when its marker's key equals the key of the current settings (its own
and its inputs') and its output is still complete. Every stage writes its output under a temporary
name and renames it when complete, so a run killed at any point (even SIGKILL) leaves only
temporary folders, which the next run removes before it starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgepack import atomic, rundir, stagejobs
from edgepack import data as data_mod
from edgepack.errors import EdgepackError, require_toolchain
from edgepack.executor import Done, Failed, InProcess, Job, executor, local_workers
from edgepack.export import FORMATS
from edgepack.export import summary as export_summary
from edgepack.export.context import QAT_TECHNIQUES
from edgepack.export.formats import for_source
from edgepack.fitting import adopt
from edgepack.report.compare import CompareOptions, GateFailed
from edgepack.report.render import failure_lines, main_table, markdown_table
from edgepack.report.rows import Results, is_current, read_results
from edgepack.runtime.golden import golden_path
from edgepack.settings import load_settings, schedule
from edgepack.sources import held_out_like
from edgepack.stagejobs import RESOURCES
from edgepack.target import Budget
from edgepack.train import TrainConfig


@dataclass
class Progress:
    """Prints what runs, how far the pipeline is and a rough time left (from stage weights)."""

    weights: dict[str, float]  # stage id -> expected relative cost
    started: float = field(default_factory=time.time)
    cpu_times: object = field(default_factory=lambda: machine_cpu_times())  # the machine's at the start
    done: float = 0.0  # weight of the stages run by this process
    skipped: float = 0.0  # weight of the stages complete from an earlier run (they cost no time now)

    def start(self, stage: str, what: str) -> None:
        i = list(self.weights).index(stage) + 1
        elapsed = time.time() - self.started
        left = ""
        if self.done > 0:
            rest = sum(self.weights.values()) - self.done - self.skipped
            left = f", ~{elapsed / self.done * rest / 60:.1f} min left"
        print(f"[{i}/{len(self.weights)}] {what} ({elapsed / 60:.1f} min elapsed{left})", flush=True)

    def finished(self, what: str, outcome) -> None:
        """A line for a stage that ran beside others (their start lines all came at once)."""
        if isinstance(outcome, Done):
            print(f"  done: {what} in {outcome.seconds:.0f} s ({(time.time() - self.started) / 60:.1f} min "
                  "elapsed)", flush=True)

    def finish(self, stage: str, skipped: bool = False) -> None:
        if skipped:
            self.skipped += self.weights[stage]
        else:
            self.done += self.weights[stage]


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Stages:
    """Completion markers under OUT/stages/."""

    def __init__(self, out: Path):
        self.folder = out / "stages"
        self.folder.mkdir(parents=True, exist_ok=True)

    def done(self, stage: str, key: str) -> bool:
        p = self.folder / f"{stage}.json"
        if not p.is_file():
            return False
        try:
            return json.loads(p.read_text()).get("key") == key
        except (json.JSONDecodeError, OSError):
            return False

    def mark(self, stage: str, key: str, seconds: float, host: str | None = None) -> None:
        """Written only when a stage completed (a failed stage has no marker and runs again).
        `host`: the machine it ran on (a Ray node's name, or this machine's)."""
        rundir.write_json(self.folder / f"{stage}.json", {"key": key, "seconds": round(seconds, 2),
                                                          "host": host})


def remove_leftovers(out: Path) -> list[Path]:
    """Delete temporary folders/files a killed run left (names contain atomic.TMP_MARK)."""
    gone = []
    for p in sorted(out.rglob(f"*{atomic.TMP_MARK}*"), key=lambda p: -len(p.parts)):
        if p.exists():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            gone.append(p)
    return gone


def plan(settings: dict, baseline=None) -> dict[str, float]:
    """Stage ids in order, each with a rough relative cost (for the time-left estimate)."""
    stages: dict[str, float] = {}
    if baseline is None:
        stages["train"] = settings["train"]["epochs"] * 1.0
    elif not rundir.is_run_folder(baseline):
        stages["adopt"] = 0.5
    by_name = _by_name(settings)
    for v in settings["variants"]:
        # the variant's own phases: its schedule minus its source's
        source = v.get("source", "baseline")
        before = 0 if source == "baseline" else len(schedule(by_name[source], by_name, settings["finetune"]))
        epochs = sum(p.epochs for p in schedule(v, by_name, settings["finetune"])[before:])
        stages[f"compress-{v['name']}"] = epochs * (2.0 if "qat" in v["technique"] else 1.3)
    for name, fmt, skip in export_jobs(settings):
        if not skip:
            stages[f"export-{name}-{fmt}"] = 0.25
    stages["compare"] = 0.15 * len(stages)
    return stages


def side_by_side(weights: dict[str, float], workers: int) -> dict[str, float]:
    """The plan's weights with those of the fine-tunings and exports shared by `workers` processes
    running them side by side (so the time-left estimate counts them by their wall time)."""
    return {k: v / workers if k.startswith(("compress-", "export-")) else v for k, v in weights.items()}


def pipeline(out: str | Path, data_path: str | Path | None = None, config: str | Path | None = None,
             quick: bool = False, baseline: str | Path | None = None, overrides: dict | None = None,
             source_options: dict | None = None, ray: str | None = None, workers: int | None = None
             ) -> Results:
    """Run every stage not already complete; returns the comparison results (see edgepack.report).

    `baseline`: a trained run folder, or a user's Keras model file / SavedModel folder (adopted as the
    baseline run folder, with `source_options` class_names / preprocessing: edgepack.rundir.load_source).
    `ray`: None (then $EDGEPACK_RAY_ADDRESS; unset: in-process), "auto" or a Ray address: training,
    each fine-tuning, each export and the comparison run as Ray tasks (edgepack.executor); `out` must
    then be on a filesystem every node sees. `workers`: in-process, the worker processes exports run
    on side by side (default: edgepack.executor.local_workers(); 1: every stage in this process).
    """
    require_toolchain("edgepack pipeline")
    settings = load_settings(config, quick, overrides).model_dump()  # checked before any work
    given = {"--baseline": baseline, "--data": data_path, "--config": config}
    with rundir.claim_output(out, given, resume=True):  # locked before remove_leftovers
        with executor(ray, local_workers() if workers is None else workers) as ex:
            return _pipeline(out, data_path, settings, baseline, source_options or {}, ex)


def _pipeline(out, data_path, settings: dict, baseline, source_options: dict, ex) -> Results:
    if data_path is not None:
        settings["data"]["path"] = str(data_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for p in remove_leftovers(out):
        print(f"removed {p} (left by an interrupted run)", flush=True)
    rundir.write_json(out / "settings.json", settings)
    stages = Stages(out)
    progress = Progress(side_by_side(plan(settings, baseline), getattr(ex, "workers", 1)))

    d = settings["data"]
    ds = data_mod.load_data(d["path"], d["limit_train"], d["limit_test"], d["seed"],
                            image_size=_input_size(baseline, source_options))
    if baseline is not None and rundir.is_run_folder(baseline):  # as compress does from it (one rule)
        ds = held_out_like(rundir.load_run(baseline), ds)
    print(f"data: {len(ds.y_train)} training / {len(ds.y_test)} test images from {ds.source}"
          f"{' (--quick subset)' if settings['quick'] else ''}; stages run {ex.where}", flush=True)
    # The data's identity: its content and subset options, not the path it was named by (the same file
    # named relatively, absolutely or moved is the same data: its stages are not re-run).
    data_key = _key(ds.sha256, {k: v for k, v in d.items() if k != "path"})
    run = _Runner(ex, stages, progress, ex.share(ds))  # the data: one copy for every job
    failures: list[dict] = []

    runs: dict[str, Path] = {}
    keys: dict[str, str] = {}
    if baseline is not None and rundir.is_run_folder(baseline):
        base = rundir.load_run(baseline)  # checked: complete, model intact
        model_hash = base.metadata.model_sha256 or rundir.sha256_file(base.model_path)
        runs["baseline"], keys["baseline"] = base.path, _key(model_hash, data_key)  # data: as if trained
    elif baseline is not None:  # a user's model file becomes the baseline run folder (here: rare, fast)

        path = out / "runs" / "baseline"
        key = _key(_model_hash(baseline), data_key, source_options)
        adopt_run = _Runner(InProcess(), stages, progress, ds)
        error = adopt_run([Work("adopt", key, f"adopt {baseline} as the baseline", path, _valid_run,
                                Job(adopt, (baseline, path, ds), {"force": True, **source_options}))])
        if error["adopt"]:
            raise EdgepackError(f"adopting {baseline} as the baseline failed: {error['adopt']}")
        runs["baseline"], keys["baseline"] = path, key
    else:
        runs["baseline"], keys["baseline"] = _train_stage(out, settings, data_key, run)

    # Fine-tunings and exports as one graph: each starts when its source model is made (side by side on
    # worker processes when there are any, the longest chain of work first).
    compress_works: dict[str, Work] = {}
    for level in dependency_levels(settings["variants"]):
        for v in level:
            src = v.get("source", "baseline")
            made = compress_works.get(src)
            if src not in runs and made is None:
                failures.append({"variant": v["name"], "format": "keras", "stage": "compress",
                                 "error": f"source variant {src} failed"})
                continue
            source, key = (made.output, made.key) if made else (runs[src], keys[src])
            compress_works[v["name"]] = _compress_work(out, v, settings, source, key, run.data,
                                                       made.stage if made else None)
    export_works = []
    for name, fmt, skip in export_jobs(settings):
        if skip:
            print(f"not exporting {name} -> {fmt}: {skip}", flush=True)
            failures.append({"variant": name, "format": fmt, "stage": "export", "status": "skipped",
                             "error": skip})
        elif name in runs or name in compress_works:
            made = compress_works.get(name)
            source, key = (made.output, made.key) if made else (runs[name], keys[name])
            export_works.append(_export_work(out, name, fmt, settings, key, source, run.data,
                                             made.stage if made else None))
    outcomes = run([*compress_works.values(), *export_works])
    made_by = {w.stage: w for w in compress_works.values()}
    for w in compress_works.values():
        error = outcomes[w.stage]
        if error and w.needs and outcomes[w.needs]:
            error = f"source variant {made_by[w.needs].name} failed"
        if error:
            failures.append({"variant": w.name, "format": "keras", "stage": "compress", "error": error})
        else:
            runs[w.name], keys[w.name] = w.output, w.key
    exports = []
    for w in export_works:
        error = outcomes[w.stage]
        if error:
            if w.needs is None or not outcomes[w.needs]:  # an export of a failed model: its model's row says
                failures.append({"variant": w.name, "format": w.fmt, "stage": "export", "error": error})
        else:
            exports.append(w.output)

    return _compare_stage(out, settings, runs, keys, exports, failures, ds, run)


def dependency_levels(variants: list[dict]) -> list[list[dict]]:
    """Variants in levels: those from the baseline first, then those whose source is in an earlier level
    (e.g. pqat from prune-0.5). Settings already refuse unknown sources and cycles."""
    names = {v["name"] for v in variants}
    levels, placed = [], {"baseline"}
    rest = list(variants)
    while rest:
        level = [v for v in rest if v.get("source", "baseline") in placed
                 or v.get("source", "baseline") not in names]  # unknown: fails as a row at its level
        if not level:
            raise EdgepackError(f"variants {[v['name'] for v in rest]} depend on each other in a cycle")
        levels.append(level)
        placed |= {v["name"] for v in level}
        rest = [v for v in rest if v not in level]
    return levels


def _input_size(baseline, source_options: dict) -> tuple[int, int] | None:
    """The (height, width) a given baseline takes, which image folders are read at; None: as stored."""
    if baseline is None:
        return None
    run = rundir.load_source(baseline, require_names=False, **source_options)
    shape = run.metadata.input_shape
    return (int(shape[0]), int(shape[1])) if len(shape) == 3 else None


def _model_hash(path) -> str:
    """sha256 of a model file, or of a SavedModel folder's files (for the stage key)."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    return _key(*[rundir.sha256_file(f) for f in files])


@dataclass(frozen=True)
class Work:
    """One stage to run unless complete: its marker, what it writes and the job that writes it."""

    stage: str  # stage id (marker name)
    key: str  # settings key of the stage and its inputs
    what: str  # for messages
    output: Path
    valid: Callable[[Path], bool]  # is `output` complete?
    job: Job
    name: str = ""  # variant name
    fmt: str = ""  # export format
    needs: str | None = None  # the stage that makes this one's input (None: ready from the start)


@dataclass
class _Runner:
    """Runs stages on the executor: skips complete ones, marks finished ones."""

    ex: InProcess
    stages: Stages
    progress: Progress
    data: object  # the data as the jobs take it (in-process: the Dataset; Ray: its object reference)
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall seconds, stages run now
    together: list[dict] = field(default_factory=list)  # stages run side by side: {stages, seconds (wall)}

    def __call__(self, works: list[Work]) -> dict[str, str | None]:
        """stage -> None when complete, else why not: the error text of a job that raised an
        EdgepackError, or that the stage it needs failed. A work runs after the one it `needs`."""
        errors: dict[str, str | None] = {}
        todo = []
        for w in works:
            if self.stages.done(w.stage, w.key) and w.valid(w.output):
                print(f"skip {w.what}: complete in {w.output}", flush=True)
                self.progress.finish(w.stage, skipped=True)
                errors[w.stage] = None
            else:
                todo.append(w)
        todo = critical_first(todo, self.progress.weights)
        index = {w.stage: i for i, w in enumerate(todo)}
        after = [(index[w.needs],) if w.needs in index else () for w in todo]
        jobs = [w.job for w in todo]
        # One at a time, with a line as each starts; or side by side (Ray; worker processes), with a line
        # as each starts and as each finishes.
        together = self.ex.together(jobs)
        t0 = time.time()
        for i, result in self.ex.as_completed(jobs, after, lambda i: self.progress.start(todo[i].stage,
                                                                                           todo[i].what)):
            w = todo[i]
            if result is None:
                self.progress.finish(w.stage)
                errors[w.stage] = f"not run: {w.needs} failed"
                continue
            errors[w.stage] = self._finish(w, result)
            if together:
                self.progress.finished(w.what, result)
        if together and todo:  # the stages overlapped: their wall time, not the sum of theirs
            self.together.append({"stages": [w.stage for w in todo], "seconds": time.time() - t0})
        return {w.stage: errors[w.stage] for w in works}

    def _finish(self, w: Work, result: Done | Failed) -> str | None:
        self.progress.finish(w.stage)
        if isinstance(result, Failed):  # a variant that fails becomes a row, not a crash
            print(f"FAILED {w.what}: {result.message}", flush=True)
            return result.message
        if not w.valid(w.output):  # written on a node whose disk this machine does not see
            raise EdgepackError(f"{w.what} finished on {result.host} but {w.output} is not complete here: "
                                "--out must be on a filesystem every Ray node sees")
        self.stages.mark(w.stage, w.key, result.seconds, result.host)
        self.seconds[w.stage] = result.seconds
        return None


# Stage id prefix -> what the stage-time summary calls it.
STAGE_KINDS = {"train": "training", "adopt": "adopting the model", "compress-": "fine-tuning",
               "export-": "exports", "compare": "comparison"}


def stage_kind(stage: str) -> str:
    return next(k for prefix, k in STAGE_KINDS.items() if stage.startswith(prefix))


def critical_first(works: list[Work], weights: dict[str, float]) -> list[Work]:
    """`works` ordered by the longest chain of work each starts (its own weight and that of the longest
    chain after it), longest first: a work always comes before the works that need it, and the
    fine-tunings that others wait for start first."""
    by_stage = {w.stage: w for w in works}
    chain: dict[str, float] = {}
    for w in reversed(_needs_first(works, by_stage)):
        chain[w.stage] = weights.get(w.stage, 0.0) + max(
            (chain[c.stage] for c in works if c.needs == w.stage), default=0.0)
    return sorted(works, key=lambda w: -chain[w.stage])


def _needs_first(works: list[Work], by_stage: dict[str, Work]) -> list[Work]:
    depth: dict[str, int] = {}

    def of(w: Work) -> int:
        if w.stage not in depth:
            depth[w.stage] = 0 if w.needs not in by_stage else of(by_stage[w.needs]) + 1
        return depth[w.stage]
    return sorted(works, key=of)


def stage_times(seconds: dict[str, float], wall: float, together: list[dict] | None = None) -> dict:
    """Where a pipeline's wall time went, by kind of stage: work seconds, stage count and the longest
    stage of each (stages resumed from an earlier run are not counted), and the rest (loading data,
    bookkeeping). `together`: batches of stages that ran side by side ({stages, seconds}: their wall
    time); a kind that ran only alone has `seconds` (its wall time), the others are counted by batch,
    in `together` ({kinds, seconds, work_seconds, stages})."""
    kinds: dict[str, dict] = {}
    for stage, sec in seconds.items():
        kind = stage_kind(stage)
        entry = kinds.setdefault(kind, {"seconds": 0.0, "work_seconds": 0.0, "stages": 0, "longest": None,
                                        "longest_seconds": 0.0})
        entry["work_seconds"] += sec
        entry["stages"] += 1
        if sec > entry["longest_seconds"]:
            entry["longest"], entry["longest_seconds"] = stage, sec
    batches = []
    for batch in together or []:
        ran = [s for s in batch["stages"] if s in seconds]
        batches.append({"kinds": sorted({stage_kind(s) for s in ran}, key=list(STAGE_KINDS.values()).index),
                        "seconds": round(batch["seconds"], 1),
                        "work_seconds": round(sum(seconds[s] for s in ran), 1), "stages": len(ran)})
        for s in ran:
            kinds[stage_kind(s)]["seconds"] -= seconds[s]  # counted in the batch's wall time instead
    for entry in kinds.values():
        entry["seconds"] += entry["work_seconds"]
    rest = wall - sum(k["seconds"] for k in kinds.values()) - sum(b["seconds"] for b in batches)
    return {"wall_seconds": round(wall, 1), "kinds": kinds, "together": batches,
            "other_seconds": round(rest, 1)}


def machine_cpu_times():
    import psutil

    return psutil.cpu_times()


def host_load(since) -> dict:
    """How loaded the machine was since `since` (psutil.cpu_times()): the share of CPU time the
    hypervisor gave to other machines (steal: a virtual machine's neighbours), the share busy (this run
    and anything else here), and the load average now. A quiet run has steal near 0."""
    now = machine_cpu_times()
    delta = {k: getattr(now, k) - getattr(since, k) for k in now._fields}
    total = sum(delta.values()) or 1.0
    idle = delta.get("idle", 0.0) + delta.get("iowait", 0.0)
    steal = delta.get("steal", 0.0)
    return {"steal_percent": round(100 * steal / total, 1),
            "busy_percent": round(100 * (total - idle - steal) / total, 1),
            "load_average_1m": round(os.getloadavg()[0], 2)}


def stage_lines(times: dict) -> list[str]:
    """The stage-time summary: a line per kind of stage that ran alone, and per batch of stages that ran
    side by side (then a line per kind in it, with its work)."""
    lines, kinds, shown = [], times["kinds"], set()
    for kind, k in kinds.items():
        longest = f"; longest {k['longest']} {k['longest_seconds']:.0f} s" if k["stages"] > 1 else ""
        batches = [b for b in times.get("together", []) if kind in b["kinds"]]
        if not batches:
            lines.append(f"  {kind:<22} {k['seconds']:7.0f} s  {k['stages']:3d} stage(s){longest}")
        for b in batches:
            if id(b) in shown:
                continue
            shown.add(id(b))
            label = " + ".join(b["kinds"])
            lines.append(f"  {label:<22} {b['seconds']:7.0f} s  {b['stages']:3d} stage(s) side by side "
                         f"({b['work_seconds']:.0f} s of work)")
            for part in b["kinds"]:
                pk = kinds[part]
                plong = f"; longest {pk['longest']} {pk['longest_seconds']:.0f} s" if pk["stages"] > 1 else ""
                lines.append(f"    {part:<20} {'':9}  {pk['stages']:3d} stage(s), {pk['work_seconds']:.0f} "
                             f"s of work{plong}")
    lines.append(f"  {'other':<22} {times['other_seconds']:7.0f} s  (loading data, checks, bookkeeping)")
    lines.append(f"  {'wall':<22} {times['wall_seconds']:7.0f} s  ({times['wall_seconds'] / 60:.1f} min)")
    host = times.get("host")
    if host:
        busy, steal = host["busy_percent"], host["steal_percent"]
        lines.append(f"  host: {busy:.0f}% of its CPU time busy, {steal:.0f}% taken by the hypervisor for "
                     f"other machines (steal; 0 on a quiet host); load average {host['load_average_1m']:.2f} "
                     "at the end")
    return lines


def _valid_run(path: Path) -> bool:
    try:
        rundir.load_run(path)
        return True
    except EdgepackError:
        return False


def _train_stage(out, settings, data_key, run: _Runner) -> tuple[Path, str]:
    t = settings["train"]
    cfg = TrainConfig(epochs=t["epochs"], batch_size=t["batch_size"], learning_rate=t["learning_rate"],
                      seed=settings["data"]["seed"], limit_train=settings["data"]["limit_train"],
                      limit_test=settings["data"]["limit_test"])
    path, key = out / "runs" / "baseline", _key(data_key, t)
    job = Job(stagejobs.train_job, (path, cfg, run.data), name="train baseline", **RESOURCES["train"])
    what = f"train baseline ({t['epochs']} epochs)"
    error = run([Work("train", key, what, path, _valid_run, job)])["train"]
    if error:
        raise EdgepackError(f"training the baseline failed: {error}")
    return path, key


def _compress_work(out, v, settings, source: Path, source_key: str, data, needs: str | None = None) -> Work:
    params = {**settings["finetune"], **v.get("params", {})}
    path, key = out / "runs" / v["name"], _key(source_key, v["technique"], params)
    job = Job(stagejobs.compress_job, (source, v["technique"], path, params, data, v["name"],
                                       settings["data"]["seed"]),
              name=f"compress {v['name']}", **RESOURCES["compress"])
    return Work(f"compress-{v['name']}", key, f"compress {v['name']} ({v['technique']}, {params})", path,
                _valid_run, job, name=v["name"], needs=needs)


def export_jobs(settings: dict) -> list[tuple[str, str, str | None]]:
    """(variant, format, reason to skip or None) for every model and export format.

    A QAT model's float formats are not its float model (they keep or drop the fake-quant in ways
    that do not match Keras), so formats that do not take QAT sources are skipped for them. A
    control (technique `finetune`) is exported in `control_formats` only, and only when a compressed
    variant is matched with it (same schedule); the others are steps towards a longer control.
    """
    chosen = settings["export"]["formats"]
    by_name, matched = _by_name(settings), control_schedules(settings)
    jobs = [("baseline", fmt, None) for fmt in chosen]
    for v in settings["variants"]:  # export says which formats apply to a source
        formats = chosen
        if v["technique"] == "finetune":
            formats = [f for f in chosen if f in settings["export"]["control_formats"]
                       and schedule(v, by_name, settings["finetune"]) in matched]
        _, skipped = for_source(formats, v["technique"] in QAT_TECHNIQUES, explicit=False)
        jobs += [(v["name"], fmt, skipped.get(fmt)) for fmt in formats]
    return jobs


def _by_name(settings: dict) -> dict[str, dict]:
    return {v["name"]: v for v in settings["variants"]}


def control_schedules(settings: dict) -> set[tuple]:
    """The schedules of the compressed variants: a control with one of them is some row's match."""
    by_name = _by_name(settings)
    return {schedule(v, by_name, settings["finetune"]) for v in settings["variants"]
            if v["technique"] != "finetune"}


def _export_work(out, name, fmt, settings, source_key: str, source: Path, data, needs: str | None = None
                 ) -> Work:
    path = out / "exports" / name / fmt
    # One options table for all formats in the settings; each format takes the options it knows.
    options = {k: v for k, v in settings["export"]["options"].items() if k in FORMATS[fmt].options}
    job = Job(stagejobs.export_job, (source, fmt, path, options, data), name=f"export {name} -> {fmt}",
              **RESOURCES["export"])
    return Work(f"export-{name}-{fmt}", _key(source_key, fmt, options), f"export {name} -> {fmt}", path,
                _export_complete, job, name=name, fmt=fmt, needs=needs)


def _export_complete(path: Path) -> bool:
    """An export folder with its summary and every file's golden vectors: a folder exported before
    golden files existed is exported again on resume, so every pipeline export can be verified."""
    try:
        formats = export_summary.read(path).formats
    except EdgepackError:
        return False
    return bool(formats) and all(f.file and golden_path(path / f.file).is_file() for f in formats.values())


def _compare_stage(out, settings, runs, keys, exports, failures, ds, run: _Runner) -> Results:
    c = settings["compare"]
    budget = Budget.parse(c["ram"], c["flash"])  # checked with the settings
    opts = CompareOptions(runs=c["runs"], warmup=c["warmup"], max_drop=c["max_drop"],
                          objective=c["objective"], fail_over=c["fail_over"], target=c["target"],
                          exact_reference=c["exact_reference"],
                          ram_bytes=budget.ram_bytes, flash_bytes=budget.flash_bytes)
    path = out / "report"
    inputs = [*runs.values(), *exports]
    # The run keys chain every upstream setting (data, training, fine-tuning); exports add their own.
    key = _key(keys, settings["export"], [str(p) for p in inputs], failures, c, settings["quick"])
    job = Job(stagejobs.compare_job, (inputs, path, runs["baseline"], opts, run.data, failures, settings),
              name="compare", **RESOURCES["compare"])
    error = run([Work("compare", key, f"compare {len(inputs)} models on {len(ds.y_test)} test images", path,
                      lambda p: is_current(p / "results.json"), job)])["compare"]
    if error:
        raise EdgepackError(error)
    results = read_results(path / "results.json")  # just written, or recorded by an earlier run
    gate = results.gate
    if gate and not gate.passed:
        raise GateFailed(f"--fail-over {gate.fail_over:g}: {', '.join(gate.failed)} dropped more "
                         f"than allowed (report in {path})", results)

    print(markdown_table(main_table(results)))
    print(f"report: {path / 'report.md'} ({(time.time() - run.progress.started) / 60:.1f} min in all)")
    times = stage_times(run.seconds, time.time() - run.progress.started, run.together)
    times["host"] = host_load(run.progress.cpu_times)
    rundir.write_json(out / "stage-times.json", times)
    print(f"stage times of this run ({out / 'stage-times.json'}; resumed stages not counted):")
    print("\n".join(stage_lines(times)), flush=True)
    for line in failure_lines(results):
        print(line, flush=True)
    return results
