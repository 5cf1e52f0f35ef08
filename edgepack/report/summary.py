"""The report's recommendation, failures and changes within noise, and the confidence and flips tables
(edgepack.report.render places them: recommendation first, the rest folded or after the Variants
table). Plain strings; render escapes."""

from __future__ import annotations

from edgepack.metrics import WEAK_RULE
from edgepack.report.explain import noise_lines
from edgepack.report.rows import Change, LatencyInterval, Results
from edgepack.report.targets import none_fit_line

Table = tuple[str, list[str], list[list[str]]]


def _lat_text(lat: LatencyInterval | None) -> str:
    if not lat:
        return "-"
    return f"{lat.p50_ms:.3f} ({lat.low_ms:.3f}-{lat.high_ms:.3f})"


def _change_text(c: Change | None) -> str:
    if not c:
        return "-"
    lo, hi = c.ci_pts
    verdict = "within noise" if c.within_noise else "significant"
    return f"{c.delta_pts:+.2f} [{lo:+.2f}, {hi:+.2f}] p={c.p_value:.2g} {verdict}"


def recommendation_lines(results: Results) -> list[str]:
    """The summary's lines: the recommendation, then the class-imbalance warning if any."""
    warning = imbalance_line(results)
    return _recommendation(results) + ([warning] if warning else [])


def _recommendation(results: Results) -> list[str]:
    """The recommended row's key figures and why it was picked, or why nothing was."""
    max_drop = results.options.max_drop
    rec = results.row(results.recommended)
    target = results.target
    if target and target.none_fit:
        return [none_fit_line(results)]
    if rec is None:
        if max_drop is None:
            return ["No recommendation: pass --max-drop POINTS to pick the smallest, fastest row within "
                    "that many points of the baseline."]
        among = f"file that runs on {target.name} and fits" if target else "row"
        return [f"No recommendation: no {among} is within {max_drop:g} points of the baseline "
                f"({results.baseline or 'none found'})."]
    conf = rec.confidence
    vs_control = conf.vs_control if conf else None
    lines = [
        f"Recommended: {rec.id}.",
        f"Accuracy {100 * rec.accuracy:.2f}% (macro F1 {100 * rec.f1_macro:.1f}%), change vs the "
        f"baseline {_change_text(conf.vs_baseline if conf else None)}"
        + (f"; vs its control {_change_text(vs_control)}" if vs_control else "")
        + ".",
        f"Size {rec.size_gzip_bytes / 1024:.1f} KiB gzip'ed"
        + (f" ({rec.size_ratio_gzip:.1f}x smaller)" if rec.size_ratio_gzip else "")
        + f"; p50 latency ms (min-max of 5 rounds) {_lat_text(conf.latency if conf else None)}"
        + (f" ({rec.speedup:.1f}x faster)" if rec.speedup else "") + ".",
    ]
    if rec.flips:
        lines.append(f"{rec.flips.changed} of {rec.num_test_images} test images changed prediction "
                     "against the baseline.")
    within = f"within {max_drop:g} accuracy point{'' if max_drop == 1 else 's'} of the baseline"
    if target:  # this machine's latency says nothing about the device: size on the device decides
        lines.append(f"Why: the file taking the least flash on {target.name} (in the form that fits; "
                     "gzip'ed size where the target has no flash figure) among the files that run there and "
                     f"fit its budget, {within}.")
    elif results.options.objective == "size":
        lines.append(f"Why: the smallest gzip'ed file among the compressed rows {within} (objective size; "
                     "equal sizes: the more accurate).")
    else:
        lines.append(f"Why: the smallest gzip'ed file among the compressed rows {within} that are as fast "
                     "as the fastest of them (objective latency: latency intervals that overlap are a tie).")
    if target:
        lines.append(f"On {target.name}: {rec.target.verdict}; accuracy on its kernels "
                     f"{100 * rec.target.accuracy:.2f}%.")
    return lines


def imbalance_line(results: Results) -> str | None:
    """One line naming the weak classes (edgepack.metrics.WEAK_RULE) of every row, with their recall
    (a range over the rows that have them), and the first such row's accuracy against its macro F1;
    None when no row has one. Written to results.json as `imbalance` and shown in the summary."""
    hit = [r for r in results.rows if r.ok and r.weak_classes]
    if not hit:
        return None
    ok = sum(r.ok for r in results.rows)
    recalls: dict[str, list[float]] = {}
    for r in hit:
        for name, recall in r.weak_classes.items():
            recalls.setdefault(name, []).append(recall)
    named = "; ".join(f"{name} {_pct_range(v)} ({len(v)} of {ok} rows)" for name, v in recalls.items())
    first = next((r for r in hit if r.id == results.baseline), hit[0])
    return (f"Class imbalance ({WEAK_RULE}): recall {named}. {first.id}: accuracy "
            f"{100 * first.accuracy:.2f}% but macro F1 {100 * first.f1_macro:.1f}%: add images of "
            "these classes or balance the training set.")


def _pct_range(values: list[float]) -> str:
    lo, hi = 100 * min(values), 100 * max(values)
    return f"{lo:.1f}%" if f"{lo:.1f}" == f"{hi:.1f}" else f"{lo:.1f}-{hi:.1f}%"


def failure_rows(results: Results) -> list[list[str]]:
    out = [[r.id, r.status, r.error or ""] for r in results.rows if not r.ok]
    out += [[r.id, "latency", r.latency.error] for r in results.rows if r.latency.error]
    return out


def noise_text(results: Results) -> list[str]:
    lines = noise_lines(results)
    return lines or ["Every accuracy change against the baseline is beyond noise (McNemar p < 0.05)."]


def confidence_table(results: Results) -> Table:
    headers = ["id", "vs baseline: pts [95% CI] McNemar p", "vs control: pts [95% CI] p",
               "p50 ms (round min-max)", "latency vs baseline"]
    out = []
    for r in results.rows:
        c = r.confidence
        if not c:
            continue
        same = c.latency_vs_baseline_within_noise
        verdict = "-" if same is None else ("within noise" if same else "differs")
        out.append([r.id, _change_text(c.vs_baseline), _change_text(c.vs_control),
                    _lat_text(c.latency), verdict])
    return "Confidence (same test images; within noise = McNemar p >= 0.05)", headers, out


def flips_table(results: Results, pairs: int = 3, classes: int = 2) -> Table:
    headers = ["id", "images changed", "most frequent flips (baseline -> this)",
               "classes that lost most (pts)", "contact sheet"]
    out = []
    for r in results.rows:
        f = r.flips
        if not f:
            continue
        top = ", ".join(f"{p.from_}->{p.to} {p.count}" for p in f.pairs[:pairs]) or "-"
        worst = sorted(f.per_class_delta_pts.items(), key=lambda kv: kv[1])[:classes]
        out.append([r.id, str(f.changed), top, ", ".join(f"{k} {v:+.1f}" for k, v in worst),
                    r.flip_sheet or "-"])
    return "Flips against the baseline", headers, out
