"""The fit-and-write path shared by `train` and `compress` (below both: neither imports the other).

fit_checked() fits with edgepack's verbosity and refuses a diverged model; evaluate() scores the
test images fed through the run's pixel-scaling spec; write_run() saves the model (checked by a
reload), the history, metrics and metadata into a run folder that appears only when complete.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from edgepack import data as data_mod
from edgepack import rundir
from edgepack.errors import EdgepackError
from edgepack.metrics import classification_metrics, imbalance_line
from edgepack.model import MODEL_FILES, count_params, load_run_model, predict_proba, save_checked
from edgepack.runtime.preprocess import PIXEL_SCALING, scale_pixels
from edgepack.sources import source_and_data
from edgepack.tfkeras import batches, keras, without_autotune

ROUND_TRIP_IMAGES = 64  # training images the saved model must reproduce after reloading


def data_metadata(ds: data_mod.Dataset, scaling: dict | None = None) -> dict:
    """What a model's metadata says about its data and input (read by export and the runtime)."""
    return {
        "class_names": list(ds.class_names),
        "input_shape": [int(v) for v in ds.x_train.shape[1:]],
        "input_dtype": "uint8",
        "pixel_scaling": scaling or PIXEL_SCALING,
        "data_source": ds.source,
        "data_sha256": ds.sha256,
        "num_train_images": int(len(ds.y_train)),
        "num_test_images": int(len(ds.y_test)),
        "test_images_sha256": data_mod.test_set_sha256(ds),  # which test images metrics.json used
        "split": dict(ds.split),  # how train/test were formed (the one-folder layout's seeded rule)
    }


def evaluate(model, ds: data_mod.Dataset, scaling: dict | None = None) -> tuple[dict, np.ndarray]:
    """Test-set metrics of a Keras model fed by `scaling` (default [0, 1]), and its probabilities."""
    probs = predict_proba(model, scale_pixels(ds.x_test, scaling))
    return classification_metrics(ds.y_test, probs.argmax(axis=1), ds.class_names), probs


def warn_weak_classes(metrics: dict, where: str = "") -> None:
    """Print edgepack.metrics' one warning line when `metrics` has weak classes (stdout, after the
    accuracy line it qualifies)."""
    line = imbalance_line(metrics.get("weak_classes") or {}, metrics["accuracy"], metrics["f1_macro"], where)
    if line:
        print(f"warning: {line}", flush=True)


def keras_verbosity() -> int:
    """Keras progress: a live bar on a terminal, one line per epoch in logs and CI."""
    return 1 if sys.stdout.isatty() else 2


# Random changes made to the training images while fine-tuning (`--augment`); "none" feeds them as they are.
# "flip" mirrors a random half of each batch left-right; "flip-shift" also moves every image by up to
# SHIFT pixels each way (reflect-padded, then cropped: the usual CIFAR recipe). Right for photographs
# such as CIFAR-10, wrong for images whose meaning has a side (digits, text): never on by default.
AUGMENTATIONS = ("none", "flip", "flip-shift")
SHIFT = 4


def fit_checked(model, x: np.ndarray, y: np.ndarray, epochs: int, batch_size: int, callbacks=(),
                augment: str = "none", seed: int = 0, **kwargs):
    """model.fit (shuffled, edgepack's verbosity) that stops at the first batch whose loss is NaN or inf
    and raises EdgepackError: a diverged model is not a result, so no run folder is written. With
    `augment` other than "none" the images are fed through `augmented` (seeded: a run repeats)."""
    if augment == "none":  # Keras's own shuffled batches (tfkeras.batches)
        data, steps = batches(x, y, batch_size, shuffle=True, epochs=epochs)
        feed = dict(x=data, steps_per_epoch=steps)
    else:
        feed = dict(x=augmented(x, y, batch_size, augment, seed))
    if "validation_data" in kwargs:  # held-out images, scored after each epoch as fit(x, y) would
        xv, yv = kwargs.pop("validation_data")
        kwargs["validation_data"] = batches(xv, yv, batch_size)[0]
    hist = model.fit(**feed, epochs=epochs, verbose=keras_verbosity(),
                     callbacks=[*callbacks, keras().callbacks.TerminateOnNaN()], **kwargs)
    bad = sorted(k for k, v in hist.history.items() if v and not math.isfinite(v[-1]))
    if model.stop_training or bad:
        epoch = len(hist.history.get("loss", [])) or 1
        raise EdgepackError(f"training diverged: {' and '.join(bad) or 'the loss'} became NaN or inf in "
                            f"epoch {epoch}: lower --learning-rate")
    return hist


def check_augment(augment) -> None:
    if augment not in AUGMENTATIONS:
        raise EdgepackError(f"--augment must be one of {', '.join(AUGMENTATIONS)}, got {augment!r}")


