"""`edgepack compare`: results schema, failures as rows, plots and HTML, --max-drop and --fail-over."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from conftest import NO_INT8_GATE, result_row, results_of

from edgepack.errors import EdgepackError
from edgepack.report import CompareOptions, GateFailed, compare, render
from edgepack.report.compare import NOT_ON_FRONT
from edgepack.report.derived import recommend
from edgepack.report.front import front
from edgepack.report.rows import SCHEMA_VERSION, ResultRow, Results, Timing, dump, is_current, read_results
from edgepack.target import Figures

FAST = CompareOptions(runs=10, warmup=2, predict_runs=3, throughput_runs=3, max_drop=1.0)
TIMING_KEYS = {"p50_ms": float, "p90_ms": float, "p99_ms": float, "mean_ms": float, "runs": int,
               "warmup": int, "threads": int}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_archive, tiny_compressed) -> dict[str, Path]:
    """A baseline that learned (5 epochs: ~40% on the tiny test set), a real prune-0.5 run and its
    fine-tune-only control (both compressed from the 1-epoch tiny run: weaker than the baseline),
    a 2-format export, and a broken file."""
    from edgepack.export import export
    from edgepack.train import TrainConfig, train

    root = tmp_path_factory.mktemp("report-runs")
    base = train(tiny_archive, root / "baseline", TrainConfig(epochs=5, batch_size=8))
    weak, ctrl = tiny_compressed["prune"], tiny_compressed["finetune"]
    export(base, ["tflite-int8", "onnx-fp32"], root / "exports", data_path=tiny_archive, check_images=20,
           options=NO_INT8_GATE)
    broken = root / "broken" / "tflite-fp32.tflite"
    broken.parent.mkdir()
    broken.write_bytes(b"not a flatbuffer")
    from edgepack.runtime.metadata import FileMetadata
    from edgepack.runtime.preprocess import PIXEL_SCALING

    (broken.parent / "tflite-fp32.tflite.json").write_text(FileMetadata(  # good metadata, broken model
        format="tflite-fp32", class_names=("a",) * 10, input_shape=(32, 32, 3), input_dtype="float32",
        pixel_scaling=PIXEL_SCALING, source_sha256="0" * 64, technique="prune", variant="broken",
        edgepack_version="0").to_json())
    return {"baseline": base, "weak": weak, "control": ctrl, "exports": root / "exports", "broken": broken,
            "root": root}


@pytest.fixture(scope="module")
def report(runs, tiny_archive) -> tuple[Results, Path]:
    out = runs["root"] / "report"
    results = compare([runs["baseline"], runs["weak"], runs["control"], runs["exports"], runs["broken"]],
                      out, data_path=tiny_archive, options=FAST)
    return results, out


def by_id(results: Results) -> dict[str, ResultRow]:
    return {r.id: r for r in results.rows}


def test_results_schema_every_row(report):
    results, out = report
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(dump(results)))
    assert on_disk["schema_version"] == 1 and on_disk["kind"] == "edgepack-compare"
    for key in ("created", "wall_seconds", "data", "options", "environment", "baseline", "control",
                "controls", "recommended", "gate", "settings", "rows", "imbalance"):
        assert key in on_disk
    weak = {r["id"]: r["weak_classes"] for r in on_disk["rows"] if r["status"] == "ok"}
    assert all(isinstance(w, dict) for w in weak.values())
    assert (on_disk["imbalance"] is not None) == any(weak.values())  # the line exactly when a row has one
    if on_disk["imbalance"]:
        assert on_disk["imbalance"] in (out / "report.md").read_text()
    assert on_disk["environment"]["cpu"]["logical_cores"] >= 1
    assert set(on_disk["environment"]["cpu"]["int8_paths"]) == {"isa", "onnxruntime", "litert"}
    assert "int8 kernels on this CPU" in (out / "report.md").read_text()
    assert "## Memory and worst int8 layers" in (out / "report.md").read_text()
    assert on_disk["environment"]["versions"]["numpy"]
    rows = on_disk["rows"]
    assert [r["id"] for r in rows][:1] == ["baseline/keras"] and len(rows) == 6
    exact = {r.id for r in front(results)} | {results.recommended}  # the default: --exact-reference front
    assert any(r["format"] == "tflite-int8" and r["id"] in exact for r in rows)  # the smallest: on it
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        assert set(r) == set(ResultRow.model_fields), r["id"]
        assert r["status"] in ("ok", "error", "skipped")
        if r["status"] != "ok":
            continue
        assert r["error"] is None
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["agreement"] <= 1.0
        assert isinstance(r["size_bytes"], int) and isinstance(r["size_gzip_bytes"], int)
        assert 0 < r["size_gzip_bytes"] and r["parameters"] == 122_570
        assert 0.0 <= r["sparsity"] <= 1.0
        assert len(r["confusion_matrix"]) == 10 and len(r["per_class_accuracy"]) == 10
        assert sum(map(sum, r["confusion_matrix"])) == r["num_test_images"] == 20
        for key in ("threads_1", "threads_all"):
            timing = r["latency"][key]
            assert timing is not None, (r["id"], key, r["latency"]["error"])
            for name, kind in TIMING_KEYS.items():
                assert isinstance(timing[name], kind), (r["id"], key, name)
            assert timing["p50_ms"] > 0 and timing["throughput_ips"] > 0
        assert r["latency"]["threads_1"]["threads"] == 1
        # int8 files of the front (and the recommended one): the exact-reference figure beside this CPU's
        if r["format"] == "tflite-int8" and r["id"] in exact:
            assert 0.0 <= r["reference_accuracy"] <= 1.0 and r["kernel_path"]
            assert r["kernel_gap_points"] == pytest.approx(100 * (r["reference_accuracy"] - r["accuracy"]))
        else:
            assert r["reference_accuracy"] is None and r["kernel_gap_points"] is None
            assert (NOT_ON_FRONT in r["notes"]) == (r["format"] == "tflite-int8"), r["id"]
        if r["format"] == "tflite-int8":  # the file's kernel facts (edgepack.explain.kernels), in words too
            assert r["kernel_facts"]["integer"] and r["kernel_facts"]["hybrid"] == []
            assert any(n.startswith("full-integer path: ") for n in r["notes"])
        assert isinstance(r["notes"], list)
        quantized = r["format"] in ("tflite-int8", "tflite-dynamic", "onnx-int8")
        assert (r["kernel_facts"] is not None) == quantized, r["id"]
        m = r["memory"]  # memory on every row (edgepack.explain.memory)
        assert m["weight_bytes"] > 0 and 0 < m["largest_activation_bytes"] <= m["activation_bytes"]
        if r["kind"] == "file":  # measured in a fresh runtime process
            assert m["peak_rss_mb"] >= m["rss_base_mb"] > 0
        else:
            assert m["peak_rss_mb"] is None
        assert (r["latency"]["predict_threads_all"] is not None) == (r["id"] == "baseline/keras")
    lines = list(csv.DictReader((out / "results.csv").open()))
    assert [line["id"] for line in lines] == [r["id"] for r in rows]
    assert lines[0]["threads_1_p50_ms"]


def test_results_json_round_trips_through_result_row(report):
    """Every key compare writes is declared in ResultRow/Results with its type: results.json reads back
    into the same typed results, and writing those gives the same JSON."""
    results, out = report
    on_disk = json.loads((out / "results.json").read_text())
    back = read_results(out / "results.json")
    assert back == results and dump(back) == on_disk and is_current(out / "results.json")
    assert all(isinstance(r, ResultRow) for r in back.rows)
    assert isinstance(back.rows[0].latency.threads_1, Timing) and back.options == FAST
    # the reports render from the typed rows: the read-back rows give the same files
    images = {"Accuracy vs latency": "accuracy_vs_latency.png", "Accuracy vs size": "accuracy_vs_size.png"}
    assert render.markdown(back, images) == (out / "report.md").read_text()
    render.write_csv(back, out.parent / "again.csv")
    assert (out.parent / "again.csv").read_text() == (out / "results.csv").read_text()


def _written(report, tmp_path, change) -> Path:
    doc = json.loads((report[1] / "results.json").read_text())
    change(doc)
    (tmp_path / "results.json").write_text(json.dumps(doc))
    return tmp_path / "results.json"


@pytest.mark.parametrize("version", [None, 0, SCHEMA_VERSION + 1])
def test_results_json_of_another_schema_version_is_refused_in_one_line(report, tmp_path, version):
    def other(doc):
        if version is None:
            del doc["schema_version"], doc["kind"]  # files from before the schema was versioned
        else:
            doc["schema_version"] = version

    path = _written(report, tmp_path, other)
    with pytest.raises(EdgepackError) as e:
        read_results(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and f"schema_version {version!r}" in msg
    assert "re-run `edgepack compare`" in msg
    assert not is_current(path)  # a pipeline makes such a report again on resume


@pytest.mark.parametrize(("row", "key", "value", "named"), [
    (1, "accuracy", "high", "accuracy: must be a number, got 'high'"),
    (0, "latency", {"threads_1": {"p50_ms": "fast"}}, "latency.threads_1.p50_ms"),
    (0, "status", "fine", "status"),
    (2, "colour", "red", "unknown key 'colour'"),
])
def test_a_wrong_value_in_a_row_is_one_line_naming_the_row_and_key(report, tmp_path, row, key, value, named):
    path = _written(report, tmp_path, lambda doc: doc["rows"][row].update({key: value}))
    rid = report[0].rows[row].id
    with pytest.raises(EdgepackError) as e:
        read_results(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: row {rid!r}: ") and named in msg, msg


def test_failed_variant_is_a_row(report):
    results, _ = report
    row = by_id(results)["broken/tflite-fp32"]
    assert row.status == "error" and "not a valid tflite" in row.error
    assert row.accuracy is None and row.latency.threads_1 is None


def test_accuracy_equals_metrics_json(report, runs):
    rows = by_id(report[0])
    pairs = (("baseline/keras", "baseline"), ("prune-0.5/keras", "weak"), ("finetune/keras", "control"))
    for rid, key in pairs:
        recorded = json.loads((runs[key] / "metrics.json").read_text())["accuracy"]
        assert rows[rid].accuracy == pytest.approx(recorded, abs=1e-12)
        assert rows[rid].accuracy_check == "equal"


def test_references_deltas_and_agreement(report):
    results = report[0]
    rows = by_id(results)
    assert results.baseline == "baseline/keras" and results.controls == ["finetune/keras"]
    assert results.control is None  # none given: the only control serves every compressed row
    base, weak, ctrl = rows["baseline/keras"], rows["prune-0.5/keras"], rows["finetune/keras"]
    assert base.agreement == 1.0 and base.delta_pts_vs_baseline == 0.0 and base.speedup == 1.0
    assert weak.delta_pts_vs_baseline == pytest.approx(100 * (weak.accuracy - base.accuracy))
    assert weak.delta_pts_vs_control == pytest.approx(100 * (weak.accuracy - ctrl.accuracy))
    assert weak.control_ref == "finetune/keras"
    assert base.delta_pts_vs_control is None and ctrl.delta_pts_vs_control is None
    assert rows["baseline/onnx-fp32"].agreement == 1.0  # fp32 export: same top-1 everywhere
    assert rows["baseline/tflite-int8"].size_ratio_gzip > 2.5
    assert results.recommended in rows and rows[results.recommended].recommended
    assert rows[results.recommended].delta_pts_vs_baseline >= -1.0


def test_report_files_not_empty(report):
    results, out = report
    for name in ("accuracy_vs_latency.png", "accuracy_vs_size.png"):
        raw = (out / name).read_bytes()
        assert raw.startswith(b"\x89PNG\r\n\x1a\n") and len(raw) > 5000
    page = (out / "report.html").read_text()
    sheets = [r.flip_sheet for r in results.rows if r.flip_sheet]
    assert page.count("data:image/png;base64,") == 3 + len(sheets) and page.count("<table") >= 3
    for name in ("pareto.png", *sheets):
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    md = (out / "report.md").read_text()
    for r in results.rows:
        assert r.id.split("/")[0] in md and r.id.split("/")[0] in page
    assert "x faster" in md and "agreement" in md and "control" in md
    assert "| baseline/keras | model.predict |" in md and "| baseline/keras | tf.function | 1 |" in md
    assert not [p for p in out.parent.iterdir() if ".tmp-" in p.name]


def test_imbalance_is_one_line_naming_classes_rows_and_macro_f1():
    from edgepack.report.summary import imbalance_line, recommendation_lines

    rows = [result_row("base/keras", 0.7267, 1, 1, f1_macro=0.391, weak_classes={"cat": 0.0, "dog": 0.0}),
            result_row("int8/tflite-int8", 0.72, 1, 1, f1_macro=0.40, weak_classes={"cat": 0.02}),
            result_row("x/onnx-fp32", 0.70, 1, 1, weak_classes={}),
            result_row("bad/onnx-int8", 0.0, 1, 1, status="error", weak_classes=None)]
    results = results_of(rows, CompareOptions(), baseline="base/keras")
    line = imbalance_line(results)
    assert line == ("Class imbalance (recall 0 or below 1/3 of the median class recall): recall cat 0.0-2.0% "
                    "(2 of 3 rows); dog 0.0% (1 of 3 rows). base/keras: accuracy 72.67% but macro F1 39.1%: "
                    "add images of these classes or balance the training set.")
    assert recommendation_lines(results)[-1] == line
    assert imbalance_line(results_of(rows[2:], baseline="base/keras")) is None


def test_recommend_smallest_and_fastest_within_max_drop():
    rows = [result_row("base", 0.70, 450_000, 1.3), result_row("int8", 0.695, 120_000, 0.06),
            result_row("prune", 0.699, 44_000, 0.05), result_row("too-lossy", 0.60, 10_000, 0.01),
            result_row("slow-small", 0.70, 40_000, 0.5), result_row("failed", 0.70, 1, 0.001, status="error")]
    assert recommend(rows, 1.0).id == "prune"  # int8 is as fast (within 25%) but larger
    assert recommend(rows, 0.2).id == "prune"  # slow-small is smaller but 10x slower
    assert recommend(rows, 0.05).id == "slow-small"  # prune's -0.1 points is out; beats base on both
    noisy = [result_row("a", 0.70, 50_000, 0.041), result_row("b", 0.70, 80_000, 0.039)]
    assert recommend(noisy, 1.0).id == "a"  # a 5% latency difference is noise: the smaller file wins
    assert recommend(rows, 20.0).id == "too-lossy"
    assert recommend([rows[-1]], 1.0) is None


def test_objective_size_and_controls_never_recommended():
    """--objective size: the smallest file within --max-drop whatever its latency; an uncompressed
    control's file is never the pick (it measures fine-tuning alone), even when it is the smallest."""
    from edgepack.report.derived import derive

    rows = [result_row("base", 0.70, 450_000, 1.3), result_row("prune", 0.699, 44_000, 0.05),
            result_row("slow-small", 0.70, 40_000, 0.5)]
    assert recommend(rows, 1.0).id == "prune"  # latency: slow-small is 10x slower
    assert recommend(rows, 1.0, objective="size").id == "slow-small"
    rows = [result_row("base/keras", 0.70, 450_000, 1.3, technique="baseline"),
            result_row("p/tflite-int8", 0.72, 44_000, 0.05, technique="prune"),
            result_row("finetune-e1/tflite-int8", 0.74, 30_000, 0.05, technique="finetune")]
    results = results_of(rows, CompareOptions(max_drop=1.0, objective="size"), baseline="base/keras")
    derive(results)
    assert results.recommended == "p/tflite-int8"


