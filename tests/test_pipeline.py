"""The one-command pipeline: settings, a complete small run, and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgepack import atomic, data, rundir
from edgepack.cli import main
from edgepack.errors import EdgepackError
from edgepack.export.formats import FORMATS
from edgepack.pipeline import export_jobs, load_settings
from edgepack.report.rows import dump, read_results

SMALL = """
[train]
epochs = 1
batch_size = 16

[finetune]
epochs = 1

[[variants]]
name = "prune-0.5"
technique = "prune"
params = {sparsity = 0.5}

[export]
formats = ["tflite-fp32", "onnx-fp32"]
control_formats = "all"  # the control's float files too: the fp32 rows compare with its fp32 twin

[compare]
runs = 5
warmup = 1
"""


def test_settings_layering_and_errors(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(SMALL)
    s = load_settings(cfg, quick=True, overrides={"compare": {"runs": 7}})
    assert s.train.epochs == 1 and s.data.limit_train == 5000  # file over --quick
    assert s.compare.runs == 7 and s.quick is True  # CLI over file
    # One control per fine-tuning recipe, added before the variants: prune's lr with the file's epochs.
    assert [v.name for v in s.variants] == ["finetune-e1-lr0.001", "prune-0.5"]
    defaults = load_settings()
    # the six default variants and one control per schedule: a chain's or a polished variant's
    # control is a chain of fine-tunings with the same phases; 2:4 and QAT (its epoch after the
    # control's first step, which the defaults name as its source) train like prune-0.65, and pqat
    # like prune-0.65-cluster-8 (both from prune-0.65), so they share those controls
    fs = "flip-shift"
    first, polish, then = f"e3-lr0.001-{fs}", f"e1-lr0.0001-{fs}", f"e2-lr0.0001-{fs}"
    controls = {v.name: (v.source, v.params["epochs"], v.params["learning_rate"])
                for v in defaults.variants if v.technique == "finetune"}
    assert controls == {
        f"finetune-{first}": ("baseline", 3, 1e-3),  # qat's source, a step towards the others
        f"finetune-{first}-{polish}": (f"finetune-{first}", 1, 1e-4),  # prune-0.65's, prune-2of4's, qat's
        f"finetune-{first}-{polish}-{then}": (f"finetune-{first}-{polish}", 2, 1e-4),  # cluster-8's, pqat's
        f"finetune-{first}-{polish}-{then}-{then}": (f"finetune-{first}-{polish}-{then}", 2, 1e-4)}  # pcqat's
    assert [v.name for v in defaults.variants if v.technique != "finetune"] == [
        "prune-0.65", "prune-0.65-cluster-8", "prune-0.65-cluster-8-pcqat", "prune-2of4", "qat", "pqat"]
    qat = next(v for v in defaults.variants if v.name == "qat")
    assert qat.source == f"finetune-{first}" and len(defaults.variants) == 10  # named once, not twice
    # a finetune variant that differs from the control of its name is refused
    clash = tmp_path / "clash.toml"
    clash.write_text('[[variants]]\nname = "finetune-e2-lr0.001"\ntechnique = "finetune"\n'
                     'params = {epochs = 2, learning_rate = 0.01}\n'
                     '[[variants]]\nname = "p"\ntechnique = "prune"\n')
    with pytest.raises(EdgepackError, match="used twice"):
        load_settings(clash)
    kd = tmp_path / "kd.toml"  # a distilling variant's control distills the same way, in every phase
    kd.write_text('[[variants]]\nname = "p"\ntechnique = "prune"\n'
                  'params = {polish_epochs = 1, distill = 0.5}\n')
    ctrl = [v for v in load_settings(kd).variants if v.technique == "finetune"]
    assert [(c.name, c.params) for c in ctrl] == [
        ("finetune-e2-lr0.001-kd0.5",
         {"epochs": 2, "learning_rate": 1e-3, "distill": 0.5, "temperature": 4.0}),
        ("finetune-e2-lr0.001-kd0.5-e1-lr0.0001-kd0.5",
         {"epochs": 1, "learning_rate": 1e-4, "distill": 0.5, "temperature": 4.0})]
    flip = tmp_path / "flip.toml"  # [finetune] augment reaches every variant and so every control
    flip.write_text('[finetune]\naugment = "flip"\n[[variants]]\nname = "p"\ntechnique = "prune"\n')
    s = load_settings(flip)
    assert [(v.name, v.params) for v in s.variants if v.technique == "finetune"] == [
        ("finetune-e2-lr0.001-flip", {"epochs": 2, "learning_rate": 1e-3, "augment": "flip"})]
    assert s.finetune.augment == "flip"
    for text, message in (("[trian]\nepochs = 1", "unknown section"), ("epochs = ", "not valid TOML"),
                          ('[export]\nformats = ["tflite-fp64"]', "unknown export format"),
                          ('[[variants]]\nname = "x"\ntechnique = "shrink"', "unknown technique"),
                          ('[[variants]]\nname = "p"\ntechnique = "pqat"\nsource = "nope"',
                           "source: 'nope'"),
                          ("[compare]\nmax-drop = 2", "unknown key 'max-drop' in \\[compare\\]"),
                          ("[train]\nepochs = 'ten'", "train.epochs: must be a whole number >= 1"),
                          ('[[variants]]\nname = "x"\ntechnique = "prune"\nparams = 3',
                           "variants\\[0\\].params: must be a table"),
                          ('[[variants]]\nname = "finetune-e2-lr0.001"\ntechnique = "prune"', "used twice"),
                          ("controls = 1", "controls: must be true or false")):
        cfg.write_text(text)
        with pytest.raises(EdgepackError, match=message):
            load_settings(cfg)
    with pytest.raises(EdgepackError, match="not found"):
        load_settings(tmp_path / "missing.toml")


def test_example_settings_file_is_valid():
    from conftest import ROOT

    s = load_settings(ROOT / "examples" / "pipeline.toml")
    assert [v.name for v in s.variants] == [
        "finetune-e1-lr0.0001", "finetune-e2-lr0.0001", "finetune-e2-lr0.001",
        "prune-0.8", "cluster-16", "qat"]
    assert s.export.options == {"calibration_images": 500}


def test_full_study_is_the_defaults_and_more():
    """examples/full-study.toml starts with exactly the default variants (so the full study's rows
    include the default run's) and exports every control in every format."""
    from conftest import ROOT

    full, default = load_settings(ROOT / "examples" / "full-study.toml"), load_settings()
    assert [v for v in full.variants if v.name in {d.name for d in default.variants}] == default.variants
    assert len(full.variants) > len(default.variants) and full.export.control_formats == list(FORMATS)


def test_controls_exported_in_their_formats_only_when_matched():
    """A control is exported in control_formats only, and only when a compressed variant has its
    schedule: the first phase of a two-phase control is a step, no row is compared with it."""
    s = load_settings().model_dump()
    jobs = {(name, fmt) for name, fmt, skip in export_jobs(s) if skip is None}
    fs = "flip-shift"
    step, matched = f"finetune-e3-lr0.001-{fs}", f"finetune-e3-lr0.001-{fs}-e1-lr0.0001-{fs}"
    assert not any(name == step for name, _ in jobs)
    assert {fmt for name, fmt in jobs if name == matched} == {"tflite-int8", "onnx-int8"}
    assert {fmt for name, fmt in jobs if name == "prune-0.65"} == set(FORMATS)
    every = load_settings(overrides={"export": {"control_formats": "all"}}).model_dump()
    assert {fmt for name, fmt, skip in export_jobs(every) if name == matched and skip is None} == set(FORMATS)


@pytest.fixture
def no_work(monkeypatch):
    """Loading data is the pipeline's first work: reaching it means a bad setting got through."""
    def refuse(*args, **kwargs):
        raise AssertionError("the pipeline started work")
    monkeypatch.setattr(data, "load_data", refuse)


# Settings that used to pass the check and fail late (after training) or with a traceback.
@pytest.mark.parametrize("text, message", [
    ("[data]\npath = 5", "data.path: must be a string, got 5"),
    ('[compare]\nfail_over = "high"', "compare.fail_over: must be a number from 0 to 100, got 'high'"),
    ('[compare]\nfail_over = "3"', "compare.fail_over: must be a number from 0 to 100, got '3'"),
    ("[compare]\nmax_drop = 150", "compare.max_drop: must be a number from 0 to 100, got 150"),
    ("[compare]\nruns = 0", "compare.runs: must be a whole number >= 1, got 0"),
    ('[finetune]\naugment = "rotate"', "finetune.augment: must be none, flip or flip-shift, got 'rotate'"),
    ('[[variants]]\nname = "p"\ntechnique = "prune"\nparams = {augment = "mirror"}',
     "variants[0].params: --augment must be one of none, flip, flip-shift, got 'mirror'"),
    ("[train]\nlearning_rate = nan", "train.learning_rate: must be a finite number > 0, got nan"),
    ('[export]\nformats = "onnx-fp32"', "export.formats: must be a list of tflite-fp32"),
    ("[export]\noptions = {calibration_imgs = 500}", "option 'calibration_imgs' is not accepted"),
    ('[export]\nformats = ["tflite-fp32"]\noptions = {opset = 13}',
     "option 'opset' is not accepted by tflite-fp32 (accepted by onnx-fp32, onnx-int8)"),
    ('[export]\noptions = {calibration_images = "500"}',
     "export.options: tflite-int8: option calibration_images: must be a whole number >= 10, got '500'"),
    ('[[variants]]\nname = "x"\ntechnique = "prune"\nparams = {sparsity = "0.5"}',
     "variants[0].params.sparsity: must be a number, got '0.5'"),
    ('[[variants]]\nname = "q"\ntechnique = "qat"\n[[variants]]\nname = "p"\ntechnique = "pqat"\n'
     'source = "q"', "variants[1].source: pqat starts from a pruned variant"),
    ('[[variants]]\nname = "c"\ntechnique = "cqat"',
     "variants[0].source: cqat starts from a cluster variant"),
    ('[[variants]]\nname = "c"\ntechnique = "cluster"\n[[variants]]\nname = "p"\ntechnique = "pcqat"\n'
     'source = "c"', "variants[1].source: pcqat starts from a pruned variant"),
])
def test_bad_settings_are_refused_in_one_line_before_any_work(tmp_path, capsys, no_work, text, message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    out = tmp_path / "out"
    assert main(["pipeline", "--out", str(out), "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"edgepack: error: config file {cfg}: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()  # no output folder, no runs/: nothing was trained


@pytest.mark.parametrize("argv, message", [
    (["--fail-over", "high"], "argument --fail-over: must be a number from 0 to 100, got 'high'"),
    (["--fail-over", "-1"], "argument --fail-over: must be a number from 0 to 100, got '-1'"),
    (["--runs", "0"], "argument --runs: must be a whole number >= 1, got '0'"),
    (["--augment", "rotate"], "argument --augment: must be none, flip or flip-shift, got 'rotate'"),
])
def test_bad_options_are_refused_by_the_settings_fields(tmp_path, capsys, no_work, argv, message):
    with pytest.raises(SystemExit) as e:
        main(["pipeline", "--out", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1, err


def test_config_folder_says_a_toml_file_was_expected(tmp_path, capsys, no_work):
    assert main(["pipeline", "--out", str(tmp_path / "out"), "--config", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "is a folder: expected a TOML settings file" in err and err.count("\n") == 1, err


def test_export_formats_all_is_every_format(tmp_path):
    from edgepack.export import FORMATS

    cfg = tmp_path / "c.toml"
    cfg.write_text('[export]\nformats = "all"\noptions = {opset = 13}')
    s = load_settings(cfg)
    assert s.export.formats == list(FORMATS) and s.export.options == {"opset": 13}


def _pipeline_cmd(data: Path, out: Path, cfg: Path) -> list[str]:
    return [sys.executable, "-m", "edgepack", "pipeline", "--data", str(data), "--out", str(out),
            "--config", str(cfg)]


@pytest.mark.slow
def test_resume_after_sigkill_then_complete_report(tmp_path, tiny_archive):
    cfg = tmp_path / "small.toml"
    cfg.write_text(SMALL)
    out = tmp_path / "out"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(_pipeline_cmd(tiny_archive, out, cfg), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    # Kill it in the middle of a stage: after training completed, while a later stage is writing.
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        # A stage's temporary output folder (not a JSON file's brief temporary name) is being written.
        if (out / "stages" / "train.json").exists() and [
                p for p in out.rglob(f"*{atomic.TMP_MARK}*") if p.is_dir()]:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "pipeline ended before it could be killed mid-stage"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(out.rglob(f"*{atomic.TMP_MARK}*")), "expected a half-written temporary output"
    assert not (out / "report" / "results.json").exists()

    again = subprocess.run(_pipeline_cmd(tiny_archive, out, cfg), capture_output=True, text=True, env=env,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "skip train baseline" in again.stdout and "removed" in again.stdout
    assert not list(out.rglob(f"*{atomic.TMP_MARK}*"))
    results = read_results(out / "report" / "results.json")  # every row typed (edgepack.report.rows)
    assert dump(results) == json.loads((out / "report" / "results.json").read_text())  # and round-trips
    variants = {(r.variant, r.format) for r in results.rows}
    for name in ("baseline", "prune-0.5", "finetune-e1-lr0.001"):
        for fmt in ("keras", "tflite-fp32", "onnx-fp32"):
            assert (name, fmt) in variants
    prune = next(r for r in results.rows if r.id == "prune-0.5/onnx-fp32")
    assert prune.control_ref == "finetune-e1-lr0.001/onnx-fp32"  # the control with prune's recipe
    # The report's accuracy equals each run's own metrics.json.
    for name in ("baseline", "prune-0.5", "finetune-e1-lr0.001"):
        own = json.loads((out / "runs" / name / "metrics.json").read_text())["accuracy"]
        row = next(r for r in results.rows if r.variant == name and r.format == "keras")
        assert row.accuracy == own
    from edgepack.runtime import golden  # every pipeline export carries golden vectors that pass

    exported = sorted(p for p in (out / "exports").rglob("*") if p.suffix in (".onnx", ".tflite"))
    assert len(exported) == 6 and all(golden.verify(p).passed for p in exported)
    settings = json.loads((out / "settings.json").read_text())  # the resolved model, dumped
    assert settings == {**load_settings(cfg).model_dump(mode="json"),
                        "data": {**load_settings(cfg).data.model_dump(), "path": str(tiny_archive)}}

    # The same data named by another path (moved, or relative instead of absolute) is the same data:
    # every stage is skipped, none re-run.
    import shutil

    moved = tmp_path / "elsewhere" / "cifar.tar.gz"
    moved.parent.mkdir()
    shutil.copy(tiny_archive, moved)
    third = subprocess.run(_pipeline_cmd(moved, out, cfg), capture_output=True, text=True, env=env,
                           timeout=600)
    assert third.returncode == 0 and third.stdout.count("skip ") >= 1 + 2 + 6, third.stdout
    assert "Epoch" not in third.stdout, third.stdout


BROKEN_INT8 = """
controls = false
variants = []

[train]
epochs = 1
batch_size = 16

[export]
formats = ["onnx-fp32", "onnx-int8"]

[compare]
runs = 2
warmup = 1
"""


def test_failed_rows_and_machine_errors_set_the_exit_code(tmp_path, tiny_archive, monkeypatch, capsys):
    """A file that fails its check is a row, listed at the end, and the run exits 1 unless
    --allow-failed; a full disk during a stage stops the run with exit 1 (it used to be a row, exit 0)."""
    import dataclasses
    import errno

    from edgepack.export import FORMATS

    cfg = tmp_path / "c.toml"
    cfg.write_text(BROKEN_INT8)
    fmt = FORMATS["onnx-int8"]

    def always_class_0(ctx, path):  # a conversion that breaks the model: every image is class 0
        import onnx
        from onnx import helper

        fmt.convert(ctx, path)
        model = onnx.load(str(path))
        out = model.graph.output[0].name
        for node in model.graph.node:
            node.output[:] = [o if o != out else "probs_in" for o in node.output]
        const = helper.make_node("Constant", [], ["onehot"], value=helper.make_tensor(
            "v", onnx.TensorProto.FLOAT, [1, 10], [1.0] + [0.0] * 9))
        model.graph.node.extend([helper.make_node("Mul", ["probs_in", "zero"], ["zeroed"]),
                                 const, helper.make_node("Add", ["zeroed", "onehot"], [out])])
        model.graph.initializer.append(helper.make_tensor("zero", onnx.TensorProto.FLOAT, [], [0.0]))
        onnx.save(model, str(path))

    monkeypatch.setitem(FORMATS, "onnx-int8", dataclasses.replace(fmt, convert=always_class_0))
    argv = ["pipeline", "--data", str(tiny_archive), "--out", str(tmp_path / "out"), "--config", str(cfg),
            "--workers", "1"]  # the exports in this process, where the patched format is
    assert main(argv) == 1
    io = capsys.readouterr()
    assert "1 of 3 rows FAILED:" in io.out
    assert "baseline/onnx-int8: export: onnx-int8: none of 3 files passed its check" in io.out
    assert io.err.strip().splitlines() == ["edgepack: error: 1 rows failed (listed above; report written): "
                                           "exit 1, or pass --allow-failed to accept them"]
    results = read_results(tmp_path / "out" / "report" / "results.json")
    assert sorted((r.id, r.status) for r in results.rows) == [
        ("baseline/keras", "ok"), ("baseline/onnx-fp32", "ok"), ("baseline/onnx-int8", "error")]
    assert main([*argv, "--allow-failed"]) == 0  # resumes; the failed export is tried again, still a row
    capsys.readouterr()

    def full_disk(ctx, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setitem(FORMATS, "onnx-int8", dataclasses.replace(fmt, convert=full_disk))
    assert main([*argv, "--allow-failed"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0]


def test_a_held_out_baselines_variants_never_fit_on_its_validation_images(tmp_path, tiny_archive):
    """pipeline --baseline RUN trained with --validation-split: its compress stages leave the same
    training images out (as `edgepack compress` from it does) and record the split."""
    from edgepack.train import TrainConfig, train

    base = train(tiny_archive, tmp_path / "base", TrainConfig(epochs=1, batch_size=16, validation_split=0.2))
    cfg = tmp_path / "c.toml"
    cfg.write_text('controls = false\n[[variants]]\nname = "ft"\ntechnique = "finetune"\n'
                   'params = {epochs = 1, batch_size = 16}\n[export]\nformats = ["onnx-fp32"]\n'
                   '[compare]\nruns = 2\nwarmup = 1\n')
    out = tmp_path / "out"
    assert main(["pipeline", "--data", str(tiny_archive), "--baseline", str(base), "--out", str(out),
                 "--config", str(cfg)]) == 0
    _, record = data.validation_split(data.load_data(tiny_archive), 0.2, 0)
    ft = rundir.load_run(out / "runs" / "ft").metadata
    assert ft.validation == record and ft.num_train_images == 80 and ft.num_test_images == 20


def test_time_left_ignores_stages_resumed_from_an_earlier_run(capsys, monkeypatch):
    """A resumed run's estimate: stages complete from before cost no time now, so they count neither
    as work done in the elapsed time nor as work left."""
    from edgepack.pipeline import Progress

    monkeypatch.setattr(time, "time", lambda: 1000.0)
    p = Progress({"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}, started=1000.0 - 60)
    p.finish("a", skipped=True)
    p.finish("b")  # one stage's weight in 60 s; two left (c, d): about 2 minutes
    p.start("c", "stage c")
    assert "~2.0 min left" in capsys.readouterr().out


def test_stage_times_count_stages_that_ran_side_by_side_by_their_wall_time():
    """Fine-tunings and exports on worker processes overlap: their batch's seconds are the wall time they
    took together, each kind keeps its work (its stages' own seconds summed); a kind that ran alone has
    its wall time; the rest of the wall is "other"; the host's load is said."""
    from edgepack.pipeline import host_load, machine_cpu_times, stage_lines, stage_times

    seconds = {"train": 100.0, "compress-p": 60.0, "export-a-x": 30.0, "export-p-x": 50.0, "compare": 20.0}
    times = stage_times(seconds, 300.0, [{"stages": ["compress-p", "export-a-x", "export-p-x", "export-q-x"],
                                          "seconds": 95.0}])
    exports, tuning = times["kinds"]["exports"], times["kinds"]["fine-tuning"]
    assert (exports["seconds"], exports["work_seconds"], exports["longest"]) == (0.0, 80.0, "export-p-x")
    assert (tuning["seconds"], tuning["work_seconds"], tuning["stages"]) == (0.0, 60.0, 1)
    assert times["together"] == [{"kinds": ["fine-tuning", "exports"], "seconds": 95.0, "work_seconds": 140.0,
                                  "stages": 3}]  # export-q-x: resumed, not run now
    assert times["kinds"]["training"]["seconds"] == 100.0 and times["other_seconds"] == 85.0
    times["host"] = host_load(machine_cpu_times())
    assert 0 <= times["host"]["steal_percent"] <= 100 and 0 <= times["host"]["busy_percent"] <= 100
    lines = stage_lines(times)
    assert lines[0].split() == ["training", "100", "s", "1", "stage(s)"]
    assert lines[1].split() == ["fine-tuning", "+", "exports", "95", "s", "3", "stage(s)", "side", "by",
                                "side", "(140", "s", "of", "work)"]
    assert lines[3].split()[:6] == ["exports", "2", "stage(s),", "80", "s", "of"]
    assert "export-p-x 50 s" in lines[3]
    assert lines[4].split()[:2] == ["comparison", "20"] and lines[5].split()[:2] == ["other", "85"]
    assert lines[-1].startswith("  host: ") and "steal" in lines[-1]
