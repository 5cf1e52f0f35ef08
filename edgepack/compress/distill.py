"""Knowledge distillation from the chain's trained model (Hinton et al. 2015), for any technique.

With `--distill A` (0 < A <= 1) a compress run fine-tunes on
    (1 - A) * cross-entropy(labels) + A * T^2 * KL(teacher_T || student_T)
where x_T is the softmax of log-probabilities divided by the temperature T (`--temperature`, default
4): edgepack's models end in softmax, and log-probabilities are logits up to a constant. The teacher
is the model the chain started from (the trained run at the root of the `source_run` links, so
prune -> cluster -> pcqat all learn from the same model), read through rundir.load_run (sha256
checked). Its softened probabilities on the training images are computed once, before fine-tuning,
and packed next to the labels: Keras's fit() then needs nothing else (TF-MOT's callbacks work as usual).

A matched control distills too (a `finetune` run with the same --distill and --temperature): the
schedule records both (edgepack.compress.core.schedule), so a gain is not credited to compression
when the soft targets made it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepack import rundir
from edgepack.errors import EdgepackError
from edgepack.model import checked_model, load_model, load_run_model, predict_proba

DEFAULTS = {"distill": 0.0, "temperature": 4.0}
MAX_CHAIN = 32  # links followed to find the teacher; more is a loop


def teacher(src: rundir.Run):
    """(model, path) of what the chain of compress runs ending in `src` started from: the trained (or
    adopted) run folder, or the user's model file (its sha256 checked against the one the chain's first
    run recorded)."""
    run = src
    for _ in range(MAX_CHAIN):
        if run.metadata.kind != "compress":
            return checked_model(load_run_model(run), run.model_path), run.path
        parent = run.metadata.source_run
        if parent and rundir.is_run_folder(parent):
            run = rundir.load_run(parent)
            continue
        if parent and Path(parent).exists():  # the chain began at a user's model file
            if Path(parent).is_file() and rundir.sha256_file(parent) != run.metadata.source_sha256:
                raise EdgepackError(f"--distill: {parent}, the model {run.path} was made from, has changed "
                                    "since: restore it or drop --distill")
            return checked_model(load_model(parent), Path(parent)), Path(parent)
        raise EdgepackError(f"--distill needs the chain's trained model, but {run.path} names source "
                            f"{parent!r}, which is not here: keep the source run folders or drop --distill")
    raise EdgepackError(f"{src.path}: more than {MAX_CHAIN} source links (a loop?): re-create the chain")


def soft_targets(teacher, x: np.ndarray, temperature: float) -> np.ndarray:
    """The teacher's probabilities on `x` softened by `temperature` (float32, rows sum to 1)."""
    logp = np.log(np.clip(predict_proba(teacher, x), 1e-7, 1.0)).astype(np.float64) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    p = np.exp(logp)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def packed_targets(labels: np.ndarray, soft: np.ndarray) -> np.ndarray:
    """[label, soft targets...] per image: what the distillation loss and metric unpack."""
    return np.concatenate([labels.astype(np.float32)[:, None], soft], axis=1)


def loss_and_metric(weight: float, temperature: float):
    """(loss, accuracy metric) over packed targets; the metric is named "accuracy" so history.json
    keeps the key every run has."""
    import tensorflow as tf

    def distill_loss(y_true, y_pred):
        labels = tf.cast(y_true[:, 0], tf.int32)
        soft = y_true[:, 1:]
        ce = tf.keras.losses.sparse_categorical_crossentropy(labels, y_pred)
        student = tf.nn.log_softmax(tf.math.log(tf.clip_by_value(y_pred, 1e-7, 1.0)) / temperature)
        kl = tf.reduce_sum(soft * (tf.math.log(tf.clip_by_value(soft, 1e-7, 1.0)) - student), axis=1)
        return (1.0 - weight) * ce + weight * temperature ** 2 * kl

    def accuracy(y_true, y_pred):
        labels = tf.cast(y_true[:, 0], tf.int64)
        return tf.cast(tf.equal(labels, tf.argmax(y_pred, axis=1)), tf.float32)

    return distill_loss, accuracy


def check_params(params: dict) -> None:
    if not 0.0 <= params["distill"] <= 1.0:
        raise EdgepackError("--distill must be between 0 (off) and 1 (soft targets only), got "
                            f"{params['distill']}")
    if not params["temperature"] > 0:
        raise EdgepackError(f"--temperature must be > 0, got {params['temperature']}")
