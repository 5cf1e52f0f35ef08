"""The Keras 2 module (tf_keras), imported only when called: the one way edgepack reaches Keras."""

from __future__ import annotations

import os


def keras():
    """The Keras 2 module (tf_keras). Never `tf.keras`: TF-MOT flips it between Keras 2 and 3."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tf_keras

    return tf_keras


def batches(x, y=None, batch_size: int = 32, shuffle: bool = False, epochs: int = 1):
    """numpy arrays as the batches Keras itself makes of them (tf_keras's own adapter: the same order
    and the same shuffling as `fit(x, y, shuffle=True)`, so the same weights), as a tf.data.Dataset
    with tf.data's autotuning off, and the number of batches per epoch.

    Why: with autotuning on, the end of a fit() or predict() on arrays can wait for the autotuner's
    thread to wake before it frees the iterator, idle: up to 38 s after a fit and ~1 s after a predict
    on 2 cores. Autotuning gains nothing here (the epochs took as long with it off): the batches are
    slices of arrays in memory."""
    from tf_keras.src.engine.data_adapter import TensorLikeDataAdapter

    adapter = TensorLikeDataAdapter(x, y, batch_size=batch_size, shuffle=shuffle, epochs=epochs)
    return without_autotune(adapter.get_dataset()), adapter.get_size()


def without_autotune(dataset):
    """`dataset` with tf.data's autotuning off (see `batches`)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)
