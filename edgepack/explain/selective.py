"""Selective quantization: keep named layers in float (`keep_float`), by hand or to an accuracy goal.

keep_float (an option of tflite-int8 and onnx-int8: comma-separated layer names as `edgepack explain`
lists them, e.g. "conv2,probs", or the engine's full node/tensor names):
  ONNX   the nodes of those layers are passed to quantize_static's `nodes_to_exclude`;
  TFLite the converter has no per-layer denylist on its plain path, so the file is made by
         tf.lite.experimental.QuantizationDebugger with `denylisted_nodes` (its non-debug model).
         Such files have float32 input and output (the debugger's model interface).

auto (`edgepack explain FILE --auto --max-drop X`): layers are ranked by the per-layer table (worst
first); k = 0, 1, 2, ... worst layers are kept in float until the file's accuracy on the validation
images (training images not used for calibration) is within X points of its float source's. Each
step's accuracy, size and latency are recorded; the first step that meets the goal is kept.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from edgepack import data as data_mod
from edgepack import rundir, runtime
from edgepack.errors import EdgepackError, require_toolchain
from edgepack.explain import core
from edgepack.export import export
from edgepack.timing import measure

LATENCY_RUNS = 300  # batch-1 calls timed per step (after 20 warm-up calls)


def ranked_layers(table: list[dict]) -> list[str]:
    """Layer names worst first (a layer's worst row counts), from explain's per-layer rows."""
    return list(dict.fromkeys(r["layer"] for r in table))


def step_figures(path: Path, x: np.ndarray, y: np.ndarray) -> dict:
    """Validation accuracy (reference kernels: the file's own arithmetic), size and 1-thread latency."""
    probs = runtime.load(path, kernels="reference").predict(x)
    fast = runtime.load(path, threads=1)
    lat = measure(lambda: fast.predict(x[:1]), runs=LATENCY_RUNS, warmup=20)
    return {"accuracy": float(np.mean(probs.argmax(axis=1) == y)), "bytes": path.stat().st_size,
            "p50_ms": round(lat.p50_ms, 4)}


def auto(path: str | os.PathLike, out: str | os.PathLike, max_drop: float, source=None, data=None,
         images: int = core.DEFAULT_IMAGES, force: bool = False) -> dict:
    """Keep the k worst layers in float, k = 0, 1, ..., until the file is within `max_drop` points of its
    float source on the validation images; writes the chosen file, steps.json and steps.md to `out`."""
    path = Path(path)
    clf = core.open_int8(path)
    run = core.source_run(path, source)
    if run is None:
        raise EdgepackError(f"--auto re-exports {path.name} from its run folder: pass --source RUN_DIR")
    require_toolchain("edgepack explain --auto")
    with rundir.claim_output(out, {"FILE": path, "--source": run, "--data": data}, force):
        ds = data_mod.load_data(rundir.load_run(run).data_path(data))
        with rundir.atomic_dir(out, force) as tmp:
            result = core.explain_file(path, source, data, images, rss=False, ds=ds)
            x, y = core.validation_images(ds, images, int(clf.metadata.options["calibration_images"]))
            twin = Path(tmp) / ".float"
            export(run, core.FLOAT_TWIN[clf.format], twin, data_path=data, check_images=100, ds=ds)
            goal = step_figures(twin / f"{core.FLOAT_TWIN[clf.format]}{path.suffix}", x, y)
            steps, chosen = _steps(path, clf, run, ranked_layers(result["layers"]), x, y, goal, max_drop,
                                   Path(tmp), data, ds)
            final = core.copy_file(chosen, Path(tmp))
            summary = {"file": str(path), "format": clf.format, "source": str(run), "max_drop": max_drop,
                       "images": result["images"], "float": goal, "steps": steps,
                       "chosen": final.name, "met": steps[-1]["met"], "ranking": result["layers"]}
            for folder in Path(tmp).glob(".*"):  # the steps' exports (.float, .k1, ...)
                if folder.is_dir():
                    shutil.rmtree(folder)
            rundir.write_json(Path(tmp) / core.STEPS, summary)
            (Path(tmp) / "steps.md").write_text(render_steps(summary) + "\n")
    return summary


def _steps(path, clf, run, ranking, x, y, goal, max_drop, tmp: Path, data, ds) -> tuple[list[dict], Path]:
    options = {**clf.metadata.options, "max_drop": 100.0, "min_agreement": 0.0}  # chosen here, on x
    steps, current = [], path
    for k in range(len(ranking) + 1):
        if k:
            folder = tmp / f".k{k}"
            export(run, clf.format, folder, options={**options, "keep_float": ",".join(ranking[:k])},
                   data_path=data, check_images=100, ds=ds)
            current = folder / path.name
        fig = step_figures(current, x, y)
        drop = round(100 * (goal["accuracy"] - fig["accuracy"]), 4)
        steps.append({"k": k, "keep_float": ranking[:k], **fig, "drop_points": drop, "met": drop <= max_drop})
        if steps[-1]["met"]:
            break
    return steps, current


def render_steps(summary: dict) -> str:
    f = summary["float"]
    lines = [f"auto selective quantization of {summary['file']}: goal drop <= {summary['max_drop']:g} points "
             f"vs float ({f['accuracy']:.2%}, {f['bytes']:,} B, p50 {f['p50_ms']:.3f} ms) on "
             f"{summary['images']['n']} validation images",
             "| k | kept in float | accuracy | drop (pts) | bytes | p50 ms (1 thread) | goal met |",
             "|---|---|---|---|---|---|---|"]
    for s in summary["steps"]:
        met = "yes" if s["met"] else "no"
        lines.append(f"| {s['k']} | {', '.join(s['keep_float']) or '-'} | {s['accuracy']:.2%} | "
                     f"{s['drop_points']:.2f} | {s['bytes']:,} | {s['p50_ms']:.3f} | {met} |")
    first, last = summary["steps"][0], summary["steps"][-1]
    gained = 100 * (last["accuracy"] - first["accuracy"])
    lines.append(f"chosen: {summary['chosen']} (k={last['k']}): accuracy {gained:+.2f} points, size "
                 f"{last['bytes'] - first['bytes']:+,} B, p50 {last['p50_ms'] - first['p50_ms']:+.3f} ms "
                 "vs the "
                 "all-int8 file" + ("" if summary["met"] else "; the goal was NOT met"))
    return "\n".join(lines)
