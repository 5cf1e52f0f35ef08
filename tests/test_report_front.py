"""The report's top: the Pareto front table and the plot's labels (only the front's points get one)."""

from __future__ import annotations

from conftest import result_row, results_of

from edgepack.report.front import context_lines, front, front_table, labels, pareto_front, size_points


def _row(rid, acc, gz, recommended=False, status="ok", **kw):
    return result_row(rid, acc, gz, 0.05, status, size_ratio_gzip=450e3 / gz, recommended=recommended, **kw)


ROWS = [_row("base/keras", 0.70, 450_000), _row("int8", 0.699, 120_000, recommended=True),
        _row("int8-twin", 0.699, 120_000), _row("worse-and-bigger", 0.60, 200_000),
        _row("prune", 0.65, 44_000), _row("tiny-bad", 0.30, 10_000), _row("best", 0.72, 460_000),
        _row("failed", 0.99, 1, status="error"), _row("no-acc", 0.0, 5, accuracy=None)]
RESULTS = results_of(ROWS, baseline="base/keras")


def test_labels_only_on_the_front_numbered_smallest_first():
    points = size_points(RESULTS)
    assert {r.id for _, _, r in points} == {r.id for r in ROWS[:7]}  # measured rows only
    got = labels(points)
    assert got == {"tiny-bad": "1", "prune": "2", "int8": "3", "base/keras": "4", "best": "5"}
    # dominated points and exact ties after the first get no label: nothing drawn on top of another
    assert "worse-and-bigger" not in got and "int8-twin" not in got
    assert labels([]) == {}


def test_front_is_non_dominated():
    points = size_points(RESULTS)
    on = pareto_front(points)
    for x, y, _ in points:
        dominated = any(ox <= x and oy >= y and (ox, oy) != (x, y) for ox, oy, _ in points)
        assert dominated or any((x, y) == (ox, oy) for ox, oy, _ in on)
    assert [r.id for r in front(RESULTS)] == [r.id for _, _, r in on]


def test_front_table_rows_match_the_plot_labels():
    title, headers, rows = front_table(RESULTS)
    assert title.startswith("Pareto front") and headers[:2] == ["#", "id"]
    assert [(r[0], r[1]) for r in rows] == [("1", "tiny-bad"), ("2", "prune"), ("3", "int8 (recommended)"),
                                           ("4", "base/keras (baseline)"), ("5", "best")]
    assert rows[2][2:] == ["117.2", "3.75", "69.90", "-0.10", "-", "0.050"]  # same formats as Variants


def test_context_names_baseline_target_and_failures():
    tflm = {"name": "tflm", "summary": "TensorFlow Lite Micro", "kernels": "tflm", "budgets": True,
            "budget": {}, "runnable": [], "fitting": [], "none_fit": True}
    lines = context_lines(results_of(ROWS, baseline="base/keras", target=tflm))
    assert lines[0] == "Baseline base/keras: accuracy 70.00%, 439.5 KiB gzip'ed, p50 0.050 ms (1 thread)."
    assert lines[1].startswith("Target tflm: TensorFlow Lite Micro;")
    assert lines[2].startswith("1 of 9 rows failed and 0 were skipped")
    assert context_lines(results_of(ROWS[1:3])) == []


def test_html_lists_keep_markdown_emphasis_and_escape_the_rest():
    from edgepack.report.render import _items

    got = _items(["**Quick smoke run (--quick)**: not real", "data from `a<b.tar.gz`", "p >= 0.05"])
    assert got == ("<ul><li><strong>Quick smoke run (--quick)</strong>: not real</li>"
                   "<li>data from <code>a&lt;b.tar.gz</code></li><li>p &gt;= 0.05</li></ul>")


def test_readme_results_table_lists_the_shippable_int8_rows():
    """scripts/results_table.py (the README's table, from a real results.json): the baseline's Keras
    row, then every int8 file that is not a control's, the recommendation marked."""
    import importlib.util

    from conftest import ROOT, result_row, results_of

    spec = importlib.util.spec_from_file_location("results_table", ROOT / "scripts" / "results_table.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rows = [result_row("baseline", technique="baseline"),
            result_row("baseline/tflite-int8", 0.70, 300, 0.1, reference_accuracy=0.71),
            result_row("p/tflite-int8", 0.72, 100, 0.1, technique="prune", recommended=True,
                       size_ratio_gzip=10.0),
            result_row("p/tflite-fp32", 0.72, 900, 0.1, technique="prune"),
            result_row("finetune-e1/onnx-int8", 0.74, 300, 0.1, technique="finetune")]
    lines = script.table(results_of(rows, baseline="baseline"))
    assert [line.split(" | ")[0] for line in lines[2:]] == [
        "| baseline, Keras", "| baseline, TFLite int8", "| p, TFLite int8 **(recommended)**"]
    assert "70.00% / 71.00%" in lines[3] and "| 10.00 |" in lines[4]
