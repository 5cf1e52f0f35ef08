"""Render results (schema: edgepack.report.compare) as report.md, report.html and results.csv.

Tables are built once as (title, headers, rows of strings) and written both as Markdown and HTML,
so the two reports cannot disagree. Units and formatting live here, never in results.json.
"""

from __future__ import annotations

import base64
import csv
import html as html_mod
import re
from pathlib import Path

from edgepack.report import devices, front, hosts, summary, targets
from edgepack.report.explain import noise_lines
from edgepack.report.plots import PARETO
from edgepack.report.rows import ResultRow, Results, Timing

Table = tuple[str, list[str], list[list[str]]]


def _num(v, fmt: str, scale: float = 1.0) -> str:
    if v is None:
        return "-"
    return format(v * scale if scale != 1.0 else v, fmt)


def _signed(v) -> str:
    return "-" if v is None else f"{v:+.2f}"


def _kb(v) -> str:
    return "-" if v is None else f"{v / 1024:.1f}"


def _lat(row: ResultRow, key: str) -> Timing | None:
    return getattr(row.latency, key)


def main_table(results: Results) -> Table:
    headers = ["variant", "format", "size KiB", "gzip KiB", "x smaller (gzip)", "accuracy %", "macro F1 %",
               "exact-reference accuracy %", "change (pts)", "change vs control (pts)", "agreement %",
               "p50 ms 1 thread", "p50 ms all cores", "x faster", "images/s b64", "status"]
    out, groups = [], results.cpu_groups
    for r in results.rows:
        one, allc = _lat(r, "threads_1"), _lat(r, "threads_all")
        cpu = hosts.label(r, groups)  # " [k]" when rows come from more than one CPU
        name = r.variant + (" (recommended)" if r.recommended else "")
        if r.id == results.baseline:
            name += " (baseline)"
        elif r.id in results.controls:
            name += " (control)"
        out.append([
            name, r.format + (" tf.function" if r.kind == "run" else ""),
            _kb(r.size_bytes), _kb(r.size_gzip_bytes), _num(r.size_ratio_gzip, ".2f"),
            _num(r.accuracy, ".2f", 100), _num(r.f1_macro, ".1f", 100),
            _num(r.reference_accuracy, ".2f", 100),
            _signed(r.delta_pts_vs_baseline),
            _signed(r.delta_pts_vs_control), _num(r.agreement, ".2f", 100),
            _num(one and one.p50_ms, ".3f") + cpu, _num(allc and allc.p50_ms, ".3f") + cpu,
            _num(r.speedup, ".1f"), _num(allc and allc.throughput_ips, ".0f"),
            r.status,
        ])
    return "Variants", headers, out


def latency_table(results: Results) -> Table:
    headers = ["id", "timed as", "threads", "p50 ms", "p90 ms", "p99 ms", "runs", "images/s b64"]
    out = []
    for r in results.rows:
        for key, label in (("threads_1", None), ("threads_all", None),
                           ("predict_threads_all", "model.predict")):
            t = _lat(r, key)
            if not t:
                continue
            how = label or ("tf.function" if r.kind == "run" else "edgepack.runtime")
            how += hosts.label(r, results.cpu_groups)
            out.append([r.id, how, str(t.threads), f"{t.p50_ms:.3f}", f"{t.p90_ms:.3f}",
                        f"{t.p99_ms:.3f}", str(t.runs), _num(t.throughput_ips, ".0f")])
    return "Latency (batch 1, after warm-up) and throughput (batch 64)", headers, out


def detail_table(results: Results) -> Table:
    headers = ["id", "precision %", "recall %", "F1 %", "parameters", "sparsity %", "sparsity from",
               "RSS delta MB", "accuracy in metrics.json", "check", "control compared with"]
    out = [[r.id, _num(r.precision_macro, ".2f", 100), _num(r.recall_macro, ".2f", 100),
            _num(r.f1_macro, ".2f", 100), _num(r.parameters, ","), _num(r.sparsity, ".1f", 100),
            r.sparsity_source or "-", _num(r.memory_rss_delta_mb, ".1f"),
            _num(r.accuracy_recorded, ".4f"), r.accuracy_check or "-", r.control_ref or "-"]
           for r in results.rows]
    return "Details (macro averages)", headers, out


def per_class_table(results: Results) -> Table:
    rows = [r for r in results.rows if r.per_class_accuracy]
    names = list(rows[0].per_class_accuracy) if rows else []
    out = [[r.id] + [_num(r.per_class_accuracy[n], ".1f", 100) for n in names] for r in rows]
    return "Per-class accuracy %", ["id", *names], out


