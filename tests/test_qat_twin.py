"""The float twin of a QAT model (edgepack.export.qat): functional models as well as Sequential ones,
and a functional QAT run folder exports to onnx-int8 (issue 11)."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack.errors import EdgepackError
from edgepack.export import export
from edgepack.export.qat import float_twin

CLASSES = ("red", "green", "blue")
SHAPE = (16, 16, 3)  # tiny images: the twin's rebuild does not depend on the size


def _colour_ds():
    """3 classes of one dominant colour each plus noise: clear margins after a few epochs."""
    from edgepack.data import Dataset

    rng = np.random.default_rng(0)

    def make(n):
        y = np.arange(n) % 3
        x = rng.integers(0, 60, (n, *SHAPE))
        x[np.arange(n), :, :, y] += 180  # the class's own channel is bright
        return x.astype(np.uint8), y.astype(np.int64)

    (xt, yt), (xs, ys) = make(96), make(30)
    return Dataset(xt, yt, xs, ys, CLASSES, "made in test_qat_twin", "0" * 64)


def _functional(num_classes: int = 3):
    """Conv+BN+ReLU blocks, a residual Add, a DepthwiseConv2D and a SeparableConv2D joined by a
    Concatenate, global pooling and a softmax Dense: the structures TF-MOT rewrites in a QAT model."""
    from edgepack.tfkeras import keras

    k = keras()
    L = k.layers

    def block(x, name):
        x = L.Conv2D(8, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = L.BatchNormalization(name=f"{name}_bn")(x)
        return L.ReLU(name=f"{name}_relu")(x)

    image = L.Input(SHAPE, name="image")
    a = block(image, "b1")
    x = L.Add(name="residual")([a, block(a, "b2")])
    dw = L.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(x)
    sep = L.SeparableConv2D(8, 3, padding="same", activation="relu", name="sep")(x)
    x = L.GlobalAveragePooling2D(name="gap")(L.Concatenate(name="join")([dw, sep]))
    return k.Model(image, L.Dense(num_classes, activation="softmax", name="probs")(x), name="tiny_functional")


def _qat(model, ds, scheme=None):
    """QAT-wrapped as edgepack's compress does (only what TF-MOT's registry supports), briefly fitted;
    `scheme`: TF-MOT's quantize scheme (None: the default 8-bit one)."""
    import tensorflow_model_optimization as tfmot

    from edgepack.compress.targets import select
    from edgepack.model import compile_model, keras
    from edgepack.runtime.preprocess import scale_pixels

    q = tfmot.quantization.keras
    targets = select(model, "pqat" if scheme else "qat").layers
    annotated = keras().models.clone_model(model, clone_function=lambda layer: (
        q.quantize_annotate_layer(layer) if layer.name in targets else layer))
    qat = q.quantize_apply(annotated, scheme) if scheme else q.quantize_apply(annotated)
    compile_model(qat, learning_rate=1e-4)
    qat.fit(scale_pixels(ds.x_train), ds.y_train, epochs=1, batch_size=16, verbose=0)
    return qat


@pytest.fixture(scope="module")
def functional_qat():
    from edgepack.model import compile_model
    from edgepack.runtime.preprocess import scale_pixels
    from edgepack.train import seed_everything

    seed_everything(0)
    ds = _colour_ds()
    model = _functional()
    compile_model(model, learning_rate=1e-2)
    model.fit(scale_pixels(ds.x_train), ds.y_train, epochs=6, batch_size=16, verbose=0)
    return ds, model, _qat(model, ds)


def _twin_matches(ds, qat):
    from edgepack.runtime.preprocess import scale_pixels

    twin = float_twin(qat)
    tfmot_layers = [layer.name for layer in twin.layers
                    if type(layer).__module__.startswith("tensorflow_model_optimization")]
    assert not tfmot_layers
    kinds = [type(layer).__name__ for layer in twin.layers]
    assert kinds.count("DepthwiseConv2D") == 2 and kinds.count("BatchNormalization") == 2  # sep: split
    assert {"Add", "Concatenate", "GlobalAveragePooling2D", "Dense"} <= set(kinds)
    x = scale_pixels(ds.x_test)
    want, got = qat(x, training=False).numpy(), twin(x, training=False).numpy()
    assert np.abs(want - got).max() < 0.05  # the fake-quant error on softmax probabilities
    assert (want.argmax(1) == got.argmax(1)).mean() >= 0.9


def test_functional_twin_matches_the_qat_model(functional_qat):
    ds, _, qat = functional_qat
    _twin_matches(ds, qat)


def test_functional_twin_of_pruning_preserving_qat(functional_qat):
    import tensorflow_model_optimization as tfmot

    ds, model, _ = functional_qat
    _twin_matches(ds, _qat(model, ds, tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()))


def test_functional_qat_run_exports_to_onnx_int8(functional_qat, tmp_path):
    from edgepack import rundir
    from edgepack.fitting import evaluate
    from edgepack.model import save_model
    from edgepack.train import data_metadata

    ds, _, qat = functional_qat
    run = tmp_path / "qat"
    run.mkdir()
    save_model(qat, run / "model.h5")  # as compress saves QAT models
    rundir.write_run_files(run, {"kind": "compress", "technique": "qat", "variant": "qat",
                                 "model_file": "model.h5", "model_format": "keras-qat-h5",
                                 **data_metadata(ds)}, evaluate(qat, ds)[0])
    # The default gate (agreement with the QAT model) holds: the colour classes leave clear margins
    # (seen: agreement 1.0, max diff 0.004), and the default "portable" int8 is exact on every CPU.
    s = export(run, "onnx-int8", tmp_path / "out", check_images=30, ds=ds)
    assert s["qat_source"] is True and s["formats"]["onnx-int8"]["checks"]["passed"]
    assert (tmp_path / "out" / "onnx-int8.onnx").is_file()


def test_an_unknown_tfmot_layer_is_named():
    """A TF-MOT wrapper the twin does not unwrap (here pruning's) is refused with its layer's name."""
    import tensorflow_model_optimization as tfmot

    pruned = tfmot.sparsity.keras.prune_low_magnitude(_functional())
    with pytest.raises(EdgepackError, match=r"layer 'prune_low_magnitude_b1_conv' \(PruneLowMagnitude\)"):
        float_twin(pruned)
