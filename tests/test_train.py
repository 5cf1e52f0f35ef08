"""The baseline model, metrics, run folders and training (tiny and real data)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgepack import atomic, rundir
from edgepack.errors import RunFolderError
from edgepack.metrics import classification_metrics, top1_agreement


def test_baseline_cnn_is_the_seeds_network():
    from edgepack.model import BASELINE_PARAMS, baseline_cnn

    m = baseline_cnn()
    assert m.count_params() == BASELINE_PARAMS == 122_570
    got = [(type(layer).__name__, tuple(layer.output_shape[1:])) for layer in m.layers]
    assert got == [("Conv2D", (30, 30, 32)), ("MaxPooling2D", (15, 15, 32)), ("Conv2D", (13, 13, 64)),
                   ("MaxPooling2D", (6, 6, 64)), ("Conv2D", (4, 4, 64)), ("Flatten", (1024,)),
                   ("Dense", (64,)), ("Dense", (10,))]
    acts = [layer.activation.__name__ for layer in m.layers if hasattr(layer, "activation")]
    assert acts == ["relu", "relu", "relu", "relu", "softmax"]
    assert type(m).__module__.startswith("tf_keras")  # Keras 2, as TF-MOT needs


def test_metrics_against_hand_computed_values():
    names = ["a", "b", "c"]
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2])
    m = classification_metrics(y_true, y_pred, names)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # class a: tp 2, fp 0, fn 1 -> P 1, R 2/3; b: tp 1, fp 1, fn 1 -> 1/2, 1/2; c: tp 1, fp 1, fn 0 -> 1/2, 1
    assert m["per_class"]["a"]["precision"] == pytest.approx(1.0)
    assert m["per_class"]["a"]["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["a"]["f1"] == pytest.approx(0.8)
    assert m["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert m["precision_macro"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert m["recall_macro"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert m["f1_macro"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["per_class"]["b"]["support"] == 2 and m["num_test_images"] == 6
    assert top1_agreement(y_true, y_pred) == pytest.approx(4 / 6)


def test_weak_classes_rule():
    """Weak: recall 0, or below 1/3 of the median class recall; a class without test images never."""
    from edgepack.metrics import imbalance_line, weak_classes

    names = ["a", "b", "c", "d", "e"]
    # recalls a 0.9, b 0.8, c 0.7, d 0.2 (median 0.75: below 0.25 is weak), e 0 of 0 images
    cm = [[9, 1, 0, 0, 0], [2, 8, 0, 0, 0], [3, 0, 7, 0, 0], [4, 0, 4, 2, 0], [0, 0, 0, 0, 0]]
    assert weak_classes(names, cm) == {"d": pytest.approx(0.2)}
    cm[3] = [3, 0, 4, 3, 0]  # d 0.3: no longer below a third of the median (0.75)
    assert weak_classes(names, cm) == {}
    assert weak_classes(names[:2], [[5, 0], [5, 0]]) == {"b": 0.0}  # never predicted: always weak
    assert weak_classes(names[:2], [[0, 5], [5, 0]]) == {"a": 0.0, "b": 0.0}
    assert weak_classes(names[:2], [[4, 1], [1, 4]]) == {} and weak_classes(names[:2], [[0, 0], [0, 0]]) == {}
    m = classification_metrics(np.array([0] * 8 + [1] * 2 + [2] * 2), np.array([0] * 12), names[:3])
    assert m["weak_classes"] == {"b": 0.0, "c": 0.0}
    line = imbalance_line(m["weak_classes"], m["accuracy"], m["f1_macro"])
    assert line == ("2 classes far below the others (recall 0 or below 1/3 of the median class recall): "
                    "recall b 0.0%, c 0.0%; accuracy 66.67% hides them, macro F1 26.7%: add images of "
                    "these classes or balance the training set")
    assert imbalance_line({}, 0.9, 0.9) is None


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ZeroDivisionError), rundir.atomic_dir(out) as tmp:
        (tmp / "half.txt").write_text("x")
        1 / 0  # noqa: B018
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_refuses_existing_and_replaces_only_when_complete(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(RunFolderError, match="already exists.*--force"):
        with rundir.atomic_dir(out):
            pass
    with pytest.raises(RuntimeError), rundir.atomic_dir(out, force=True) as tmp:
        (tmp / "new").write_text("new")
        raise RuntimeError("killed mid-way")
    assert [p.name for p in out.iterdir()] == ["old"]  # untouched
    with rundir.atomic_dir(out, force=True) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new"] and len(list(tmp_path.iterdir())) == 1


def test_train_run_folder_is_complete_and_checked(tiny_run):
    run = rundir.load_run(tiny_run)
    meta, metrics = run.metadata, run.metrics
    for key in ("class_names", "input_shape", "pixel_scaling", "data_sha256", "versions", "wall_seconds",
                "model_sha256", "config"):
        assert getattr(meta, key), key
    assert meta.config["seed"] == 0 and meta.input_shape == (32, 32, 3)
    assert 0.0 <= metrics.accuracy <= 1.0 and metrics.num_test_images == 20
    history = json.loads((tiny_run / "history.json").read_text())
    assert len(history["loss"]) == 1
    assert not [p for p in tiny_run.parent.iterdir() if atomic.TMP_MARK in p.name]


def test_validation_split_is_held_out_and_recorded(tmp_path, tiny_archive):
    """--validation-split holds out optimize's split (same seed, same indices), never fitted on."""
    from edgepack import data as data_mod
    from edgepack.train import TrainConfig, train

    out = train(tiny_archive, tmp_path / "held", TrainConfig(epochs=1, batch_size=16, validation_split=0.2))
    meta = rundir.load_run(out).metadata
    _, record = data_mod.validation_split(data_mod.load_data(tiny_archive), 0.2, 0)
    assert meta.validation == record and meta.validation["validation_images"] == 20
    assert meta.num_train_images == 80
    history = json.loads((out / "history.json").read_text())
    assert len(history["val_accuracy"]) == 1
    # compress from it holds out the same images (never fitted on; the test images stay) and records
    # the split, so a chain and a search's reproduce commands train on exactly the search's images
    from edgepack.compress import compress
    from edgepack.errors import EdgepackError

    step = compress(out, "finetune", tmp_path / "ft", params={"epochs": 1, "batch_size": 16})
    ft = rundir.load_run(step).metadata
    assert ft.validation == record and ft.num_train_images == 80 and ft.num_test_images == 20
    with pytest.raises(EdgepackError, match="holding out 20 training images that this data does not"):
        compress(step, "finetune", tmp_path / "ft2", limit_train=50)
    assert not (tmp_path / "ft2").exists()


