"""The search's output files: report.json, report.md, pareto.csv and pareto.png (in the search folder).

Each is written atomically (complete or absent). Figures are VALIDATION figures except the picks'
"test_*" fields and their controls'. Sizes are gzip'ed bytes (level 9), latencies 1-thread batch-1
milliseconds (median of all timed calls, and the min-max of the round medians as its spread).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from edgepack import rundir
from edgepack.compress.schedule import phase_of
from edgepack.optimize import final
from edgepack.optimize.journal import SAME_AS, finished
from edgepack.optimize.space import recipe_text

CSV_FIELDS = ("id", "trial", "chain", "format", "val_accuracy", "drop_pts", "gzip_bytes", "size_ratio",
              "p50_ms", "p50_low_ms", "p50_high_ms", "on_front", "recipe")


def write_report(out: Path, opts, study, source: dict, spec: dict, split: dict, run_info: dict) -> dict:
    points = final.collect_points(study, out, source)
    chosen = final.choose(points, opts.max_drop, opts.objective, opts)
    source = {**source, "test_accuracy": final.source_test_accuracy(source, spec)}  # reads the test images
    by_id = {p["id"]: p for p in points}
    picks = {}
    for role, pid in chosen.items():
        if pid is None:
            continue
        if pid not in picks:  # the TEST images are read here, for the picks only
            p = by_id[pid]
            picks[pid] = {"roles": [], **final.test_figures(p, out, source, spec, opts.seed),
                          "command": final.reproduce(p, opts.model, spec["path"], opts.seed)}
        picks[pid]["roles"].append(role)
    trials = [{"number": t.number, "state": t.state.name, **t.user_attrs, "params": t.params}
              for t in finished(study)]
    report = {"settings": opts.record(), "budget_minutes": opts.budget_minutes, "trials_asked": opts.trials,
              "source": source, "validation_split": split, "search": run_info, "trials": trials,
              "points": points, "chosen": chosen, "picks": picks}
    rundir.write_json(out / "report.json", report)
    write_atomic(out / "pareto.csv", _csv(points).encode())
    write_atomic(out / "report.md", markdown(report).encode())
    _plot(out / "pareto.png", points, chosen["pick"], source, opts.max_drop)
    return report


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _csv(points: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for p in points:
        lat = p["latency_interval"] or {}
        w.writerow({"id": p["id"], "trial": p["trial"], "chain": p["chain"], "format": p["format"],
                    "val_accuracy": p["accuracy"], "drop_pts": round(p["drop_pts"], 4),
                    "gzip_bytes": p["gzip_bytes"], "size_ratio": round(p["size_ratio"], 3),
                    "p50_ms": p["latency"]["p50_ms"], "p50_low_ms": lat.get("low_ms"),
                    "p50_high_ms": lat.get("high_ms"), "on_front": p["on_front"],
                    "recipe": recipe_text(p["recipe"])})
    return buf.getvalue()


def _row(p: dict) -> str:
    lat = p["latency_interval"]
    spread = f" ({lat['low_ms']:.3f}-{lat['high_ms']:.3f})" if lat else ""
    return (f"| {p['id']} | {recipe_text(p['recipe'])} | {p['accuracy']:.2%} | {-p['drop_pts']:+.2f} | "
            f"{p['gzip_bytes'] / 1024:.1f} | {p['size_ratio']:.1f}x | {p['latency']['p50_ms']:.3f}{spread} |")


def markdown(r: dict) -> str:
    s, src, split = r["settings"], r["source"], r["validation_split"]
    lines = [
        "# edgepack optimize", "",
        f"Goal: the {'smallest' if s['objective'] == 'size' else 'fastest'} int8 file within "
        f"{s['max_drop']:g} accuracy points of `{s['model']}` on VALIDATION images.", "",
        f"- Source (Keras): validation accuracy {src['val_accuracy']:.2%}, TEST accuracy "
        f"{src['test_accuracy']:.2%}; {src['gzip_bytes'] / 1024:.1f} KiB gzip'ed (weights only).",
        _split_line(split),
        f"- Search: {len(r['trials'])} trials{_repeats(r['trials'])}, "
        f"{r['search']['spent_seconds'] / 60:.1f} min spent "
        f"(budget {r['budget_minutes']:g} min), stopped by {r['search']['stopped_by']}.", "",
        "## Pareto front (validation)", "",
        "| file | recipe | val acc | change pts | KiB gzip | vs source | p50 ms (round spread) |",
        "|---|---|---|---|---|---|---|",
        *[_row(p) for p in sorted(r["points"], key=lambda p: p["gzip_bytes"]) if p["on_front"]], "",
        "![Pareto front](pareto.png)", "", "## Picks", "",
    ]
    if not r["picks"]:
        lines.append(f"No file is within {s['max_drop']:g} points of the source on validation images.")
    for pid, pk in r["picks"].items():
        v = pk["vs_control"]
        p = next(q for q in r["points"] if q["id"] == pid)
        lines += [f"### {pid} ({', '.join(pk['roles'])})", "", _HEAD, _row(p), "",
                  f"- TEST accuracy {pk['test_accuracy']:.2%} (validation {p['accuracy']:.2%}); "
                  f"{p['size_ratio']:.1f}x smaller than the source.",
                  f"- Matched fine-tune control ({_phases(pk['control']['phases'])},"
                  f" same format): TEST {pk['control']['test_accuracy']:.2%}; "
                  f"change {v['delta_pts']:+.2f} points "
                  f"(95% CI {v['ci_pts'][0]:+.2f} to {v['ci_pts'][1]:+.2f}, McNemar p {v['p_value']:.3g}"
                  f"{', within noise' if v['within_noise'] else ''}).",
                  ("- Reproduce (compress and export hold out what the source held out, so the commands "
                   "fine-tune on the trial's training images):"),
                  "",
                  "```", pk["command"], "```", ""]
    if not r["chosen"].get("ratio_10"):
        lines.append("No file is >= 10x smaller than the source.")
    return "\n".join(lines) + "\n"


def _split_line(split: dict) -> str:
    if "val_data" in split:
        held = split["held_out_by_source"]
        return (f"- Validation images: the {split['validation_images']} images of --val-data "
                f"`{split['val_data']}` (sha256 {split['val_data_sha256'][:12]}); trials train on "
                f"{split['train_images']} training images of --data"
                f"{f' (less the {held} the source held out)' if held else ''}. The test images are read "
                "only for the source's test accuracy and the picks below.")
    return (f"- Validation split: the {split['validation_images']} training images the source held out "
            f"(fraction {split['fraction']:g}, seed {split['seed']}, stratified; indices sha256 "
            f"{split['indices_sha256'][:12]}); trials train on the other {split['train_images']}. The test "
            "images are read only for the source's test accuracy and the picks below.")


def _repeats(trials: list[dict]) -> str:
    same = [t for t in trials if SAME_AS in t]
    if not same:
        return ""
    pairs = ", ".join(f"{t['number']} = {t[SAME_AS]}" for t in same)
    return f" ({len(same)} asked for a recipe already run and reused its result: {pairs})"


def _phases(recorded) -> str:
    return ", ".join(f"{p.epochs} epoch(s) at {p.learning_rate:g}"
                     + (f" distilled ({p.distill:g}, T {p.temperature:g})" if p.distill else "")
                     + (f" augmented ({p.augment})" if p.augment != "none" else "")
                     for p in map(phase_of, recorded))


_HEAD = ("| file | recipe | val acc | change pts | KiB gzip | vs source | p50 ms (round spread) |\n"
         "|---|---|---|---|---|---|---|")


def _plot(path: Path, points: list[dict], pick_id: str | None, source: dict, max_drop: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=100)
    axis = (("gzip'ed KiB", lambda p: p["gzip_bytes"] / 1024),
            ("1-thread batch-1 p50 ms", lambda p: p["latency"]["p50_ms"]))
    for ax, (xlabel, xs) in zip(axes, axis, strict=True):
        for group, style in ((False, {"color": "0.7", "s": 20}), (True, {"color": "tab:red", "s": 40})):
            sel = [p for p in points if p["on_front"] == group]
            ax.scatter([xs(p) for p in sel], [100 * p["accuracy"] for p in sel],
                       label="Pareto front" if group else "all files", **style)
        if "p50" in xlabel:  # the round spread of each front point's latency
            for p in (q for q in points if q["on_front"] and q["latency_interval"]):
                lat = p["latency_interval"]
                ax.plot([lat["low_ms"], lat["high_ms"]], [100 * p["accuracy"]] * 2, color="tab:red", lw=1)
        for p in (q for q in points if q["id"] == pick_id):
            ax.scatter([xs(p)], [100 * p["accuracy"]], marker="*", s=160, color="black", label="pick")
        ax.axhline(100 * source["val_accuracy"], color="grey", ls="--", lw=0.8, label="source")
        goal = 100 * source["val_accuracy"] - max_drop
        if points and goal >= 100 * min(p["accuracy"] for p in points) - 5:  # else it squashes the points
            ax.axhline(goal, color="grey", ls=":", lw=0.8, label="goal")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation accuracy %")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