def error_table(results: Results) -> Table:
    out = [[r.id, r.path or "-", r.error or ""] for r in results.rows if r.status != "ok"]
    out += [[r.id, r.path or "-", f"latency: {r.latency.error}"] for r in results.rows
            if r.latency.error]
    return "Failures and skipped models", ["id", "path", "error"], out


def notes_table(results: Results) -> Table:
    out = [[r.id, r.kernel_path or "-", note]
           for r in results.rows for note in r.notes]
    return "Notes from the measurements (kernels, speed vs fp32)", ["id", "int8 kernel path", "note"], out


def memory_table(results: Results) -> Table:
    headers = ["id", "weights KiB", "peak activations KiB", "runtime peak RSS MiB (without model)",
               "worst int8 layers (layer_snr_db)"]
    out = [[r.id, _kb(m.weight_bytes), _kb(m.activation_bytes),
            f"{_num(m.peak_rss_mb, '.1f')} ({_num(m.rss_base_mb, '.1f')})",
            ", ".join(f"{w.layer} {w.op} {w.layer_snr_db:.1f} dB"
                      for w in r.worst_layers or []) or "-"]
           for r in results.rows if (m := r.memory)]
    return "Memory and worst int8 layers", headers, out


def failure_lines(results: Results) -> list[str]:
    """What failed, one line a row (skipped rows are not failures): the end of a pipeline's output."""
    failed = [r for r in results.rows if r.status == "error"]
    if not failed:
        return []
    return [f"{len(failed)} of {len(results.rows)} rows FAILED:"] + [
        f"  {r.id}: {r.error}" for r in failed]


def folded_tables(results: Results) -> list[Table]:
    """The long tables folded under the plot (<details>): one row or more per model, read on demand."""
    return [t for t in (summary.confidence_table(results), summary.flips_table(results), notes_table(results),
                        per_class_table(results)) if t[2]]


def tables(results: Results) -> list[Table]:
    """The tables after the Variants table (the failures table has its own section)."""
    return [t for t in (latency_table(results), memory_table(results), detail_table(results)) if t[2]]


def header_lines(results: Results) -> list[str]:
    env, data, opts = results.environment, results.data, results.options
    cpu = env["cpu"]
    n = data.num_test_images
    subset = (f"a class-balanced subset of {n} test images (--limit-test; not the full test set)"
              if data.limit_test else f"all {n} test images")
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    controls = results.controls or ([results.control] if results.control else [])
    lines = [
        f"Created {results.created} in {results.wall_seconds:.0f} s; {subset} from `{data.source}`.",
        f"CPU: {cpu['model']} ({cpu['machine']}), {cpu['usable_cores']} usable cores "
        f"({cpu['logical_cores']} logical); ISA: {', '.join(cpu['isa_flags']) or 'none detected'}.",
        *int8_path_lines(cpu.get("int8_paths")),
        *hosts.lines(results.cpu_groups),
        f"Software: {versions}.",
        f"Baseline: {results.baseline or 'none'}; controls (fine-tuned, not compressed; each "
        f"compressed variant is compared with the one of its recipe): {', '.join(controls) or 'none'}.",
        f"Latency: batch 1, median of {opts.runs} runs after {opts.warmup} warm-up calls "
        "(Keras rows: compiled tf.function call; model.predict listed separately). "
        "x smaller and x faster are relative to the baseline Keras model (gzip'ed size; 1-thread p50)."
        if opts.latency else "Latency: not measured (--no-latency).",
    ]
    if results.recommended:
        lines.append(f"Recommended (smallest and fastest within {opts.max_drop:g} points of the "
                     f"baseline): **{results.recommended}**.")
    gate = results.gate
    if gate:
        lines.append(f"Gate --fail-over {gate.fail_over:g}: "
                     + ("passed." if gate.passed else f"FAILED by {', '.join(gate.failed)}."))
    return lines


def int8_path_lines(paths: dict | None) -> list[str]:
    """The int8 kernels this CPU ran: which CPUs the int8 accuracy and latency figures hold for."""
    if not paths:
        return []
    ort, lite = paths["onnxruntime"], paths["litert"]
    exact = "exact for every int8 file" if ort.get("exact") else f"exact only for {ort.get('exact_for')}"
    return [f"int8 kernels on this CPU ({paths['isa']}): ONNX Runtime {ort['path']}, {exact}; LiteRT "
            f"{lite['path']} (XNNPACK on). Exact-reference accuracies (engines' reference kernels) hold "
            "for every CPU; this CPU's accuracies and all latencies hold for CPUs with the same flags."]