def _timed(rid, acc, gz, rounds):
    row = result_row(rid, acc, gz, float(sorted(rounds)[len(rounds) // 2]))
    row.latency.threads_1.round_p50_ms = list(rounds)
    return row


def test_recommend_latency_within_round_noise_never_decides():
    # b's p50 is 2x a's, but b's rounds overlap a's: a tie, so the smaller file wins (the band alone,
    # 1.25x, would have picked a).
    a = _timed("a", 0.70, 80_000, [0.05, 0.05, 0.06, 0.12, 0.05])
    b = _timed("b", 0.70, 44_000, [0.10, 0.11, 0.09, 0.10, 0.10])
    assert recommend([a, b], 1.0).id == "b"
    # rounds apart: the faster one wins even though it is larger
    c = _timed("c", 0.70, 44_000, [0.20, 0.21, 0.22, 0.20, 0.21])
    assert recommend([a, c], 1.0).id == "a"


def test_latencies_from_different_cpus_are_labelled_never_ranked_together():
    """Rows timed on two CPU models (e.g. Ray nodes): x faster only on the baseline's CPU, the pick by size
    alone, every latency labelled with its CPU. Synthetic hosts: no test reads this machine's CPU."""
    from edgepack.report.derived import derive
    from edgepack.report.render import header_lines, latency_table, main_table

    fast = {"node": "a", "model": "Xeon", "isa_flags": ["AVX-512 VNNI"], "int8_paths": {}}
    slow = {"node": "b", "model": "EPYC", "isa_flags": ["AVX2"], "int8_paths": {}}
    rows = [result_row("base/keras", 0.70, 450_000, 1.0, host=fast),
            result_row("small/tflite-int8", 0.70, 40_000, 0.9, host=slow),
            result_row("big/tflite-fp32", 0.70, 80_000, 0.05, host=fast)]
    results = results_of(rows, CompareOptions(runs=1, warmup=0, max_drop=1.0), baseline="base/keras")
    derive(results)
    assert [g.label for g in results.cpu_groups] == ["[1]", "[2]"]
    assert rows[2].speedup == pytest.approx(20.0) and rows[1].speedup is None  # other CPU
    assert results.recommended == "small/tflite-int8"  # smallest; its 18x slower time is another CPU's
    table = main_table(results)[2]
    assert table[1][11] == "0.900 [2]" and table[2][11] == "0.050 [1]"
    assert "Latencies come from 2 different CPUs" in " ".join(header_lines(results))
    assert latency_table(results)[2][1][1].endswith("[2]")
    one = results_of([rows[0], rows[2]], CompareOptions(max_drop=1.0), baseline="base/keras")
    derive(one)
    assert len(one.cpu_groups) == 1 and main_table(one)[2][1][11] == "0.050"  # one CPU: no labels


def _ctrl_row(rid, fmt, technique, recipe, acc, kind="run") -> ResultRow:
    return ResultRow(id=rid, variant=rid.split("/")[0], format=fmt, kind=kind, technique=technique,
                     accuracy=acc, finetune_recipe=recipe)


def test_controls_matched_by_recipe_and_format():
    from edgepack.report.derived import derive

    e2 = {"epochs": 2, "learning_rate": 0.001}
    e1 = {"epochs": 1, "learning_rate": 0.0001}
    rows = [_ctrl_row("ft-e2/keras", "keras", "finetune", e2, 0.72),
            _ctrl_row("ft-e1/keras", "keras", "finetune", e1, 0.74),
            _ctrl_row("ft-e2/tflite-int8", "tflite-int8", "finetune", e2, 0.71, "file"),
            _ctrl_row("prune/keras", "keras", "prune", e2, 0.70),
            _ctrl_row("prune/tflite-int8", "tflite-int8", "prune", e2, 0.69, "file"),
            _ctrl_row("prune/onnx-int8", "onnx-int8", "prune", e2, 0.68, "file"),
            _ctrl_row("qat/keras", "keras", "qat", e1, 0.745),
            _ctrl_row("odd/keras", "keras", "cluster", {"epochs": 3, "learning_rate": 0.1}, 0.7)]
    results = results_of(rows, CompareOptions(), controls=["ft-e2/keras", "ft-e1/keras"])
    derive(results)
    got = {r.id: (r.control_ref, r.delta_pts_vs_control) for r in rows}
    assert got["prune/keras"] == ("ft-e2/keras", pytest.approx(-2.0))
    assert got["prune/tflite-int8"] == ("ft-e2/tflite-int8", pytest.approx(-2.0))  # same format
    assert got["prune/onnx-int8"] == ("ft-e2/keras", pytest.approx(-4.0))  # that format not given
    assert got["qat/keras"] == ("ft-e1/keras", pytest.approx(0.5))
    assert got["odd/keras"] == (None, None)  # no control with its recipe, and two to choose from
    assert got["ft-e1/keras"] == (None, None)  # controls are not compared with controls

    # A chain (prune at 1e-3, then 1 epoch at 1e-4) ends with qat's last recipe but is matched by its
    # whole schedule: the control fine-tuned through the same phases, not the 1-epoch one.
    chain = {**e1, "schedule": [[2, 0.001], [1, 0.0001]]}
    rows = [_ctrl_row("ft-e1/keras", "keras", "finetune", {**e1, "schedule": [[1, 0.0001]]}, 0.74),
            _ctrl_row("ft-e2-e1/keras", "keras", "finetune", chain, 0.73),
            _ctrl_row("pqat/keras", "keras", "pqat", chain, 0.735)]
    results = results_of(rows, CompareOptions(), controls=["ft-e1/keras", "ft-e2-e1/keras"])
    derive(results)
    assert (rows[2].control_ref, rows[2].delta_pts_vs_control) == ("ft-e2-e1/keras", pytest.approx(0.5))
    # a polished variant records its first phase's recipe: matched by the schedule all the same
    polished = _ctrl_row("prune/keras", "keras", "prune", {"epochs": 2, "learning_rate": 0.001,
                                                            "schedule": [[2, 0.001], [1, 0.0001]]}, 0.74)
    results.rows = [*rows, polished]
    derive(results)
    got = (polished.control_ref, polished.delta_pts_vs_control)
    assert got == ("ft-e2-e1/keras", pytest.approx(1.0))


def test_fail_over_exit_codes(runs, tiny_archive, tmp_path, capsys):
    from edgepack.cli import main

    base_acc = json.loads((runs["baseline"] / "metrics.json").read_text())["accuracy"]
    weak_acc = json.loads((runs["weak"] / "metrics.json").read_text())["accuracy"]
    drop = 100 * (base_acc - weak_acc)
    assert drop > 5, "the fixture's weak variant must be clearly worse than its baseline"
    args = [str(runs["baseline"]), str(runs["weak"]), "--data", str(tiny_archive), "--no-latency"]
    assert main(["compare", *args, "--out", str(tmp_path / "pass"), "--fail-over", f"{drop + 1:.2f}"]) == 0
    assert main(["compare", *args, "--out", str(tmp_path / "fail"), "--fail-over", f"{drop - 1:.2f}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prune-0.5/keras" in err[0] and "--fail-over" in err[0]
    gate = read_results(tmp_path / "fail" / "results.json").gate  # report still written
    assert gate.passed is False and gate.failed == ["prune-0.5/keras"]
    with pytest.raises(GateFailed):
        compare([runs["baseline"], runs["weak"]], tmp_path / "lib", data_path=tiny_archive,
                options=CompareOptions(latency=False, fail_over=drop - 1))


def test_without_data_the_runs_recorded_data_is_read(runs, tiny_archive, tmp_path, no_data_sources, capsys):
    """compare without --data reads the test images the runs were made from, as compress and export do
    (it used to look only in $EDGEPACK_DATA, the Keras cache and the network)."""
    from edgepack.cli import main

    assert main(["compare", str(runs["baseline"]), str(runs["weak"]), "--out", str(tmp_path / "r"),
                 "--no-latency"]) == 0
    assert f"test images from {tiny_archive}" in capsys.readouterr().out
    rows = read_results(tmp_path / "r" / "results.json").rows
    assert [r.accuracy_check for r in rows] == ["equal", "equal"]


def test_metrics_mismatch_is_a_row_error(runs, tiny_archive, tmp_path):
    changed = shutil.copytree(runs["weak"], tmp_path / "changed")
    metrics = json.loads((changed / "metrics.json").read_text())
    metrics["accuracy"] = 0.99
    (changed / "metrics.json").write_text(json.dumps(metrics))
    results = compare([runs["baseline"], changed], tmp_path / "out", data_path=tiny_archive,
                      options=CompareOptions(latency=False))
    row = results.rows[1]
    assert row.status == "error" and row.accuracy_check == "mismatch" and "metrics.json" in row.error


def test_existing_output_and_bad_inputs_are_one_line_errors(runs, tiny_archive, tmp_path, capsys):
    from edgepack.cli import main

    (tmp_path / "taken").mkdir()
    assert main(["compare", str(runs["baseline"]), "--out", str(tmp_path / "taken"), "--no-latency"]) == 1
    assert main(["compare", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--no-latency"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--force" in err[0] and "does not exist" in err[1]
    assert not (tmp_path / "o").exists()


def test_upstream_failures_and_settings_are_recorded(runs, tiny_archive, tmp_path):
    failures = [{"variant": "qat", "format": "tflite-fp32", "stage": "export", "status": "skipped",
                 "error": "QAT models export to int8 formats only"},
                {"variant": "qat", "format": "onnx-int8", "stage": "export", "error": "check failed"}]
    with pytest.raises(GateFailed) as info:  # an upstream failure fails the gate too
        compare([runs["baseline"]], tmp_path / "out", data_path=tiny_archive,
                options=CompareOptions(latency=False, fail_over=50), failures=failures,
                settings={"quick": True})
    results = info.value.results
    row = results.rows[-1]
    assert row.id == "qat/onnx-int8" and row.status == "error"
    assert row.error == "export: check failed" and row.path is None
    assert set(dump(results)["rows"][-1]) == set(ResultRow.model_fields)
    assert results.settings == {"quick": True}
    skipped = results.rows[-2]  # not applicable: a row that says so, and does not fail the gate
    assert skipped.id == "qat/tflite-fp32" and skipped.status == "skipped"
    assert results.gate.failed == ["qat/onnx-int8"]
    assert "Quick smoke run" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.real
def test_real_test_subset_is_labelled_and_check_skipped(real_data, tiny_run, tmp_path):
    """On the real archive: a run evaluated on other test images is not checked against them."""
    results = compare([tiny_run], tmp_path / "out", data_path=real_data,
                      options=CompareOptions(limit_test=200, latency=False))
    row = results.rows[0]
    assert row.status == "ok" and row.num_test_images == 200
    assert row.accuracy_check.startswith("skipped")
    assert results.data.limit_test == 200 and results.data.sha256 != ""
    assert "subset of 200 test images" in (tmp_path / "out" / "report.md").read_text()


def test_keras_parameters_and_sparsity_ignore_tfmot_variables():
    import numpy as np
    import tensorflow_model_optimization as tfmot

    from edgepack.model import BASELINE_PARAMS, baseline_cnn
    from edgepack.report.weights import keras_parameters, keras_sparsity

    model = baseline_cnn()
    kernel = model.get_layer("dense1").kernel
    kernel.assign(np.zeros(kernel.shape, np.float32))
    expected = 65_536 / 122_336  # dense1's kernel / all kernel values (122,570 minus 234 biases)
    assert keras_parameters(model) == BASELINE_PARAMS
    assert keras_sparsity(model) == pytest.approx(expected)
    qat = tfmot.quantization.keras.quantize_model(model)
    assert qat.count_params() > BASELINE_PARAMS  # quantizer ranges are variables too
    assert keras_parameters(qat) == BASELINE_PARAMS
    assert keras_sparsity(qat) == pytest.approx(expected)


def test_rows_carry_confidence_and_flips(report):
    results, _ = report
    rows = by_id(results)
    for r in results.rows:
        if r.status != "ok":
            assert r.confidence is None and r.flips is None
            continue
        c = r.confidence
        assert "McNemar" in c.rule and c.latency.low_ms <= c.latency.high_ms
        if r.id == "baseline/keras":
            assert c.vs_baseline is None and r.flips is None
            continue
        vs = c.vs_baseline
        assert vs.delta_pts == pytest.approx(r.delta_pts_vs_baseline)
        assert 0 <= vs.p_value <= 1 and vs.ci_pts[0] <= vs.delta_pts <= vs.ci_pts[1]
        assert vs.within_noise == (vs.p_value >= 0.05)
        assert r.flips.changed == round(20 * (1 - r.agreement))
        assert sum(p.count for p in r.flips.pairs) == r.flips.changed
    weak = rows["prune-0.5/keras"]
    assert weak.confidence.vs_control.delta_pts == pytest.approx(weak.delta_pts_vs_control)
    assert rows["baseline/onnx-fp32"].flips.changed == 0
    assert rows["baseline/onnx-fp32"].confidence.vs_baseline.within_noise


def test_report_reads_top_down(report):
    """Recommendation, the Pareto front's table, its plot, the long notes folded in <details>, then the
    Variants table and the rest, in report.html and report.md (checked without a browser;
    scripts/screenshot_report.py renders the page in Chromium)."""
    from html.parser import HTMLParser

    from edgepack.report.front import front

    results, out = report

    class Sections(HTMLParser):
        def __init__(self):
            super().__init__()
            self.ids, self.headings, self.folds, self._in = [], [], [], None

        def handle_starttag(self, tag, attrs):
            if tag == "section":
                self.ids.append(dict(attrs)["id"])
            self._in = tag if tag in ("h2", "summary") else None

        def handle_data(self, data):
            if self._in == "h2":
                self.headings.append(data)
            elif self._in == "summary":
                self.folds.append((self.ids[-1], data))
            self._in = None

    page = Sections()
    html = (out / "report.html").read_text()
    page.feed(html)
    assert page.ids == ["recommendation", "front", "pareto", "notes", "variants", "failures", "more"]
    assert page.headings[:5] == ["Recommendation", "Pareto front: size vs accuracy",
                                 "Notes (folded: click to open)", "Variants", "Failures and skipped models"]
    folded = [title for section, title in page.folds if section == "notes"]
    assert folded[0].startswith("Changes within noise (") and folded[1].startswith("How this was measured")
    assert any(t.startswith("Confidence") for t in folded) and any(t.startswith("Per-class") for t in folded)
    assert html.index("<details>") > html.index("alt=\"Accuracy vs size: the Pareto front\"")
    ids = [r.id for r in front(results)]
    assert ids and all(html.index(i) < html.index("<section id='pareto'>") for i in ids)

    md = (out / "report.md").read_text()
    order = [md.index(h) for h in ("## Recommendation", "## Pareto front: size vs accuracy", "](pareto.png)",
                                   "<details><summary>Changes within noise", "<details><summary>How this",
                                   "## Variants", "## Failures and skipped models", "## More measurements",
                                   "### Latency")]
    assert order == sorted(order) and "broken/tflite-fp32" in md[order[6]:order[7]]
    assert md.count("<details>") == md.count("</details>") == len(folded)
    assert "Baseline baseline/keras: accuracy" in md[order[0]:order[1]]
    front_md = md[order[1]:order[2]]
    assert [line.split(" | ")[1].removesuffix(" (recommended)").removesuffix(" (baseline)")
            for line in front_md.splitlines() if line.startswith("| ") and line[2].isdigit()] == ids


def test_formats_an_export_did_not_write_are_failure_rows(tiny_run, tiny_archive, tmp_path):
    """A format export.json records as failed (e.g. no int8 scheme passed), skipped (not applicable) or
    written but missing is a row with its reason: never "Failures: None" while files are missing."""
    from edgepack.export import export
    from edgepack.report.render import failure_lines

    folder = tmp_path / "exports"
    export(tiny_run, ["onnx-fp32"], folder, data_path=tiny_archive, check_images=20)
    summary = json.loads((folder / "export.json").read_text())
    why = "onnx-int8: none of 3 files passed its check on 20 check images (scheme=s8s8-7bit: ...)"
    summary["formats"]["onnx-int8"] = {"file": None, "runtime": "onnx", "options": {}, "status": "error",
                                       "error": why, "trials": []}  # as edgepack.export.core writes it
    summary["formats"]["tflite-int8"] = {**summary["formats"]["onnx-fp32"], "file": "tflite-int8.tflite"}
    summary["skipped"] = {"tflite-fp16": "QAT source: only integer formats apply"}
    (folder / "export.json").write_text(json.dumps(summary))
    results = compare([tiny_run, folder], tmp_path / "report", data_path=tiny_archive, options=FAST)
    rows = by_id(results)
    assert rows["baseline/onnx-fp32"].status == "ok"
    bad = rows["baseline/onnx-int8"]
    assert (bad.status, bad.error) == ("error", f"export: {why}")
    assert "is recorded in export.json but missing" in rows["baseline/tflite-int8"].error
    assert rows["baseline/tflite-fp16"].status == "skipped"
    assert rows["baseline/onnx-int8"].path == str(folder / "export.json")
    report = (tmp_path / "report" / "report.md").read_text()
    failures = report.split("## Failures and skipped models")[1].split("## ")[0]
    assert "None." not in failures and "none of 3 files passed" in failures
    assert failure_lines(results)[0] == "2 of 5 rows FAILED:"


def test_a_device_target_ranks_by_flash_there_never_by_this_machines_latency():
    from edgepack.report.targets import deployed_bytes

    fast = result_row("fast", 0.70, 40_000, 0.05)  # smaller gzip'ed and 10x faster here
    small = result_row("small", 0.71, 44_000, 0.5)
    flash = {"flash_bytes": 134_000, "compressed_flash_bytes": 59_000}
    fast.target = Figures("tflm", True, fits_as="stored", **flash)
    small.target = Figures("tflm", True, fits_as="compressed", **flash)
    assert recommend([fast, small], 1.0).id == "fast"  # the host's rule
    assert recommend([fast, small], 1.0, by_latency=False, size=deployed_bytes).id == "small"
    no_flash = result_row("web", 0.70, 30_000, 0.9)
    no_flash.target = Figures("browser", True, fits_as="stored", flash_bytes=None)
    assert recommend([small, no_flash], 1.0, by_latency=False, size=deployed_bytes).id == "web"  # gzip'ed


def test_exact_reference_option_is_checked():
    CompareOptions(exact_reference="all").check()
    with pytest.raises(EdgepackError, match="--exact-reference must be one of front, all, got 'some'"):
        CompareOptions(exact_reference="some").check()
