"""`edgepack pipeline`: train -> compress -> export -> compare, resumable, in one command.

Output folder layout:
    settings.json        the resolved settings (defaults < TOML file < CLI), recorded for the report
    runs/<variant>/      run folders: baseline (train) and every compressed variant (compress)
    exports/<variant>/   exported files of each run folder (export)
    report/              report.md, report.html, results.json/.csv, plots (compare)
    stages/<stage>.json  completion markers: the stage's settings key and wall time

Resuming: a stage is skipped when its marker's key equals the key of the current settings (its own
and its inputs') and its output is still complete. Every stage writes its output under a temporary
name and renames it when complete, so a run killed at any point (even SIGKILL) leaves only
temporary folders, which the next run removes before it starts.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgepack import rundir
from edgepack.errors import EdgepackError
from edgepack.runtime.golden import golden_path
from edgepack.settings import load_settings, recipe


@dataclass
class Progress:
    """Prints what runs, how far the pipeline is and a rough time left (from stage weights)."""

    weights: dict[str, float]  # stage id -> expected relative cost
    started: float = field(default_factory=time.time)
    done: float = 0.0

    def start(self, stage: str, what: str) -> None:
        i = list(self.weights).index(stage) + 1
        elapsed = time.time() - self.started
        left = ""
        if self.done > 0:
            rest = sum(self.weights.values()) - self.done
            left = f", ~{elapsed / self.done * rest / 60:.1f} min left"
        print(f"[{i}/{len(self.weights)}] {what} ({elapsed / 60:.1f} min elapsed{left})", flush=True)

    def finish(self, stage: str) -> None:
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

    def mark(self, stage: str, key: str, seconds: float) -> None:
        """Written only when a stage completed (a failed stage has no marker and runs again)."""
        rundir.write_json(self.folder / f"{stage}.json", {"key": key, "seconds": round(seconds, 2)})


def remove_leftovers(out: Path) -> list[Path]:
    """Delete temporary folders/files a killed run left (names contain rundir.TMP_MARK)."""
    gone = []
    for p in sorted(out.rglob(f"*{rundir.TMP_MARK}*"), key=lambda p: -len(p.parts)):
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
    for v in settings["variants"]:
        epochs = recipe(v, settings["finetune"])[0]
        stages[f"compress-{v['name']}"] = epochs * (2.0 if "qat" in v["technique"] else 1.3)
    for name, fmt, skip in export_jobs(settings):
        if not skip:
            stages[f"export-{name}-{fmt}"] = 0.25
    stages["compare"] = 0.15 * len(stages)
    return stages


def pipeline(out: str | Path, data_path: str | Path | None = None, config: str | Path | None = None,
             quick: bool = False, baseline: str | Path | None = None, overrides: dict | None = None,
             source_options: dict | None = None) -> dict:
    """Run every stage not already complete; returns the comparison results (see edgepack.report).

    `baseline`: a trained run folder, or a user's Keras model file / SavedModel folder (adopted as the
    baseline run folder, with `source_options` class_names / preprocessing: edgepack.rundir.load_source).
    """
    from edgepack.errors import require_toolchain

    require_toolchain("edgepack pipeline")
    settings = load_settings(config, quick, overrides).model_dump()  # checked before any work
    given = {"--baseline": baseline, "--data": data_path, "--config": config}
    with rundir.claim_output(out, given, resume=True):  # locked before remove_leftovers
        return _pipeline(out, data_path, settings, baseline, source_options or {})


def _pipeline(out, data_path, settings: dict, baseline, source_options: dict) -> dict:
    if data_path is not None:
        settings["data"]["path"] = str(data_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for p in remove_leftovers(out):
        print(f"removed {p} (left by an interrupted run)", flush=True)
    rundir.write_json(out / "settings.json", settings)
    stages = Stages(out)
    progress = Progress(plan(settings, baseline))
    from edgepack import data as data_mod

    d = settings["data"]
    ds = data_mod.load_data(d["path"], d["limit_train"], d["limit_test"], d["seed"],
                            image_size=_input_size(baseline, source_options))
    print(f"data: {len(ds.y_train)} training / {len(ds.y_test)} test images from {ds.source}"
          f"{' (--quick subset)' if settings['quick'] else ''}", flush=True)
    data_key = _key(ds.sha256, d)
    failures: list[dict] = []

    runs: dict[str, Path] = {}
    keys: dict[str, str] = {}
    if baseline is not None and rundir.is_run_folder(baseline):
        run = rundir.load_run(baseline)  # checked: complete, model intact
        model_hash = run.metadata.model_sha256 or rundir.sha256_file(run.model_path)
        runs["baseline"], keys["baseline"] = run.path, _key(model_hash, data_key)  # data: as if trained
    elif baseline is not None:  # a user's model file becomes the baseline run folder
        from edgepack.fitting import adopt

        path = out / "runs" / "baseline"
        key = _key(_model_hash(baseline), data_key, source_options)
        error = _run_stage(stages, progress, "adopt", key, f"adopt {baseline} as the baseline", path,
                           _valid_run, lambda: adopt(baseline, path, ds, force=True, **source_options))
        if error:
            raise EdgepackError(f"adopting {baseline} as the baseline failed: {error}")
        runs["baseline"], keys["baseline"] = path, key
    else:
        runs["baseline"], keys["baseline"] = _train_stage(out, settings, ds, data_key, stages, progress)

    for v in settings["variants"]:
        src = v.get("source", "baseline")
        if src not in runs:
            failures.append({"variant": v["name"], "format": "keras", "stage": "compress",
                             "error": f"source variant {src} failed"})
            continue
        result = _compress_stage(out, v, settings, runs[src], keys[src], ds, stages, progress)
        if isinstance(result, dict):
            failures.append(result)
        else:
            runs[v["name"]], keys[v["name"]] = result

    exports = []
    for name, fmt, skip in export_jobs(settings):
        if skip:
            print(f"not exporting {name} -> {fmt}: {skip}", flush=True)
            failures.append({"variant": name, "format": fmt, "stage": "export", "status": "skipped",
                             "error": skip})
        elif name in runs:
            result = _export_stage(out, name, fmt, settings, runs[name], keys[name], ds, stages, progress)
            (failures.append if isinstance(result, dict) else exports.append)(result)

    return _compare_stage(out, settings, runs, keys, exports, failures, ds, stages, progress)


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


def _run_stage(stages: Stages, progress: Progress, stage: str, key: str, what: str, output: Path,
               valid, work, catch: bool = True) -> str | None:
    """Skip a stage that is complete for `key`, else run `work()`; returns an error text on failure."""
    if stages.done(stage, key) and valid(output):
        print(f"skip {what}: complete in {output}", flush=True)
        progress.finish(stage)
        return None
    progress.start(stage, what)
    t0 = time.time()
    try:
        work()
    except EdgepackError as e:  # a variant that fails becomes a row, not a crash
        if not catch:
            raise
        print(f"FAILED {what}: {e}", flush=True)
        progress.finish(stage)
        return str(e)
    stages.mark(stage, key, time.time() - t0)
    progress.finish(stage)
    return None


def _valid_run(path: Path) -> bool:
    try:
        rundir.load_run(path)
        return True
    except EdgepackError:
        return False


def _train_stage(out, settings, ds, data_key, stages, progress) -> tuple[Path, str]:
    from edgepack.train import TrainConfig, train

    t = settings["train"]
    cfg = TrainConfig(epochs=t["epochs"], batch_size=t["batch_size"], learning_rate=t["learning_rate"],
                      seed=settings["data"]["seed"], limit_train=settings["data"]["limit_train"],
                      limit_test=settings["data"]["limit_test"])
    path, key = out / "runs" / "baseline", _key(data_key, t)
    error = _run_stage(stages, progress, "train", key, f"train baseline ({t['epochs']} epochs)", path,
                       _valid_run, lambda: train(None, path, cfg, force=True, ds=ds))
    if error:
        raise EdgepackError(f"training the baseline failed: {error}")
    return path, key


def _compress_stage(out, v, settings, source: Path, source_key: str, ds, stages, progress):
    from edgepack.compress import compress

    params = {**settings["finetune"], **v.get("params", {})}
    path, key = out / "runs" / v["name"], _key(source_key, v["technique"], params)
    error = _run_stage(stages, progress, f"compress-{v['name']}", key,
                       f"compress {v['name']} ({v['technique']}, {params})", path, _valid_run,
                       lambda: compress(source, v["technique"], path, params=params, force=True, ds=ds,
                                        variant=v["name"], seed=settings["data"]["seed"]))
    if error:
        return {"variant": v["name"], "format": "keras", "stage": "compress", "error": error}
    return path, key


def export_jobs(settings: dict) -> list[tuple[str, str, str | None]]:
    """(variant, format, reason to skip or None) for every model and export format.

    A QAT model's float formats are not its float model (they keep or drop the fake-quant in ways
    that do not match Keras), so formats that do not take QAT sources are skipped for them.
    """
    from edgepack.export.context import QAT_TECHNIQUES
    from edgepack.export.formats import for_source

    techniques = {"baseline": "baseline", **{v["name"]: v["technique"] for v in settings["variants"]}}
    jobs = []
    for name, technique in techniques.items():  # export says which formats apply to a source
        _, skipped = for_source(settings["export"]["formats"], technique in QAT_TECHNIQUES, explicit=False)
        jobs += [(name, fmt, skipped.get(fmt)) for fmt in settings["export"]["formats"]]
    return jobs


def _export_stage(out, name, fmt, settings, source: Path, source_key: str, ds, stages, progress):
    from edgepack.export import FORMATS, export

    path = out / "exports" / name / fmt
    # One options table for all formats in the settings; each format takes the options it knows.
    options = {k: v for k, v in settings["export"]["options"].items() if k in FORMATS[fmt].options}
    key = _key(source_key, fmt, options)
    error = _run_stage(stages, progress, f"export-{name}-{fmt}", key, f"export {name} -> {fmt}", path,
                       _export_complete,
                       lambda: export(source, [fmt], path, options=options, force=True, ds=ds))
    if error:
        return {"variant": name, "format": fmt, "stage": "export", "error": error}
    return path


def _export_complete(path: Path) -> bool:
    """An export folder with its summary and every file's golden vectors: a folder exported before
    golden files existed is exported again on resume, so every pipeline export can be verified."""
    try:
        formats = rundir.read_json(path / "export.json").get("formats") or {}
    except EdgepackError:
        return False
    return bool(formats) and all(golden_path(path / f["file"]).is_file() for f in formats.values())


def _compare_stage(out, settings, runs, keys, exports, failures, ds, stages, progress) -> dict:
    from edgepack.report.compare import CompareOptions, GateFailed, compare

    c = settings["compare"]
    opts = CompareOptions(runs=c["runs"], warmup=c["warmup"], max_drop=c["max_drop"],
                          fail_over=c["fail_over"])
    path = out / "report"
    inputs = [*runs.values(), *exports]
    # The run keys chain every upstream setting (data, training, fine-tuning); exports add their own.
    key = _key(keys, settings["export"], [str(p) for p in inputs], failures, c, settings["quick"])
    results: dict = {}

    def work():
        t0 = time.time()
        try:
            results.update(compare(inputs, path, baseline=runs["baseline"], control=None,
                                   options=opts, force=True, ds=ds, failures=failures, settings=settings))
        except GateFailed as e:  # the report is written: mark the stage, then fail the command
            results.update(e.results)
            stages.mark("compare", key, time.time() - t0)
            raise
    _run_stage(stages, progress, "compare", key,
               f"compare {len(inputs)} models on {len(ds.y_test)} test images", path,
               lambda p: (p / "results.json").is_file(), work, catch=False)
    if not results:  # skipped: the recorded results stand, gate included
        results = rundir.read_json(path / "results.json")
        gate = results.get("gate")
        if gate and not gate["passed"]:
            raise GateFailed(f"--fail-over {gate['fail_over']:g}: {', '.join(gate['failed'])} dropped more "
                             f"than allowed (report in {path})", results)
    from edgepack.report.render import failure_lines, main_table, markdown_table

    print(markdown_table(main_table(results)))
    print(f"report: {path / 'report.md'} ({(time.time() - progress.started) / 60:.1f} min in all)")
    for line in failure_lines(results):
        print(line, flush=True)
    return results
