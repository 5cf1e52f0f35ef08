"""Chains and the two-phase pruning recipe on the tiny run: prune(+polish) -> cluster -> pcqat,
cluster -> cqat; invariants re-measured on the saved kernels and in the int8 TFLite file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import NO_INT8_GATE

from edgepack.cli import main
from edgepack.compress import compress
from edgepack.compress import invariants as inv
from edgepack.errors import EdgepackError
from edgepack.rundir import load_run

FAST = {"batch_size": 16, "epochs": 1}  # tiny archive: 100 training images -> 7 steps per epoch
CLUSTERS = 4


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_run, tiny_archive):
    """Compressed tiny runs, made on first use: chain(name, technique, source_name, **params) -> Path."""
    root = tmp_path_factory.mktemp("chains")
    made: dict[str, Path] = {"baseline": tiny_run}

    def get(name, technique=None, source="baseline", **params):
        if name not in made:
            made[name] = compress(made[source], technique, root / name, params={**FAST, **params},
                                  data_path=tiny_archive)
        return made[name]

    return get


def _kernels(run_dir: Path) -> dict[str, np.ndarray]:
    from edgepack.model import load_run_model

    return inv.kernels(load_run_model(load_run(run_dir)))


def _prune(chain):
    return chain("prune", "prune", sparsity=0.5, polish_epochs=1)


def _prune_cluster(chain):
    _prune(chain)
    return chain("pc", "cluster", source="prune", clusters=CLUSTERS)


def test_polish_phase_holds_the_masks_and_changes_the_weights(chain):
    out = _prune(chain)
    meta = load_run(out).metadata
    assert meta.variant == "prune-0.5-polish1-e1-b16"
    assert meta.params["polish_epochs"] == 1 and meta.params["polish_learning_rate"] == 1e-4
    phases = meta.finetune["phases"]
    assert [(p["phase"], p["epochs"], p["learning_rate"]) for p in phases] == [
        ("compress", 1, 1e-3), ("polish", 1, 1e-4)]
    assert len(json.loads((out / "history.json").read_text())["loss"]) == 2  # both phases
    record = meta.invariants
    assert set(record["polish_mask_changes"].values()) == {0}
    assert all(n > 0 for n in record["polish_changed_weights"].values())  # polish did train
    for name, w in _kernels(out).items():
        assert abs(inv.sparsity(w) - 0.5) <= inv.SPARSITY_TOLERANCE, name


def test_two_of_four_polish_holds_the_pattern(chain):
    """2:4's ConstantSparsity gets an end_step at the end of phase 1, so phase 2 moves no mask."""
    meta = load_run(chain("2of4", "prune-2of4", polish_epochs=1)).metadata
    assert meta.variant == "prune-2of4-polish1-e1-b16"
    assert set(meta.invariants["polish_mask_changes"].values()) == {0}
    assert set(meta.invariants["m_by_n_violations"].values()) == {0}


def test_prune_then_cluster_keeps_the_zeros(chain):
    source, out = _prune(chain), _prune_cluster(chain)
    meta = load_run(out).metadata
    assert meta.variant == "prune-0.5-polish1-e1-b16+cluster-4-e1-b16"
    assert meta.params["preserve_sparsity"] is True and meta.invariants["preserve_sparsity"] is True
    before, after = _kernels(source), _kernels(out)
    for name, w0 in before.items():
        assert np.all(after[name][w0 == 0] == 0), name
        assert inv.distinct_values(after[name]) <= CLUSTERS, name
    assert set(meta.invariants["refilled_zeros"].values()) == {0}
    # every phase from the trained model on: what the chain's matched control trains with
    assert meta.finetune["schedule"] == [[1, 1e-3], [1, 1e-4], [1, 1e-4]]


def test_cluster_of_an_unpruned_run_does_not_preserve_sparsity(chain):
    meta = load_run(chain("cluster", "cluster", clusters=CLUSTERS)).metadata
    assert meta.params["preserve_sparsity"] is False and meta.variant == "cluster-4-e1-b16"
    assert "refilled_zeros" not in meta.invariants


def test_cqat_keeps_the_clusters_per_channel(chain):
    source = chain("cluster", "cluster", clusters=CLUSTERS)
    out = chain("cqat", "cqat", source="cluster")
    meta = load_run(out).metadata
    assert meta.variant == "cluster-4-e1-b16+cqat-b16" and meta.model_format == "keras-qat-h5"
    before, after = _kernels(source), _kernels(out)
    for name, w0 in before.items():
        assert inv.channel_distinct_values(after[name]) <= inv.distinct_values(w0) <= CLUSTERS, name


