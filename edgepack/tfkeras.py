"""The Keras 2 module (tf_keras), imported only when called: the one way edgepack reaches Keras."""

from __future__ import annotations

import os


def keras():
    """The Keras 2 module (tf_keras). Never `tf.keras`: TF-MOT flips it between Keras 2 and 3."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tf_keras

    return tf_keras