def augmented(x: np.ndarray, y: np.ndarray, batch_size: int, augment: str, seed: int):
    """A tf.data feed of (images, targets) batches, shuffled each epoch, with `augment` applied to the
    images (targets, soft ones included, pass through). Random draws come from one seeded generator in
    a sequential map, so the same seed gives the same batches."""
    import tensorflow as tf

    check_augment(augment)
    height, width = x.shape[1:3]
    shift = augment == "flip-shift"
    if shift and min(height, width) <= SHIFT:
        raise EdgepackError(f"--augment flip-shift moves images by up to {SHIFT} pixels: these are "
                            f"{height}x{width}; use --augment flip")
    gen = tf.random.Generator.from_seed(seed)

    def draws(idx):  # per image: mirrored or not, then (flip-shift) its window's row and column offsets
        n = tf.shape(idx)[0]
        mirror = gen.uniform([n]) < 0.5
        if not shift:
            return idx, mirror, tf.fill([n, 1], SHIFT), tf.fill([n, 1], SHIFT)  # centred: no move
        rows = gen.uniform([n, 1], 0, 2 * SHIFT + 1, dtype=tf.int32)
        cols = gen.uniform([n, 1], 0, 2 * SHIFT + 1, dtype=tf.int32)
        return idx, mirror, rows, cols

    # Shuffle indices, not images: the same seeded permutation as shuffling the (image, target) pairs
    # themselves (the shuffle's draws do not depend on what it holds), without copying every image
    # through a 50,000-element buffer each epoch. Each batch is then read from the arrays in one gather
    # whose indices do the mirroring and the shift: the window at offset (dy, dx) of the image
    # reflect-padded by SHIFT (edge not repeated), mirrored first. Pure data movement: the same pixels
    # as padding and cropping with TensorFlow ops, at half the CPU time.
    def take(idx, mirror, rows, cols):
        r = _reflect(rows + np.arange(height)[None] - SHIFT, height)  # (n, height) source rows
        c = _reflect(cols + np.arange(width)[None] - SHIFT, width)
        c = np.where(mirror[:, None], width - 1 - c, c)
        return x[idx[:, None, None], r[:, :, None], c[:, None, :]], y[idx]

    def gather(idx, mirror, rows, cols):
        images, targets = tf.numpy_function(take, [idx, mirror, rows, cols],
                                            (tf.as_dtype(x.dtype), tf.as_dtype(y.dtype)))
        images.set_shape((None, *x.shape[1:]))
        targets.set_shape((None, *y.shape[1:]))
        return images, targets

    order = tf.data.Dataset.range(len(x)).shuffle(len(x), seed=seed)  # reshuffled each epoch
    return without_autotune(order.batch(batch_size).map(draws).map(gather).prefetch(tf.data.AUTOTUNE))


def _reflect(i: np.ndarray, n: int) -> np.ndarray:
    """Source index of index `i` (-n < i < 2n - 1) of an axis of length n reflect-padded (edge not
    repeated: TensorFlow's REFLECT, numpy's "reflect")."""
    i = np.abs(i)
    return np.where(i > n - 1, 2 * (n - 1) - i, i)


def seed_everything(seed: int) -> None:
    keras().utils.set_random_seed(seed)


def write_run(out, force: bool, model, model_format: str, x_check: np.ndarray, metadata: dict,
              metrics: dict, hist) -> Path:
    """Save `model` (weights only, reload-checked on `x_check`) and the run's JSON files into `out`.

    `metadata` gets model_file, model_format, parameters and model_gzip_bytes added here, so every
    run folder counts them the same way (edgepack.weights)."""
    with rundir.atomic_dir(out, force) as tmp:
        path = save_checked(model, tmp / MODEL_FILES[model_format], model_format, x_check)
        metadata = {**metadata, "model_file": path.name, "model_format": model_format,
                    "parameters": count_params(model), "model_gzip_bytes": rundir.gzip_size(path)}
        history = {k: [float(v) for v in vals] for k, vals in hist.history.items()} if hist else None
        rundir.write_run_files(tmp, metadata, metrics, history)
    return Path(out)


def adopt(source, out, ds, force: bool = False, **source_options) -> Path:
    """A user's model file as a baseline run folder: evaluated on `ds`'s test images and saved without
    optimizer state, so every stage after it (compress, export, compare) reads one kind of source."""
    src, ds = source_and_data(source, ds=ds, **source_options)
    model = load_run_model(src)
    scaling = src.metadata.pixel_scaling
    metrics, _ = evaluate(model, ds, scaling)
    metadata = {"kind": "adopt", "technique": "baseline", "variant": "baseline", "adopted_from": str(source),
                "source_sha256": src.metadata.model_sha256, **data_metadata(ds, scaling)}
    return write_run(out, force, model, "keras", scale_pixels(ds.x_train[:ROUND_TRIP_IMAGES], scaling),
                     metadata, metrics, None)