def markdown_table(t: Table) -> str:
    title, headers, rows = t

    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = [f"## {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# The page's order: the decision (recommendation, Pareto front table, plot), the long notes folded
# (<details>), then the full Variants table and everything else ("target" with --target, "devices" with
# --device-results).
SECTIONS = ("recommendation", "front", "pareto", "notes", "variants", "failures", "target", "devices", "more")
PLOT_ALT = "Accuracy vs size: the Pareto front"


def _failures(results: Results) -> Table:
    title, headers, rows = error_table(results)
    return "Failures and skipped models", headers, rows


def folds(results: Results) -> list[tuple[str, list[str] | Table]]:
    """The folded notes, (summary line, lines or a table): changes within noise, how the figures were
    measured (environment), then the long per-row tables."""
    noise = summary.noise_text(results)
    n = len(noise_lines(results))
    items: list[tuple[str, list[str] | Table]] = [
        (f"Changes within noise ({n} rows)", noise),
        ("How this was measured: data, CPU, software, baseline and controls", header_lines(results))]
    items += [(f"{t[0]} ({len(t[2])} rows)", t) for t in folded_tables(results)]
    return items


def _top_markdown(results: Results) -> list[str]:
    return ["## Recommendation", "",
            *[f"- {line}" for line in front.quick_line(results) + summary.recommendation_lines(results)
              + front.context_lines(results)], "",
            markdown_table(front.front_table(results)).replace("\n\n", f"\n\n{front.FRONT_TEXT}\n\n", 1),
            f"![{PLOT_ALT}]({PARETO})", ""]


def _fold_markdown(title: str, body: list[str] | Table) -> list[str]:
    """GitHub renders <details> in Markdown; the blank lines keep the Markdown inside it working."""
    text = ([f"- {line}" for line in body] if isinstance(body, list)
            else [markdown_table(body).partition("\n\n")[2]])
    return [f"<details><summary>{html_mod.escape(title)}</summary>", "", *text, "", "</details>", ""]


def markdown(results: Results, images: dict[str, str]) -> str:
    fails = _failures(results)
    parts = ["# edgepack comparison report", "", *_top_markdown(results),
             "## Notes (folded: click to open)", ""]
    for title, body in folds(results):
        parts += _fold_markdown(title, body)
    parts += [markdown_table(main_table(results))]
    parts += [markdown_table(fails) if fails[2] else "## Failures and skipped models\n\nNone.\n"]
    parts += _target_markdown(results)
    if results.device_results:
        parts += ["## Device results", "", *devices.lines(results), "",
                  *[markdown_table(t).replace("## ", "### ", 1) for t in devices.tables(results)]]
    parts += ["## More measurements", ""]
    parts += [markdown_table(t).replace("## ", "### ", 1) for t in tables(results)]
    parts += [f"![{title}]({name})\n" for title, name in images.items()]
    parts += [f"![{r.id}: most confident flips]({r.flip_sheet})\n" for r in results.rows
              if r.flip_sheet]
    return "\n".join(parts)


def _target_markdown(results: Results) -> list[str]:
    got = targets.section(results)
    if got is None:
        return []
    lines, table = got
    heading, _, rows = markdown_table(table).partition("\n\n")  # "## Target tflm", then the table
    return [heading, "", *[f"- {line}" for line in lines], "", rows]


def _target_html(results: Results) -> str:
    got = targets.section(results)
    if got is None:
        return ""
    lines, table = got
    heading, _, rows = _html_table(table, 2).partition("\n")
    return heading + _items(lines) + rows


def _html_table(t: Table, level: int = 3) -> str:
    title, headers, rows = t
    esc = html_mod.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td{_NUM if _is_num(c) else ''}>{esc(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return (f"<h{level}>{esc(title)}</h{level}>\n<div class='scroll'><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></div>\n")


_NUM = " class='num'"


def _is_num(cell: str) -> bool:
    """Figures are right-aligned, words left-aligned."""
    return cell.replace(",", "").replace(".", "", 1).lstrip("+-").isdigit() or cell == "-"


_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
          "margin-bottom:1.5em;font-size:13px}.scroll{overflow-x:auto}"
          "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}td.num{text-align:right}"
          "th{background:#f0f0f0}img{max-width:48%;margin:0.5em}img.wide{max-width:1200px;width:100%}"
          "section#recommendation{background:#eef6ee;border:1px solid #9c9;padding:0.2em 1em}"
          "details{margin:0.4em 0}summary{cursor:pointer;font-weight:bold}"
          "details[open]>summary{margin-bottom:0.4em}")


def _img(folder: Path, name: str, alt: str, cls: str = "") -> str:
    data = base64.b64encode((folder / name).read_bytes()).decode()
    attr = f" class='{cls}'" if cls else ""
    return f'<img{attr} alt="{html_mod.escape(alt)}" src="data:image/png;base64,{data}">'


def _items(lines) -> str:
    """An HTML list of Markdown-ish lines: **bold** stays bold, `code` becomes <code>."""
    def one(s: str) -> str:
        s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html_mod.escape(s))
        return re.sub(r"`(.+?)`", r"<code>\1</code>", s)

    return "<ul>" + "".join(f"<li>{one(s)}</li>" for s in lines) + "</ul>"


def _fold_html(title: str, body: list[str] | Table) -> str:
    inner = _items(body) if isinstance(body, list) else _html_table(body).partition("\n")[2]
    return f"<details><summary>{html_mod.escape(title)}</summary>{inner}</details>\n"


def html(results: Results, folder: Path, images: dict[str, str]) -> str:
    """A self-contained page in the order of SECTIONS: recommendation, the Pareto front's table and plot,
    the long notes folded, then the same tables as report.md; images embedded as base64 PNGs."""
    fails = _failures(results)
    table = _html_table(front.front_table(results), 2)
    sections = {
        "recommendation": "<h2>Recommendation</h2>" + _items(
            front.quick_line(results) + summary.recommendation_lines(results) + front.context_lines(results)),
        "front": table.replace("\n", f"\n<p>{html_mod.escape(front.FRONT_TEXT)}</p>", 1),
        "pareto": _img(folder, PARETO, PLOT_ALT, "wide"),
        "notes": "<h2>Notes (folded: click to open)</h2>"
                 + "".join(_fold_html(title, body) for title, body in folds(results)),
        "variants": _html_table(main_table(results), 2),
        "failures": _html_table(fails, 2) if fails[2] else "<h2>Failures and skipped models</h2><p>None.</p>",
        "target": _target_html(results),
        "devices": "<h2>Device results</h2>" + _items(devices.lines(results))
                   + "".join(_html_table(t) for t in devices.tables(results))
                   if results.device_results else "",
        "more": "<h2>More measurements</h2>" + "".join(_html_table(t) for t in tables(results))
                + "<h3>Plots</h3>" + "".join(_img(folder, name, title) for title, name in images.items())
                + "<h3>Most confident flips against the baseline</h3>"
                + "".join(_img(folder, r.flip_sheet, f"{r.id}: most confident flips")
                          for r in results.rows if r.flip_sheet),
    }
    body = "".join(f"<section id='{k}'>{sections[k]}</section>\n" for k in SECTIONS if sections[k])
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>edgepack comparison</title>"
            f"<style>{_STYLE}</style></head><body><h1>edgepack comparison report</h1>\n{body}"
            "</body></html>\n")


