"""Train the tutorial's baseline CNN and write a run folder (see edgepack.rundir for its layout;
the fit-and-write steps are edgepack.fitting's, shared with compress)."""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edgepack import data as data_mod
from edgepack import rundir
from edgepack.errors import EdgepackError, require_toolchain
from edgepack.fitting import (  # noqa: F401  (re-exported: train's helpers before fitting.py)
    ROUND_TRIP_IMAGES,
    data_metadata,
    evaluate,
    fit_checked,
    keras_verbosity,
    seed_everything,
    warn_weak_classes,
    write_run,
)
from edgepack.model import baseline_cnn, compile_model
from edgepack.runtime.preprocess import scale_pixels


@dataclass(frozen=True)
class TrainConfig:
    """The tutorial's recipe by default."""

    epochs: int = 10  # the seed trains 10 epochs
    batch_size: int = 32  # Keras's default, as in the seed
    learning_rate: float = 1e-3  # adam's default
    seed: int = 0  # weights, shuffling and subsets
    # share of training images held out (seeded, stratified: edgepack.data.validation_split), never
    # fitted on: val_* history, and `edgepack optimize --val-fraction` with the same seed scores on them
    validation_split: float = 0.0
    limit_train: int | None = None  # class-balanced training subset (None: all 50,000)
    limit_test: int | None = None  # class-balanced test subset (None: all 10,000)
    image_size: tuple[int, int] | None = None  # image folders: (height, width) to resize to (None: as read)

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


def train(data_path: str | os.PathLike | None, out: str | os.PathLike, config: TrainConfig = TrainConfig(),
          force: bool = False, ds: data_mod.Dataset | None = None) -> Path:
    """Train the baseline CNN on the data (CIFAR-10 or an image folder) and write the run folder `out`."""
    require_toolchain("edgepack train")
    config.check()
    with rundir.claim_output(out, {"--data": data_path}, force):
        return _train(data_path, out, config, force, ds)


def _train(data_path, out, config: TrainConfig, force: bool, ds: data_mod.Dataset | None) -> Path:
    started = time.time()
    if ds is None:
        ds = data_mod.load_data(data_path, config.limit_train, config.limit_test, config.seed,
                                image_size=config.image_size)
    print(f"data: {len(ds.y_train)} training / {len(ds.y_test)} test images from {ds.source}", flush=True)
    seed_everything(config.seed)
    model = baseline_cnn(len(ds.class_names), tuple(ds.input_shape))  # the tutorial CNN at the data's shape
    compile_model(model, config.learning_rate)
    fit_ds, held_out, fit_options = ds, None, {}
    if config.validation_split > 0:
        fit_ds, held_out = data_mod.validation_split(ds, config.validation_split, config.seed)
        fit_options["validation_data"] = (scale_pixels(fit_ds.x_test), fit_ds.y_test)
        print(f"validation: {held_out['validation_images']} training images held out, never fitted on",
              flush=True)
    t0 = time.time()
    hist = fit_checked(model, scale_pixels(fit_ds.x_train), fit_ds.y_train, epochs=config.epochs,
                       batch_size=config.batch_size, **fit_options)
    train_seconds = time.time() - t0
    metrics, _ = evaluate(model, ds)
    print(f"test accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['f1_macro']:.4f} after "
          f"{train_seconds:.0f} s of training", flush=True)
    warn_weak_classes(metrics)
    metadata = {
        "kind": "train", "technique": "baseline", "variant": "baseline",
        "config": asdict(config), **data_metadata(ds), "num_train_images": int(len(fit_ds.y_train)),
        "validation": held_out,
        "train_seconds": round(train_seconds, 2), "wall_seconds": round(time.time() - started, 2),
    }
    return write_run(out, force, model, "keras", scale_pixels(ds.x_train[:ROUND_TRIP_IMAGES]), metadata,
                     metrics, hist)
