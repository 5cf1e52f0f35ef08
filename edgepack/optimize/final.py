"""The end of a search: the Pareto front of every measured file, the pick at the goal, and the
TEST figures of the picks (the first and only time the search reads the test images) next to their
matched fine-tune controls (the same source, phases of epochs and learning rates, training images).
"""

from __future__ import annotations

from edgepack import data as data_mod
from edgepack import rundir
from edgepack.compress import compress
from edgepack.compress.core import flag
from edgepack.compress.schedule import Phase
from edgepack.compress.techniques import TECHNIQUES
from edgepack.export import export
from edgepack.export import summary as export_summary
from edgepack.fitting import evaluate
from edgepack.model import load_run_model
from edgepack.optimize import space
from edgepack.optimize.holdout import search_data
from edgepack.optimize.journal import finished
from edgepack.optimize.trial import EXPORT_OPTIONS, measure_file
from edgepack.report.pick import Candidate, pick
from edgepack.report.stats import compare_predictions
from edgepack.target import DEFAULT, Budget, fits

RATIOS = (10, 15)  # report the most accurate file at least this many times smaller than the source


def collect_points(study, out, source: dict) -> list[dict]:
    """Every measured file of the study's complete trials, with its trial's recipe and ratio."""

    points = []
    for t in finished(study):
        result_file = out / "trials" / str(t.number) / "result.json"
        if t.user_attrs.get("status") != "ok" or not result_file.is_file():
            continue
        result = rundir.read_json(result_file)
        for p in result["points"]:
            points.append({**p, "id": f"{t.number}/{p['format']}", "trial": t.number,
                           "chain": result["chain"],
                           "recipe": result["recipe"], "last_run": result["steps"][-1]["run"],
                           "drop_pts": 100 * (source["val_accuracy"] - p["accuracy"]),
                           "size_ratio": source["gzip_bytes"] / p["gzip_bytes"], "on_front": False})
    mark_front(points)
    return points


def _dominates(a: dict, b: dict) -> bool:
    ka = (-a["accuracy"], a["gzip_bytes"], a["latency"]["p50_ms"])
    kb = (-b["accuracy"], b["gzip_bytes"], b["latency"]["p50_ms"])
    return all(x <= y for x, y in zip(ka, kb, strict=True)) and ka != kb


def mark_front(points: list[dict]) -> None:
    """on_front: no other file is at least as accurate, as small and as fast, and better in one."""
    for p in points:
        p["on_front"] = not any(_dominates(q, p) for q in points if q is not p)


def choose(points: list[dict], max_drop: float, objective: str, opts=None) -> dict:
    """{"pick": id or None, "ratio_10": id, "ratio_15": id}: the pick at the goal (edgepack.report.pick,
    validation figures) and the most accurate files >= 10x / >= 15x smaller than the source. With a
    device target in `opts` (SearchOptions) the pick runs there and fits its budget."""
    target = getattr(opts, "target", DEFAULT)
    budget = Budget(getattr(opts, "ram_bytes", None), getattr(opts, "flash_bytes", None))
    cands = [Candidate(p, p["accuracy"], p["gzip_bytes"], p["latency"]) for p in points
             if p["drop_pts"] <= max_drop + 1e-9 and (target == DEFAULT or fits(target, budget, p["file"]))]
    best = pick(cands, objective)
    chosen = {"pick": best.key["id"] if best else None}
    for r in RATIOS:
        big = [p for p in points if p["size_ratio"] >= r]
        chosen[f"ratio_{r}"] = max(big, key=lambda p: p["accuracy"])["id"] if big else None
    return chosen


def test_figures(point: dict, out, source: dict, spec: dict, seed: int) -> dict:
    """The file's TEST accuracy, its matched fine-tune control's (exported to the same format) and
    the change between them (McNemar + paired bootstrap on the test images)."""
    search, _ = search_data(spec)
    full = full_data(spec)
    timing = {"runs": 1, "warmup": 0, "rounds": 1}  # accuracy only: latency is the validation figure's
    mine, pred = measure_file(point["file"], full.x_test, full.y_test, timing)
    steps = [space.Step(s["technique"], s["params"]) for s in point["recipe"]]
    phases = space.schedule(steps, TECHNIQUES)
    control_file = control(phases, point["format"], out, source, search, seed)
    ctrl, ctrl_pred = measure_file(control_file, full.x_test, full.y_test, timing)
    return {"test_accuracy": mine["accuracy"], "test_images": int(len(full.y_test)),
            "control": {"phases": [p.record() for p in phases], "file": str(control_file),
                        "test_accuracy": ctrl["accuracy"]},
            "vs_control": compare_predictions(pred, ctrl_pred, full.y_test)}


def full_data(spec: dict):
    """The data set the search split, with its TEST images."""
    return data_mod.load_data(spec["path"], spec.get("limit_train"), spec.get("limit_test"), spec["seed"],
                              image_size=tuple(spec["image_size"]) if spec.get("image_size") else None)


def source_test_accuracy(source: dict, spec: dict) -> float:
    """The source's Keras accuracy on the TEST images, shown next to its validation accuracy (the same
    Keras model, out/source): a validation figure well above it would say the split was learned."""
    run = rundir.load_run(source["run"])
    metrics, _ = evaluate(load_run_model(run), full_data(spec), run.metadata.pixel_scaling)
    return float(metrics["accuracy"])


def control(phases: list[Phase], fmt: str, out, source: dict, ds, seed: int):
    """The matched fine-tune control: `finetune` runs in sequence, one per phase (epochs, learning
    rate, distillation), from the source on the search's training images, exported to `fmt`. Reused
    when complete."""
    key = "-".join(p.name.replace("-lr", "lr") for p in phases)  # e2lr0.001-e2lr0.0001(-kd0.5)
    folder = out / "controls" / key
    prev = source["run"]
    for i, ph in enumerate(phases):
        step = folder / f"{i}-finetune"
        if not rundir.is_run_folder(step):
            compress(prev, "finetune", step, params=ph.finetune_params(), ds=ds, seed=seed)
        prev = step
    exported = folder / f"export-{fmt}"
    if not (exported / "export.json").is_file():
        export(prev, [fmt], exported, options=EXPORT_OPTIONS, ds=ds)
    return exported / export_summary.read(exported).formats[fmt].file


def reproduce(point: dict, source_model: str, data: str, seed: int) -> str:
    """The commands that rebuild the file. compress and export hold out what the source held out
    (edgepack.sources.held_out_like): from a source trained with `train --validation-split` and the
    search's seed and fraction they fine-tune on the trial's images; else on all training images."""
    lines, prev = [], source_model
    for i, s in enumerate(point["recipe"]):
        run = f"runs/opt-{point['trial']}-{i}-{s['technique']}"
        opts = " ".join(f"{flag(k)} {space.option_text(v)}" for k, v in s["params"].items())
        lines.append(f"edgepack compress --model {prev} --technique {s['technique']} {opts} --data {data} "
                     f"--seed {seed} --out {run}")
        prev = run
    lines.append(f"edgepack export --model {prev} --format {point['format']} --data {data} "
                 f"--out runs/opt-{point['trial']}-export")
    return " && \\\n  ".join(lines)