def _int8_kernels(path: Path) -> list[np.ndarray]:
    """The int8 Conv/Dense weight tensors of a TFLite file (output channels first, TFLite's layout)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(str(path))
    found = []
    for d in interp.get_tensor_details():
        if d["dtype"] == np.int8 and len(d["shape"]) in (2, 4) and d["shape"][0] > 1:
            try:
                found.append(interp.get_tensor(d["index"]))
            except ValueError:  # activations have no data before inference
                continue
    return found


def test_pcqat_chain_keeps_zeros_and_clusters_through_int8_export(chain, tmp_path):
    from edgepack.export import export
    from edgepack.export.context import is_qat_model
    from edgepack.export.formats import for_source

    pruned = _kernels(_prune(chain))
    _prune_cluster(chain)
    out = chain("pcqat", "pcqat", source="pc")
    meta = load_run(out).metadata
    assert meta.variant == "prune-0.5-polish1-e1-b16+cluster-4-e1-b16+pcqat-b16"
    after = _kernels(out)
    for name, w0 in pruned.items():
        assert np.all(after[name][w0 == 0] == 0), name
        assert inv.channel_distinct_values(after[name]) <= CLUSTERS, name
    names, skipped = for_source(["tflite-fp32", "tflite-int8", "onnx-int8"], is_qat_model(None, "pcqat"),
                                explicit=False)
    assert names == ["tflite-int8", "onnx-int8"] and "tflite-fp32" in skipped  # export's QAT rule
    summary = export(out, names, tmp_path / "x", options=NO_INT8_GATE, check_images=10)
    assert summary["failed"] == [] and set(summary["formats"]) == {"tflite-int8", "onnx-int8"}
    # In the int8 file: TFLite's layout is (out, H, W, in) / (out, in); conv weights are per channel.
    tfl = tmp_path / "x" / summary["formats"]["tflite-int8"]["file"]
    by_shape = {w.shape: w for w in _int8_kernels(tfl)}
    for name, w0 in pruned.items():
        ref = np.moveaxis(w0, -1, 0)
        q = by_shape[ref.shape]
        assert np.all(q[ref == 0] == 0), name  # zeros stay exact zeros in int8
        assert max(inv.distinct_values(c) for c in q) <= CLUSTERS, name  # per output channel


def test_plain_qat_twin_gives_the_cqat_models_outputs(chain):
    """The saved model is an ordinary QAT model: identical outputs to the trained CQAT model."""
    from edgepack.compress import TECHNIQUES
    from edgepack.compress.targets import select
    from edgepack.compress.techniques import Plan
    from edgepack.model import compile_model, load_run_model, predict_proba

    model = load_run_model(load_run(chain("cluster", "cluster", clusters=CLUSTERS)))
    tech = TECHNIQUES["cqat"]
    plan = Plan(steps=2, targets=select(model, "cqat").layers, source_kernels=inv.kernels(model))
    wrapped, _ = tech.wrap(model, dict(tech.defaults), plan)
    compile_model(wrapped, 1e-3)
    x = np.random.default_rng(0).random((32, 32, 32, 3)).astype(np.float32)
    wrapped.fit(x, np.arange(32) % 10, epochs=1, batch_size=16, verbose=0)
    plain = tech.finish(wrapped)
    assert not any("cluster" in v.name for v in plain.weights)
    np.testing.assert_array_equal(predict_proba(wrapped, x), predict_proba(plain, x))


@pytest.mark.parametrize("source, args, message", [
    ("baseline", ["--technique", "cqat"], "technique cqat needs a clustered run folder"),
    ("prune", ["--technique", "pcqat"], "technique pcqat needs a clustered run folder"),
    ("cluster", ["--technique", "pcqat"], "technique pcqat needs a cluster run made from a pruned run"),
    ("baseline", ["--technique", "prune", "--polish-epochs", "-1"], "--polish-epochs must be a whole number"),
    ("baseline", ["--technique", "cluster", "--polish-epochs", "1"], "does not take --polish-epochs"),
])
def test_chain_errors_via_cli(source, args, message, chain, tiny_archive, tmp_path, capsys):
    src = {"baseline": lambda: chain("baseline"), "prune": lambda: _prune(chain),
           "cluster": lambda: chain("cluster", "cluster", clusters=CLUSTERS)}[source]()
    out = tmp_path / "out"
    capsys.readouterr()
    rc = main(["compress", "--model", str(src), "--data", str(tiny_archive), "--out", str(out), *args])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and message in err and "\n" not in err, err
    assert not out.exists()


@pytest.mark.parametrize("params, message", [
    ({"polish_epochs": 1.5}, "--polish-epochs must be a whole number"),
    ({"polish_epochs": -2}, "--polish-epochs must be a whole number >= 0"),
    ({"polish_learning_rate": 0}, "--polish-learning-rate must be > 0"),
])
def test_bad_polish_parameters_are_refused(params, message):
    from edgepack.compress import TECHNIQUES, resolve_params
    from edgepack.errors import EdgepackError

    for name in ("prune", "prune-2of4"):
        with pytest.raises(EdgepackError, match=message):
            resolve_params(TECHNIQUES[name], params)
    assert TECHNIQUES["prune"].variant(resolve_params(TECHNIQUES["prune"], {"polish_epochs": 2})) == \
        "prune-0.5-polish2"
    assert TECHNIQUES["prune"].variant(resolve_params(TECHNIQUES["prune"], {})) == "prune-0.5"  # as before


def test_distillation_learns_from_the_chains_trained_model(chain, tiny_run):
    """--distill on the second step of a chain: the teacher is the trained run at the chain's root,
    recorded with the weight and temperature in every phase of the schedule its control must share."""
    _prune(chain)
    run = load_run(chain("pc-kd", "cluster", source="prune", clusters=CLUSTERS, distill=0.5, temperature=2))
    ft = run.metadata.finetune
    assert Path(ft["teacher"]) == Path(tiny_run).resolve()
    assert ft["schedule"] == [[1, 1e-3], [1, 1e-4], [1, 1e-4, 0.5, 2.0]]
    assert run.metadata.variant == "prune-0.5-polish1-e1-b16+cluster-4-kd0.5-T2-e1-b16"


def test_distillation_loss_is_cross_entropy_at_weight_zero_and_kl_at_one():
    import tensorflow as tf

    from edgepack.compress import distill

    rng = np.random.default_rng(0)
    teacher = rng.dirichlet(np.ones(10), size=8).astype(np.float32)
    student = rng.dirichlet(np.ones(10), size=8).astype(np.float32)
    labels = rng.integers(0, 10, size=8)
    soft = np.exp(np.log(teacher) / 2.0)
    soft /= soft.sum(axis=1, keepdims=True)
    packed = distill.packed_targets(labels, soft)
    ce = tf.keras.losses.sparse_categorical_crossentropy(labels, student).numpy()
    loss0, acc = distill.loss_and_metric(0.0, 2.0)
    np.testing.assert_allclose(loss0(packed, student).numpy(), ce, rtol=1e-5)
    s_t = np.exp(np.log(student) / 2.0)
    s_t /= s_t.sum(axis=1, keepdims=True)
    kl = (soft * (np.log(soft) - np.log(s_t))).sum(axis=1)
    loss1, _ = distill.loss_and_metric(1.0, 2.0)
    np.testing.assert_allclose(loss1(packed, student).numpy(), 4.0 * kl, rtol=1e-4)
    assert acc(packed, student).numpy().tolist() == (student.argmax(1) == labels).astype(float).tolist()


def test_augmented_fine_tuning_is_recorded_in_the_schedule_and_repeats(chain, tiny_archive, tmp_path):
    """--augment flip: every phase records it (so the matched control augments too: its name and
    options come from the schedule), the variant says so, the same seed gives the same weights, and
    the flips change what is learnt (the weights differ from the run without them)."""
    from edgepack.compress.schedule import control_variants, phase_of

    _prune(chain)
    run = load_run(chain("pc-flip", "cluster", source="prune", clusters=CLUSTERS, augment="flip"))
    ft = run.metadata.finetune
    assert ft["schedule"] == [[1, 1e-3], [1, 1e-4], [1, 1e-4, 0.0, 4.0, "flip"]]
    assert [p.get("augment") for p in ft["phases"]] == ["flip"]
    assert run.metadata.variant == "prune-0.5-polish1-e1-b16+cluster-4-flip-e1-b16"
    ctrl = control_variants([tuple(phase_of(p) for p in ft["schedule"])])[-1]
    assert ctrl["name"] == "finetune-e1-lr0.001-e1-lr0.0001-e1-lr0.0001-flip"
    assert ctrl["params"] == {"epochs": 1, "learning_rate": 1e-4, "augment": "flip"}

    again = compress(chain("prune"), "cluster", tmp_path / "again",
                     params={**FAST, "clusters": CLUSTERS, "augment": "flip"}, data_path=tiny_archive)
    plain = chain("pc", "cluster", source="prune", clusters=CLUSTERS)
    mine, twin, unflipped = _kernels(run.path), _kernels(again), _kernels(plain)
    assert all(np.array_equal(mine[k], twin[k]) for k in mine)
    assert any(not np.array_equal(mine[k], unflipped[k]) for k in mine)


def test_flip_feed_mirrors_a_seeded_half_of_each_batch():
    from edgepack.fitting import augmented

    x = np.random.default_rng(0).random((64, 8, 8, 3), dtype=np.float32)
    y = np.arange(64)

    def batches():
        return [(a.numpy(), b.numpy()) for a, b in augmented(x, y, 16, "flip", 3)]

    first, second = batches(), batches()
    flipped = 0
    for (images, labels), (images2, labels2) in zip(first, second, strict=True):
        assert np.array_equal(images, images2) and np.array_equal(labels, labels2)
        for image, label in zip(images, labels, strict=True):
            mirrored = np.array_equal(image, x[label][:, ::-1])
            assert mirrored or np.array_equal(image, x[label])
            flipped += mirrored
    assert sorted(np.concatenate([b for _, b in first]).tolist()) == list(range(64))
    assert 16 <= flipped <= 48  # about half

    # flip-shift: every image is a window of its reflect-padded (mirrored or not) self, and they move
    padded = np.pad(x, [(0, 0), (4, 4), (4, 4), (0, 0)], mode="reflect")
    offsets = set()
    for images, labels in augmented(x, y, 16, "flip-shift", 3):
        for image, label in zip(images.numpy(), labels.numpy(), strict=True):
            found = [(m, dy, dx) for m in (0, 1) for dy in range(9) for dx in range(9)
                     if np.array_equal(image, padded[label][:, ::-1 if m else 1][dy:dy + 8, dx:dx + 8])]
            assert found, label
            offsets.add(found[0][1:])
    assert len(offsets) > 10
    with pytest.raises(EdgepackError, match="these are 4x4; use --augment flip"):
        augmented(x[:, :4, :4], y, 16, "flip-shift", 3)


def test_augmented_feed_gives_the_batches_of_shuffling_the_images_themselves():
    """The feed shuffles indices and gathers each batch; that is the same seeded order, epoch after
    epoch, as shuffling the (image, target) pairs (what earlier runs trained on), so recorded recipes
    give the same models."""
    import tensorflow as tf

    from edgepack.fitting import augmented

    x = np.random.default_rng(1).random((100, 8, 8, 3), dtype=np.float32)
    y = np.arange(100) % 10
    pairs = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=5).batch(16)
    feed = augmented(x, y, 16, "flip", 5)
    # the same flips too: replay them on the pair-shuffled batches with a generator of the same seed
    gen = tf.random.Generator.from_seed(5)
    for _ in range(2):  # two epochs: reshuffled alike
        for (images, targets), (ref_images, ref_targets) in zip(feed, pairs, strict=True):
            mirror = gen.uniform([tf.shape(ref_images)[0]]) < 0.5
            ref_images = tf.where(mirror[:, None, None, None], tf.reverse(ref_images, axis=[2]), ref_images)
            assert np.array_equal(targets.numpy(), ref_targets.numpy())
            assert np.array_equal(images.numpy(), ref_images.numpy())


def test_flip_shift_feed_gives_the_pixels_of_padding_and_cropping_with_tensorflow():
    """The feed mirrors and shifts by indexing; replayed with TensorFlow's pad (REFLECT) and gathers on
    the same draws (the recipe earlier runs trained on), every batch is the same, epoch after epoch."""
    import tensorflow as tf

    from edgepack.fitting import SHIFT, augmented

    x = np.random.default_rng(2).random((70, 9, 12, 3), dtype=np.float32)  # not square: both axes
    y = np.arange(70) % 10
    order = tf.data.Dataset.range(len(x)).shuffle(len(x), seed=7).batch(16)
    gen = tf.random.Generator.from_seed(7)
    feed = augmented(x, y, 16, "flip-shift", 7)
    for _ in range(2):
        for (images, targets), idx in zip(feed, order, strict=True):
            ref = tf.gather(x, idx)
            n = tf.shape(ref)[0]
            mirror = gen.uniform([n]) < 0.5
            ref = tf.where(mirror[:, None, None, None], tf.reverse(ref, axis=[2]), ref)
            padded = tf.pad(ref, [[0, 0], [SHIFT, SHIFT], [SHIFT, SHIFT], [0, 0]], mode="REFLECT")
            rows = gen.uniform([n, 1], 0, 2 * SHIFT + 1, dtype=tf.int32) + tf.range(9)[None]
            cols = gen.uniform([n, 1], 0, 2 * SHIFT + 1, dtype=tf.int32) + tf.range(12)[None]
            ref = tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)
            assert np.array_equal(targets.numpy(), y[idx.numpy()])
            assert np.array_equal(images.numpy(), ref.numpy())