def test_load_run_detects_a_changed_model(tmp_path, tiny_run):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    with open(copy / "model.keras", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(RunFolderError, match="does not match the sha256"):
        rundir.load_run(copy)
    (copy / "metrics.json").unlink()
    with pytest.raises(RunFolderError, match="metrics.json is missing"):
        rundir.load_run(copy)


def test_saved_model_reloads_with_identical_outputs(tiny_run, tmp_path):
    from edgepack.errors import EdgepackError
    from edgepack.model import load_run_model, save_checked

    run = rundir.load_run(tiny_run)
    model = load_run_model(run)
    assert model.optimizer is None  # saved for inference, without adam's slots
    x = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
    save_checked(model, tmp_path / "same.keras", "keras", x)  # reproduces: no error

    class Drifting:  # a model whose saved weights differ from what was evaluated
        def __init__(self, m):
            self.m = m

        def save(self, path, **kw):
            m2 = type(self.m).from_config(self.m.get_config())
            m2.set_weights([w * 1.5 for w in self.m.get_weights()])
            m2.save(path, **kw)

        def predict(self, *a, **kw):
            return self.m.predict(*a, **kw)

    with pytest.raises(EdgepackError, match="does not reproduce"):
        save_checked(Drifting(model), tmp_path / "drift.h5", "keras", x)


@pytest.mark.real
@pytest.mark.slow
def test_short_real_training_beats_chance_widely(tmp_path, real_data):
    from edgepack.cli import main

    out = tmp_path / "real"
    code = main(["train", "--data", str(real_data), "--out", str(out), "--epochs", "1",
                 "--limit-train", "10000", "--limit-test", "2000"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_test_images"] == 2000
    assert metrics["accuracy"] >= 0.35, metrics["accuracy"]  # chance is 0.10
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["num_train_images"] == 10_000
    assert meta["data_sha256"] == "957a21788a790d998453ba463efac25d62cd27828ec6d0d7700e583d2656a2da"


def test_model_files_with_code_are_refused_without_running(tmp_path, monkeypatch):
    """A Lambda layer stores Python bytecode: loading it must be refused (in .h5 too), never run."""
    from edgepack.errors import EdgepackError
    from edgepack.model import load_model
    from edgepack.tfkeras import keras

    monkeypatch.chdir(tmp_path)
    k = keras()

    def evil(x):
        import pathlib

        pathlib.Path("pwned").touch()
        return x

    m = k.Sequential([k.layers.Input((4,)), k.layers.Lambda(evil), k.layers.Dense(2)])
    for name in ("evil.h5", "evil.keras"):
        m.save(tmp_path / name)
        (tmp_path / "pwned").unlink(missing_ok=True)
        with pytest.raises(EdgepackError, match=f"cannot load model .*{name}"):
            load_model(tmp_path / name)
        assert not (tmp_path / "pwned").exists(), name
