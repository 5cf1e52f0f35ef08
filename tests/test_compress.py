"""edgepack compress: every technique on the tiny run, invariants re-measured exactly, errors via the CLI."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgepack.cli import main
from edgepack.compress import TECHNIQUES, compress
from edgepack.compress import invariants as inv
from edgepack.rundir import load_run

FAST = {"batch_size": 16}  # tiny archive: 100 training images -> 7 steps per epoch


# --- the invariant checks themselves, on hand-made kernels

def test_m_by_n_groups_run_along_input_channels():
    w = np.zeros((1, 1, 8, 2), np.float32)  # Conv2D (H, W, C_in, C_out)
    w[0, 0, [0, 1, 4, 7], 0] = 1.0  # output channel 0: groups [1,1,0,0] [1,0,0,1] -> fine
    w[0, 0, [0, 1, 2], 1] = 1.0  # output channel 1: first group holds 3 non-zeros -> one violation
    assert inv.m_by_n_violations(w) == 1
    w[0, 0, 2, 1] = 0.0
    assert inv.m_by_n_violations(w) == 0
    # Non-zeros spread along C_out (the other axis) never break the pattern.
    assert inv.m_by_n_violations(np.ones((1, 1, 2, 8), np.float32)) == 0
    # Dense (C_in, C_out): groups along C_in; a 3-channel row is padded with one zero.
    assert inv.m_by_n_violations(np.ones((3, 1), np.float32)) == 1
    assert inv.m_by_n_violations(np.array([[1.0], [1.0], [0.0]], np.float32)) == 0


def test_invariant_records_refuse_broken_promises():
    half = np.array([0.0, 0.0, 1.0, 2.0], np.float32)
    rec = inv.sparsity_record({"a": half}, 0.5, ["a"])
    assert rec["kernel_sparsity"] == {"a": 0.5}
    with pytest.raises(inv.InvariantError, match="sparsity 0.5000"):
        inv.sparsity_record({"a": half}, 0.8, ["a"])
    assert inv.sparsity_record({"a": half}, 0.8, [])["pruned_layers"] == []  # kept-dense layers are free
    with pytest.raises(inv.InvariantError, match="3 distinct values"):
        inv.cluster_record({"a": half}, 2, ["a"])
    assert inv.cluster_record({"a": half}, 3, ["a"])["distinct_values"] == {"a": 3}
    with pytest.raises(inv.InvariantError, match="1 of the source's zeros were refilled"):
        inv.zeros_kept_record({"a": half}, {"a": np.array([0.0, 5.0, 1.0, 2.0], np.float32)})
    assert inv.zeros_kept_record({"a": half}, {"a": half * 3})["refilled_zeros"] == {"a": 0}


def test_every_technique_takes_the_fine_tuning_options():
    from edgepack.cli import compress as cli_compress

    for name, tech in TECHNIQUES.items():
        every = {"epochs", "learning_rate", "batch_size", "distill", "temperature", "augment"}
        assert every <= set(tech.defaults)
        assert name in cli_compress.__doc__
        assert tech.variant(dict(tech.defaults)).startswith(name)


@pytest.mark.parametrize("technique, params, message", [
    ("cluster", {"clusters": 16.5}, "--clusters must be a whole number"),
    ("cluster", {"clusters": "many"}, "--clusters must be a whole number"),
    ("prune", {"sparsity": float("nan")}, "--sparsity must be a finite number"),
    ("prune", {"learning_rate": float("inf")}, "--learning-rate must be a finite number"),
    ("prune", {"learning_rate": 0}, "--learning-rate must be > 0"),
    ("prune", {"epochs": 0}, "--epochs must be a whole number >= 1"),
    ("finetune", {"keep_dense": ["conv1"]}, "technique finetune does not take --keep-dense"),
    ("finetune", {"distill": 1.5}, "--distill must be between 0"),
    ("prune", {"distill": 0.5, "temperature": 0}, "--temperature must be > 0"),
    ("qat", {"augment": "rotate"}, "--augment must be one of none, flip, flip-shift, got 'rotate'"),
])
def test_bad_parameters_are_refused(technique, params, message):
    from edgepack.compress import resolve_params
    from edgepack.errors import EdgepackError

    with pytest.raises(EdgepackError, match=message):
        resolve_params(TECHNIQUES[technique], params)


def test_parameters_are_normalised():
    from edgepack.compress import resolve_params

    p = resolve_params(TECHNIQUES["cluster"], {"clusters": 16.0, "keep_dense": "conv1", "epochs": None})
    assert p == {"clusters": 16, "keep_dense": ["conv1"], "epochs": 2, "learning_rate": 1e-4,
                 "batch_size": 32, "distill": 0.0, "temperature": 4.0, "augment": "none"}
    assert TECHNIQUES["cluster"].variant(p) == "cluster-16-keep-conv1"
    assert TECHNIQUES["cluster"].variant({**p, "augment": "flip"}) == "cluster-16-keep-conv1-flip"
    assert TECHNIQUES["cluster"].variant({**p, "distill": 0.5, "temperature": 2}) == \
        "cluster-16-keep-conv1-kd0.5-T2"


# --- every technique on the tiny run folder

@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_run, tiny_archive):
    """Compressed tiny runs, made on first use: runs(name, technique, source=..., **params) -> Path."""
    root = tmp_path_factory.mktemp("compress")
    made: dict[str, Path] = {}

    def get(name, technique, source=None, variant=None, **params):
        if name not in made:
            made[name] = compress(source or tiny_run, technique, root / name, params={**FAST, **params},
                                  data_path=tiny_archive, variant=variant)
        return made[name]

    return get


def _kernels(run_dir: Path) -> dict[str, np.ndarray]:
    from edgepack.model import load_run_model

    return inv.kernels(load_run_model(load_run(run_dir)))


def test_prune_metadata_and_exact_sparsity(runs, tiny_run):
    out = runs("prune-0.5", "prune", sparsity=0.5)
    run = load_run(out)
    meta, source = run.metadata, load_run(tiny_run)
    assert meta.kind == "compress" and meta.technique == "prune" and meta.variant == "prune-0.5-b16"
    assert meta.source_sha256 == source.metadata.model_sha256  # one key name, as exported files say it
    assert meta.source_run == str(Path(tiny_run).resolve())
    for key in ("class_names", "input_shape", "input_dtype", "pixel_scaling", "data_sha256"):
        assert getattr(meta, key) == getattr(source.metadata, key)
    assert meta.model_format == "keras" and meta.model_file == "model.keras"
    raw = run.model_path.read_bytes()
    assert meta.model_gzip_bytes == len(gzip.compress(raw, compresslevel=9, mtime=0)) < len(raw)
    assert meta.finetune["epochs"] == 2 and meta.finetune["steps"] == 14
    assert type(run.metrics) is type(source.metrics)  # same metrics schema as training's
    assert json.loads((out / "history.json").read_text())["loss"]
    ks = _kernels(out)
    assert set(ks) == {"conv1", "conv2", "conv3", "dense1", "probs"}
    for name, w in ks.items():
        assert abs(inv.sparsity(w) - 0.5) <= 0.01, name
        assert meta.invariants["kernel_sparsity"][name] == inv.sparsity(w)


def test_prune_keep_dense_via_cli(tiny_run, tiny_archive, tmp_path):
    out = tmp_path / "p8"
    rc = main(["compress", "--model", str(tiny_run), "--technique", "prune", "--sparsity", "0.8",
               "--keep-dense", "conv1", "--batch-size", "16", "--epochs", "1", "--data", str(tiny_archive),
               "--out", str(out)])
    assert rc == 0
    ks = _kernels(out)
    assert inv.sparsity(ks["conv1"]) == 0.0
    for name in ("conv2", "conv3", "dense1", "probs"):
        assert abs(inv.sparsity(ks[name]) - 0.8) <= 0.01, name
    meta = load_run(out).metadata
    assert meta.params["keep_dense"] == ["conv1"] and meta.variant == "prune-0.8-keep-conv1-e1-b16"


def test_prune_2of4_pattern(runs):
    ks = _kernels(runs("2of4", "prune-2of4"))
    for name, w in ks.items():
        assert inv.m_by_n_violations(w) == 0, name
        assert inv.sparsity(w) == pytest.approx(1 / 3 if name == "conv1" else 0.5), name


def test_cluster_distinct_values(runs):
    out = runs("cluster", "cluster", clusters=4)
    ks = _kernels(out)
    for name, w in ks.items():
        assert 1 < inv.distinct_values(w) <= 4, name
    assert load_run(out).metadata.invariants["distinct_values"] == {
        n: inv.distinct_values(w) for n, w in ks.items()}


def test_qat_run_folder_loads_back_as_qat(runs):
    from edgepack.model import load_run_model

    out = runs("qat", "qat")
    run = load_run(out)
    assert run.metadata.model_format == "keras-qat-h5" and run.model_path.name == "model.h5"
    model = load_run_model(run)
    wrapped = {layer.layer.name for layer in model.layers
               if type(layer).__name__.startswith("QuantizeWrapper")}
    assert {"conv1", "conv2", "conv3", "dense1", "probs"} <= wrapped


def test_qat_model_round_trips_with_the_same_outputs(runs, tmp_path):
    """Save a trained QAT model the way compress does, load it through LOADERS: identical outputs.

    (compress() itself re-checks every saved model, PQAT included, on 64 images before writing.)
    """
    from edgepack.compress.techniques import Plan
    from edgepack.model import (
        LOADERS,
        MODEL_FILES,
        compile_model,
        load_run_model,
        predict_proba,
        save_checked,
    )

    source = runs("prune-0.5", "prune", sparsity=0.5)
    model = load_run_model(load_run(source))
    tech = TECHNIQUES["qat"]
    plan = Plan(steps=2, targets=("conv1", "conv2", "conv3", "dense1", "probs"),
                source_kernels=inv.kernels(model))
    wrapped, _ = tech.wrap(model, dict(tech.defaults), plan)
    compile_model(wrapped, 1e-3)
    x = np.random.default_rng(0).random((32, 32, 32, 3)).astype(np.float32)
    wrapped.fit(x, np.arange(32) % 10, epochs=1, batch_size=16, verbose=0)  # moves the quantizer ranges
    path = save_checked(wrapped, tmp_path / MODEL_FILES[tech.model_format], tech.model_format, x[:8])
    reloaded = LOADERS[tech.model_format](path)
    np.testing.assert_array_equal(predict_proba(wrapped, x), predict_proba(reloaded, x))
    assert [type(ly).__name__ for ly in reloaded.layers] == [type(ly).__name__ for ly in wrapped.layers]


def test_pqat_keeps_the_source_zeros(runs):
    source = runs("prune-0.5", "prune", sparsity=0.5)
    out = runs("pqat", "pqat", source=source, variant="pqat-from-prune-0.5")
    before, after = _kernels(source), _kernels(out)
    for name, w0 in before.items():
        assert np.all(after[name][w0 == 0] == 0), name
        assert inv.sparsity(after[name]) >= inv.sparsity(w0) >= 0.49
    meta = load_run(out).metadata
    assert meta.source_technique == "prune" and meta.model_format == "keras-qat-h5"
    assert meta.variant == "pqat-from-prune-0.5"  # the name a caller (the pipeline) chose
    assert set(meta.invariants["refilled_zeros"].values()) == {0}


def test_finetune_control_is_not_compressed(runs, tiny_run):
    out = runs("finetune", "finetune", epochs=1)
    meta = load_run(out).metadata
    assert meta.variant == "finetune-e1-b16" and meta.finetune["learning_rate"] == 1e-4
    assert all(inv.sparsity(w) < 0.01 for w in _kernels(out).values())
    assert all(inv.distinct_values(w) > 16 for w in _kernels(out).values())


# --- errors: one line, exit code 1, no folder left behind

def _incomplete(tmp_path, tiny_run):
    bad = tmp_path / "incomplete"
    shutil.copytree(tiny_run, bad)
    (bad / "metrics.json").unlink()
    return bad


@pytest.mark.parametrize("case, args, message", [
    ("unknown", ["--technique", "prune-9of10"], "unknown technique 'prune-9of10'"),
    ("sparsity-0", ["--technique", "prune", "--sparsity", "0"], "--sparsity must be between 0 and 1"),
    ("sparsity-1", ["--technique", "prune", "--sparsity", "1"], "--sparsity must be between 0 and 1"),
    ("clusters-1", ["--technique", "cluster", "--clusters", "1"], "--clusters must be a whole number >= 2"),
    ("option", ["--technique", "prune", "--clusters", "8"], "technique prune does not take --clusters"),
    ("option-qat", ["--technique", "qat", "--sparsity", "0.5"], "technique qat does not take --sparsity"),
    ("keep", ["--technique", "prune", "--keep-dense", "conv9"], "--keep-dense conv9: no such layer with"),
    ("pqat-source", ["--technique", "pqat"], "technique pqat needs a pruned run folder"),
    ("incomplete", ["--technique", "prune"], "not a complete run folder (metrics.json is missing)"),
    ("not-a-run", ["--technique", "prune"], "not found"),
    ("qat-source", ["--technique", "prune"], "holds a keras-qat-h5 model"),
    ("one-step", ["--technique", "prune", "--limit-train", "10", "--batch-size", "32", "--epochs", "1"],
     "pruning needs at least 2 fine-tuning steps"),
])
def test_errors_via_cli(case, args, message, tmp_path, tiny_run, tiny_archive, runs, capsys):
    source = {"incomplete": lambda: _incomplete(tmp_path, tiny_run), "not-a-run": lambda: tmp_path / "nope",
              "qat-source": lambda: runs("qat", "qat")}.get(case, lambda: tiny_run)()
    out = tmp_path / "out"
    capsys.readouterr()
    rc = main(["compress", "--model", str(source), "--data", str(tiny_archive), "--out", str(out), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert message in err and err.startswith("edgepack: error:") and "\n" not in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary folder either


# --- one real-data test on a subset

@pytest.mark.real
def test_real_subset_prune(real_cifar, tmp_path):
    from edgepack.data import Dataset, balanced_subset
    from edgepack.train import TrainConfig, train

    tr, te = balanced_subset(real_cifar.y_train, 5000), balanced_subset(real_cifar.y_test, 2000)
    ds = Dataset(real_cifar.x_train[tr], real_cifar.y_train[tr], real_cifar.x_test[te], real_cifar.y_test[te],
                 real_cifar.class_names, real_cifar.source, real_cifar.sha256)
    base = train(None, tmp_path / "base", TrainConfig(epochs=1), ds=ds)
    out = compress(base, "prune", tmp_path / "prune", params={"sparsity": 0.5, "epochs": 1}, ds=ds)
    for name, w in _kernels(out).items():
        assert abs(inv.sparsity(w) - 0.5) <= 0.01, name
    acc = load_run(out).metrics.accuracy
    assert acc > 0.25, acc  # 1 epoch on 5,000 images reaches ~0.35-0.45; chance is 0.10
