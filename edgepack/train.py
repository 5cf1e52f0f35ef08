"""Train the seed's baseline CNN and write a run folder (see edgepack.rundir for its layout)."""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgepack import data as data_mod
from edgepack import rundir
from edgepack.errors import EdgepackError, require_toolchain
from edgepack.runtime.preprocess import PIXEL_SCALING, scale_pixels


@dataclass(frozen=True)
class TrainConfig:
    """The seed's recipe by default."""

    epochs: int = 10  # the seed trains 10 epochs
    batch_size: int = 32  # Keras's default, as in the seed
    learning_rate: float = 1e-3  # adam's default
    seed: int = 0  # weights, shuffling and subsets
    validation_split: float = 0.0  # share of training images held out for val_* history (seed: none)
    limit_train: int | None = None  # class-balanced training subset (None: all 50,000)
    limit_test: int | None = None  # class-balanced test subset (None: all 10,000)

    def check(self) -> None:
        if self.epochs < 1:
            raise EdgepackError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise EdgepackError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.validation_split < 1.0:  # False for NaN
            raise EdgepackError(f"--validation-split must be in [0, 1), got {self.validation_split}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise EdgepackError(f"--learning-rate must be a finite number > 0, got {self.learning_rate}")
        data_mod.check_limits(limit_train=self.limit_train, limit_test=self.limit_test)


def data_metadata(ds: data_mod.Cifar10) -> dict:
    """What a model's metadata says about its data and input (read by export and the runtime)."""
    return {
        "class_names": list(ds.class_names),
        "input_shape": list(data_mod.IMAGE_SHAPE),
        "input_dtype": "uint8",
        "pixel_scaling": PIXEL_SCALING,
        "data_source": ds.source,
        "data_sha256": ds.sha256,
        "num_train_images": int(len(ds.y_train)),
        "num_test_images": int(len(ds.y_test)),
        "test_images_sha256": data_mod.test_set_sha256(ds),  # which test images metrics.json used
    }


def evaluate(model, ds: data_mod.Cifar10) -> tuple[dict, np.ndarray]:
    """Test-set metrics of a Keras model, and its probabilities (N, 10)."""
    from edgepack.metrics import classification_metrics
    from edgepack.model import predict_proba

    probs = predict_proba(model, scale_pixels(ds.x_test))
    return classification_metrics(ds.y_test, probs.argmax(axis=1), ds.class_names), probs


def keras_verbosity() -> int:
    """Keras progress: a live bar on a terminal, one line per epoch in logs and CI."""
    return 1 if sys.stdout.isatty() else 2


def fit_checked(model, x: np.ndarray, y: np.ndarray, epochs: int, batch_size: int, callbacks=(), **kwargs):
    """model.fit (shuffled, edgepack's verbosity) that stops at the first batch whose loss is NaN or inf
    and raises EdgepackError: a diverged model is not a result, so no run folder is written."""
    from edgepack.model import keras

    hist = model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=keras_verbosity(),
                     callbacks=[*callbacks, keras().callbacks.TerminateOnNaN()], **kwargs)
    bad = sorted(k for k, v in hist.history.items() if v and not math.isfinite(v[-1]))
    if model.stop_training or bad:
        epoch = len(hist.history.get("loss", [])) or 1
        raise EdgepackError(f"training diverged: {' and '.join(bad) or 'the loss'} became NaN or inf in "
                            f"epoch {epoch}: lower --learning-rate")
    return hist


def seed_everything(seed: int) -> None:
    from edgepack.model import keras

    keras().utils.set_random_seed(seed)


def train(data_path: str | os.PathLike | None, out: str | os.PathLike, config: TrainConfig = TrainConfig(),
          force: bool = False, ds: data_mod.Cifar10 | None = None) -> Path:
    """Train the baseline on CIFAR-10 and write the run folder `out`; returns its path."""
    require_toolchain("edgepack train")
    config.check()
    with rundir.claim_output(out, {"--data": data_path}, force):
        return _train(data_path, out, config, force, ds)


def _train(data_path, out, config: TrainConfig, force: bool, ds: data_mod.Cifar10 | None) -> Path:
    from edgepack.model import baseline_cnn, compile_model, count_params, save_checked

    started = time.time()
    if ds is None:
        ds = data_mod.load_cifar10(data_path, config.limit_train, config.limit_test, config.seed)
    print(f"data: {len(ds.y_train)} training / {len(ds.y_test)} test images from {ds.source}", flush=True)
    seed_everything(config.seed)
    model = baseline_cnn(len(ds.class_names))
    compile_model(model, config.learning_rate)
    t0 = time.time()
    hist = fit_checked(model, scale_pixels(ds.x_train), ds.y_train, epochs=config.epochs,
                       batch_size=config.batch_size, validation_split=config.validation_split)
    train_seconds = time.time() - t0
    metrics, _ = evaluate(model, ds)
    print(f"test accuracy {metrics['accuracy']:.4f} after {train_seconds:.0f} s of training", flush=True)
    from edgepack.model import MODEL_FILE

    with rundir.atomic_dir(out, force) as tmp:
        save_checked(model, tmp / MODEL_FILE, "keras", scale_pixels(ds.x_train[:64]))
        metadata = {
            "kind": "train", "technique": "baseline", "variant": "baseline", "model_file": MODEL_FILE,
            "model_format": "keras",
            "config": asdict(config), "parameters": count_params(model), **data_metadata(ds),
            "train_seconds": round(train_seconds, 2), "wall_seconds": round(time.time() - started, 2),
        }
        history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
        rundir.write_run_files(tmp, metadata, metrics, history)
    return Path(out)