def flat_row(row: ResultRow) -> dict:
    """One CSV line: every scalar field, latency figures as columns, per-class accuracy as columns."""
    flat = {k: v for k, v in row.model_dump(mode="json").items() if not isinstance(v, dict | list)}
    for key in ("threads_1", "threads_all", "predict_threads_all"):
        t = _lat(row, key)
        for f in ("p50_ms", "p90_ms", "p99_ms", "throughput_ips"):
            flat[f"{key}_{f}"] = getattr(t, f) if t else None
    flat["latency_error"] = row.latency.error
    recipe = row.finetune_recipe
    flat["finetune_epochs"] = recipe.epochs if recipe else None
    flat["finetune_learning_rate"] = recipe.learning_rate if recipe else None
    for name, acc in (row.per_class_accuracy or {}).items():
        flat[f"accuracy_{name}"] = acc
    for ref in ("vs_baseline", "vs_control"):
        c = getattr(row.confidence, ref) if row.confidence else None
        flat[f"p_value_{ref}"] = c.p_value if c else None
        flat[f"within_noise_{ref}"] = c.within_noise if c else None
        flat[f"ci_low_pts_{ref}"], flat[f"ci_high_pts_{ref}"] = c.ci_pts if c else (None, None)
    flat["images_changed"] = row.flips.changed if row.flips else None
    flat.update(targets.flat(row))
    return flat


def write_csv(results: Results, path: Path) -> None:
    flats = [flat_row(r) for r in results.rows]
    fields: list[str] = []
    for f in flats:
        fields += [k for k in f if k not in fields]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(flats)
