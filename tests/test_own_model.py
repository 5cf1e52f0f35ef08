"""A user's own model file in: functional and Sequential tf_keras models with BatchNorm, residual
Add, Concatenate, Depthwise/SeparableConv2D, pooling, Dropout and Rescaling, through every technique;
Keras 3 files; one-line refusals for what TF-MOT cannot take."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack import rundir
from edgepack.cli import main
from edgepack.data import Dataset
from edgepack.errors import EdgepackError

CLASSES = ("red", "green", "blue")
SHAPE = (16, 16, 3)


def tiny_data(n_train: int = 48, n_test: int = 12) -> Dataset:
    """3 classes of 16x16 images, each class brightest in its own channel (learnable in 1 epoch)."""
    rng = np.random.default_rng(0)

    def make(n):
        y = np.arange(n) % 3
        x = rng.integers(0, 80, (n, *SHAPE))
        x[np.arange(n), :, :, y] += 170
        return x.astype(np.uint8), y.astype(np.int64)

    (xa, ya), (xb, yb) = make(n_train), make(n_test)
    return Dataset(xa, ya, xb, yb, CLASSES, "synthetic", "0" * 64)


def functional_model():
    import tf_keras as k

    L = k.layers
    i = k.Input(SHAPE, name="image")
    x = L.Rescaling(1 / 255.0, name="rescale")(i)
    x = L.Conv2D(8, 3, padding="same", name="conv1")(x)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.Activation("relu", name="relu1")(x)
    y = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.Add(name="residual")([x, y])
    z = L.SeparableConv2D(8, 3, padding="same", activation="relu", name="sep")(x)
    x = L.Concatenate(name="concat")([x, z])
    x = L.MaxPooling2D(name="maxpool")(x)
    x = L.AveragePooling2D(name="avgpool")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dropout(0.1, name="drop")(x)
    return k.Model(i, L.Dense(3, activation="softmax", name="probs")(x), name="own")


def sequential_model():
    import tf_keras as k

    L = k.layers
    return k.Sequential([L.Input(SHAPE), L.Conv2D(8, 3, name="c1"), L.BatchNormalization(name="b1"),
                         L.MaxPooling2D(name="p1"), L.Flatten(name="f"), L.Dense(3, activation="softmax",
                                                                                    name="d")])


@pytest.fixture(scope="module")
def own_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("own") / "own.keras"
    functional_model().save(path)
    return path


@pytest.mark.parametrize("technique", ["prune", "prune-2of4", "cluster", "qat", "finetune"])
def test_every_technique_takes_a_functional_model_file(technique, own_file, tmp_path):
    from edgepack.compress import compress

    params = {"epochs": 2, "batch_size": 8, **({"clusters": 4} if technique == "cluster" else {})}
    out = compress(own_file, technique, tmp_path / technique, params=params, ds=tiny_data())
    run = rundir.load_run(out)
    meta = run.metadata
    assert meta.source_kind == "model-file" and meta.class_names == tuple(CLASSES)
    assert meta.input_shape == tuple(SHAPE) and meta.pixel_scaling["divisor"] == 1.0  # raw: rescales
    if technique in ("prune", "prune-2of4", "cluster"):
        # TF-MOT 0.8 compresses the pointwise kernel of SeparableConv2D, not depthwise kernels: said so
        assert set(meta.compressed_layers) == {"conv1", "sep/pointwise_kernel", "probs"}
        assert set(meta.skipped_layers) == {"dw", "sep/depthwise_kernel"}
    if technique == "prune":
        sp = meta.invariants["kernel_sparsity"]
        assert all(abs(sp[k] - 0.5) <= 0.01 for k in meta.compressed_layers)
        assert sp["dw"] == 0.0
    if technique == "qat":
        assert "rescale" in meta.skipped_layers  # no 8-bit config in TF-MOT: stays float
        assert meta.invariants["split_layers"] == ["sep"]
    # parameters: kernels, biases and BatchNorm's 4 vectors, without wrapper variables
    assert meta.parameters == functional_model().count_params()


def test_pqat_from_an_own_pruned_model(own_file, tmp_path):
    from edgepack.compress import compress

    fit = {"epochs": 2, "batch_size": 8}
    pruned = compress(own_file, "prune", tmp_path / "p", params=fit, ds=tiny_data())
    with pytest.raises(EdgepackError, match="pqat cannot wrap layer 'rescale'"):  # TF-MOT's scheme
        compress(pruned, "pqat", tmp_path / "pq", params={"batch_size": 8}, ds=tiny_data())
    import tf_keras as k

    i = k.Input(SHAPE)
    x = i
    for layer in functional_model().layers[2:5]:  # conv1, bn1, relu1: no Rescaling
        x = layer(x)
    x = k.layers.SeparableConv2D(4, 3, name="sep")(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    plain = k.Model(i, k.layers.Dense(3, activation="softmax", name="probs")(x))
    path = tmp_path / "plain.keras"
    plain.save(path)
    pruned = compress(path, "prune", tmp_path / "p2", params=fit, ds=tiny_data(), preprocessing="unit")
    out = compress(pruned, "pqat", tmp_path / "pq2", params={"batch_size": 8}, ds=tiny_data())
    assert all(v == 0 for v in rundir.load_run(out).metadata.invariants["refilled_zeros"].values())


def test_sequential_model_file_via_cli_needs_preprocess(tmp_path, capsys, monkeypatch):
    import edgepack.sources as sources

    path = tmp_path / "seq.h5"
    sequential_model().save(path)
    monkeypatch.setattr(sources.data_mod, "load_data", lambda *a, **k: tiny_data())
    args = ["compress", "--model", str(path), "--technique", "prune", "--out", str(tmp_path / "o"),
            "--epochs", "2", "--batch-size", "8"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "--preprocess" in err and len(err.strip().splitlines()) == 1
    assert main([*args, "--preprocess", "unit", "--class-names", "red,green,blue"]) == 0
    meta = rundir.load_run(tmp_path / "o").metadata
    assert meta.class_names == tuple(CLASSES) and meta.pixel_scaling["divisor"] == 255.0


def test_wrong_class_count_is_one_line(own_file, tmp_path):
    with pytest.raises(EdgepackError, match="outputs 3 classes but 2 class names"):
        rundir.load_source(own_file, class_names="a,b")


def test_subclassed_and_custom_layer_models_are_refused_by_name(tmp_path):
    import tf_keras as k

    class Mine(k.layers.Layer):
        def call(self, x):
            return x

    i = k.Input(SHAPE)
    m = k.Model(i, k.layers.Dense(3, activation="softmax")(k.layers.Flatten()(Mine(name="mine")(i))))
    path = tmp_path / "custom.keras"
    m.save(path)
    with pytest.raises(EdgepackError, match="custom layer") as e:
        rundir.load_source(path, class_names="a,b,c", preprocessing="unit")
    assert "\n" not in str(e.value)

    class Sub(k.Model):
        def __init__(self):
            super().__init__()
            self.d = k.layers.Dense(3, activation="softmax")

        def call(self, x):
            return self.d(x)

    from edgepack.model import checked_model

    with pytest.raises(EdgepackError, match="subclassed model"):
        checked_model(Sub(), tmp_path / "sub")


def test_keras3_file_is_rebuilt_in_tf_keras(tmp_path):
    """A Keras 3 .keras file (saved in a child process, as a user's `import keras` would) loads."""
    import subprocess
    import sys

    path = tmp_path / "k3.keras"
    code = ("import keras; L = keras.layers; i = keras.Input((16, 16, 3)); x = L.Rescaling(1/255)(i);"
            "x = L.Conv2D(4, 3)(x); x = L.BatchNormalization()(x);"
            "y = L.DepthwiseConv2D(3, padding='same')(x);"
            "x = L.Add()([x, y]); x = L.GlobalAveragePooling2D()(x);"
            f"keras.Model(i, L.Dense(3, activation='softmax')(x)).save(r'{path}')")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    src = rundir.load_source(path, class_names="a,b,c")
    assert src.metadata.input_shape == tuple(SHAPE) and src.metadata.pixel_scaling["divisor"] == 1.0
    assert type(src.model).__module__.startswith("tf_keras.")


def test_a_model_file_saved_with_its_optimizer_is_sized_by_its_weights(tmp_path):
    """compare sizes a user's file as edgepack saves models (no optimizer state): otherwise the
    uncompressed runs made from it look ~3x smaller than it (issue 11)."""
    from edgepack.report.evaluate import weights_only_sizes
    from edgepack.report.inputs import open_entry
    from edgepack.report.weights import sizes

    data = tiny_data()
    model = sequential_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(data.x_train / 255.0, data.y_train, epochs=1, verbose=0)  # adam's slots now exist
    path = tmp_path / "with_optimizer.keras"
    model.save(path)
    entry = open_entry(path, {"preprocessing": "unit", "class_names": ",".join(CLASSES)})
    weights, weights_gz = weights_only_sizes(entry, entry.run.model)
    assert weights < 0.6 * sizes(path)[0] and weights_gz < sizes(path)[1]


def test_grayscale_data_trains_exports_and_predicts_png_files(tmp_path):
    """A one-channel data set: the tutorial CNN is built at (24, 24, 1), exported, and `predict` reads
    PNG files (grey or colour) as one channel at the model's size; 16x16 is too small for it."""
    import dataclasses

    from PIL import Image

    from edgepack.export import export
    from edgepack.runtime.images import predict_files
    from edgepack.train import TrainConfig, train

    rgb = tiny_data()
    small = dataclasses.replace(rgb, x_train=rgb.x_train[..., :1], x_test=rgb.x_test[..., :1],
                                input_shape=(16, 16, 1))
    with pytest.raises(EdgepackError, match="needs images of at least 18x18, got 16x16"):
        train(None, tmp_path / "small", TrainConfig(epochs=1), ds=small)
    big = np.kron(rgb.x_train, np.ones((1, 2, 2, 1), np.uint8))[:, 4:28, 4:28]  # 24x24
    big_test = np.kron(rgb.x_test, np.ones((1, 2, 2, 1), np.uint8))[:, 4:28, 4:28]
    grey = dataclasses.replace(rgb, x_train=big.max(axis=3, keepdims=True),
                               x_test=big_test.max(axis=3, keepdims=True), input_shape=(24, 24, 1))
    run = train(None, tmp_path / "run", TrainConfig(epochs=1, batch_size=8), ds=grey)
    assert rundir.load_run(run).metadata.input_shape == (24, 24, 1)
    export(run, "tflite-fp32", tmp_path / "exp", ds=grey, check_images=12)
    Image.fromarray(rgb.x_test[0]).resize((40, 40)).save(tmp_path / "colour.png")
    Image.fromarray(grey.x_test[1, :, :, 0]).save(tmp_path / "grey.png")
    files = [tmp_path / "colour.png", tmp_path / "grey.png"]
    out = predict_files(tmp_path / "exp" / "tflite-fp32.tflite", files)
    assert [len(p["top"]) for p in out["predictions"]] == [1, 1]


def test_distillation_in_a_chain_from_a_model_file_learns_from_that_file(own_file, tmp_path):
    from edgepack.compress import compress

    fit = {"epochs": 1, "batch_size": 8}
    first = compress(own_file, "finetune", tmp_path / "ft", params=fit, ds=tiny_data())
    out = compress(first, "finetune", tmp_path / "kd", params={**fit, "distill": 0.5}, ds=tiny_data())
    assert rundir.load_run(out).metadata.finetune["teacher"] == str(own_file.resolve())
    # the chain's first run records the file's sha256: a file changed since is refused as the teacher
    copy = tmp_path / "copy.keras"
    copy.write_bytes(own_file.read_bytes())
    moved = compress(copy, "finetune", tmp_path / "ft2", params=fit, ds=tiny_data())
    copy.write_bytes(own_file.read_bytes() + b"x")
    with pytest.raises(EdgepackError, match="has changed since"):
        compress(moved, "finetune", tmp_path / "kd2", params={**fit, "distill": 0.5}, ds=tiny_data())
