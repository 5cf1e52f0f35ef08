"""One trial of the search: a pure function of (its job: recipe, paths, seed) that writes only under
its own folder and returns a JSON-able result. `run_trials` is the one seam that runs jobs (in this
process, one after another; a cluster executor can replace it without touching anything else).

A trial folder (out/trials/<number>/):
    steps/<i>-<technique>/   compress run folders (their "test" figures are VALIDATION figures)
    export/                  the int8 files of the last step (export.json)
    result.json              written last (atomically): the trial is complete when it exists
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from edgepack import rundir, runtime
from edgepack.compress import compress
from edgepack.errors import EdgepackError
from edgepack.executor import Failed, Job
from edgepack.export import export
from edgepack.export import summary as export_summary
from edgepack.optimize.holdout import search_data
from edgepack.report.env import host
from edgepack.report.stats import latency_interval
from edgepack.report.weights import sizes
from edgepack.stagejobs import RESOURCES
from edgepack.timing import measure

RESULT = "result.json"
# The search judges each int8 file on validation images against the SOURCE (its constraint), so
# export's own gate (a file against its own Keras model) is turned off: it would drop trials by another rule.
EXPORT_OPTIONS = {"max_drop": 100.0, "min_agreement": 0.0}
PRUNE_MARGIN_POINTS = 3.0  # a step this far beyond the goal (Keras, validation) stops its trial


def measure_file(path: Path, x: np.ndarray, y: np.ndarray, timing: dict) -> dict:
    """A file run as apps run it (edgepack.runtime, 1 thread): accuracy on (x, y), sizes, batch-1
    latency in rounds (milliseconds), and its predictions."""
    path = Path(path)
    clf = runtime.load(path, threads=1)
    pred = clf.predict(x).argmax(axis=1)
    raw, gz = sizes(path)
    one = x[:1]
    lat = measure(lambda: clf.predict(one), runs=timing["runs"], warmup=timing["warmup"],
                  rounds=timing["rounds"]).as_dict()
    return {"file": str(path), "accuracy": float(np.mean(pred == y)), "bytes": raw, "gzip_bytes": gz,
            "latency": lat, "latency_interval": latency_interval(lat)}, pred


def run_trial(job: dict) -> dict:
    """Run one trial's chain, export and measurement; reuses complete step folders and a complete
    result. job: number, chain, steps [{technique, params}], source (run folder), data (spec),
    formats, out (trial folder), seed, timing {runs, warmup, rounds}, reference_accuracy, max_drop."""
    out = Path(job["out"])
    if (out / RESULT).is_file():
        return rundir.read_json(out / RESULT)
    t0 = time.time()
    result = {"number": job["number"], "chain": job["chain"], "recipe": job["steps"], "steps": [],
              "points": [], "error": None}
    try:
        result.update(_run(job, out, result["steps"], result["points"]))
    except (OSError, MemoryError):
        raise  # the machine's problem (disk full, ...): stop the search, nothing is recorded
    except EdgepackError as e:  # a step or every export failed: a failed trial, not a failed search
        result.update(status="failed", error=str(e))
    except Exception as e:  # TensorFlow raises many types; the trial fails with its cause, the search goes on
        result.update(status="failed", error=f"{type(e).__name__}: {str(e)[:300]}")
    result["seconds"] = round(time.time() - t0, 2)

    result["host"] = host()  # node, CPU model and ISA flags that timed its files
    rundir.write_json(out / RESULT, result)
    return result


def _run(job: dict, out: Path, steps: list, points: list) -> dict:
    ds, _ = search_data(job["data"])
    floor = job["reference_accuracy"] - (job["max_drop"] + PRUNE_MARGIN_POINTS) / 100
    prev = job["source"]
    for i, step in enumerate(job["steps"]):
        folder = out / "steps" / f"{i}-{step['technique']}"
        s0 = time.time()
        if not rundir.is_run_folder(folder) and not _reuse(job, f"steps/{folder.name}", rundir.is_run_folder):
            compress(prev, step["technique"], folder, params=step["params"], ds=ds, seed=job["seed"])
        acc = rundir.load_run(folder).metrics.accuracy
        steps.append({**step, "run": str(folder), "val_accuracy": acc, "seconds": round(time.time() - s0, 2)})
        if acc < floor:  # hopeless: the later steps and the export would not bring it back
            return {"status": "pruned", "pruned_at": i, "pruned_rule": f"Keras validation accuracy {acc:.4f}"
                    f" < source {job['reference_accuracy']:.4f} - (max_drop + {PRUNE_MARGIN_POINTS:g})"
                    " points"}
        prev = folder
    e0 = time.time()
    done = _exported(out / "export") or _reuse(job, "export", _exported)
    if not done:
        export(prev, job["formats"], out / "export", options=EXPORT_OPTIONS, ds=ds)
    for fmt, entry in export_summary.read(out / "export").formats.items():
        if entry.status != "ok":
            continue
        point, _ = measure_file(out / "export" / entry.file, ds.x_test, ds.y_test, job["timing"])
        points.append({"format": fmt, **point})
    return {"status": "ok", "export_seconds": round(time.time() - e0, 2)}


def _reuse(job: dict, relative: str, complete) -> bool:
    """Copy the folder `relative` of the trial this one retries (job["retry_of"]: cut off by a kill,
    same parameters, data and seed) when `complete(old_folder)`, instead of redoing its work. The copy
    lands atomically; its metadata keeps naming the old trial's folders it was made from."""
    if job.get("retry_of") is None:
        return False
    old = Path(job["out"]).parent / str(job["retry_of"]) / relative
    if not complete(old):
        return False
    with rundir.atomic_dir(Path(job["out"]) / relative) as tmp:
        shutil.copytree(old, tmp, dirs_exist_ok=True)
    print(f"trial {job['number']}: reused {relative} of trial {job['retry_of']} (complete there)", flush=True)
    return True


def _exported(folder: Path) -> bool:
    return (folder / "export.json").is_file()


def on_executor(ex):
    """A run_trials for a stage executor (edgepack.executor; `edgepack optimize --ray`): every trial one task
    (stagejobs.RESOURCES["trial"]: it times its files, so one trial per host at a time)."""
    def run(jobs: list[dict]) -> list[dict]:
        outcomes = ex.run([Job(run_trial, (job,), name=f"trial {job['number']}", **RESOURCES["trial"])
                           for job in jobs])
        return [{"number": job["number"], "chain": job["chain"], "recipe": job["steps"], "steps": [],
                 "points": [], "status": "failed", "error": o.message, "seconds": 0.0}
                if isinstance(o, Failed) else o for job, o in zip(jobs, outcomes, strict=True)]

    return run


def run_trials(jobs: list[dict]) -> list[dict]:
    """THE seam: run trial jobs and return their results in order (here: in this process, one after
    another). Each job is independent: a parallel or cluster executor may run them anywhere that sees
    the same paths."""
    return [run_trial(job) for job in jobs]
