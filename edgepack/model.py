"""The tutorial's baseline CNN (tf_keras, i.e. Keras 2, because TF-MOT needs it) and model-file I/O."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgepack import keras3, weights
from edgepack.errors import EdgepackError
from edgepack.tfkeras import batches, keras

INPUT_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
BASELINE_PARAMS = 122_570  # the tutorial CNN, counted by Keras
MODEL_FILE = "model.keras"  # plain (non-QAT) models; QAT models use the format compress records
MODEL_FILES = {"keras": MODEL_FILE, "keras-qat-h5": "model.h5"}  # QAT does not round-trip .keras


MIN_CNN_SIDE = 18  # three unpadded 3x3 convs and two 2x2 pools: 18 -> 16 -> 8 -> 6 -> 3 -> 1


def baseline_cnn(num_classes: int = NUM_CLASSES, input_shape: tuple[int, ...] = INPUT_SHAPE):
    """The TensorFlow CNN tutorial network, exactly as the seed builds it (122,570 parameters at 32x32x3)."""
    if min(input_shape[:2]) < MIN_CNN_SIDE:
        raise EdgepackError(f"the tutorial CNN needs images of at least {MIN_CNN_SIDE}x{MIN_CNN_SIDE}, got "
                            f"{input_shape[0]}x{input_shape[1]}: pass --image-size (e.g. 32x32)")
    k = keras()
    layers = k.layers
    return k.Sequential([
        layers.Input(shape=input_shape, name="image"),
        layers.Conv2D(32, (3, 3), activation="relu", name="conv1"),
        layers.MaxPooling2D((2, 2), name="pool1"),
        layers.Conv2D(64, (3, 3), activation="relu", name="conv2"),
        layers.MaxPooling2D((2, 2), name="pool2"),
        layers.Conv2D(64, (3, 3), activation="relu", name="conv3"),
        layers.Flatten(name="flatten"),
        layers.Dense(64, activation="relu", name="dense1"),
        layers.Dense(num_classes, activation="softmax", name="probs"),
    ], name="baseline_cnn")


def compile_model(model, learning_rate: float = 1e-3, loss=None, metric=None) -> None:
    """The tutorial's optimiser and loss: adam, sparse categorical cross-entropy (softmax outputs).
    `loss` and `metric` replace the loss and the accuracy metric (distillation: packed targets)."""
    k = keras()
    model.compile(optimizer=k.optimizers.Adam(learning_rate=learning_rate),
                  loss=loss or k.losses.SparseCategoricalCrossentropy(), metrics=[metric or "accuracy"])


def with_weights(model, weights: list | None = None):
    """An uncompiled copy of `model` carrying `weights` (default: the model's own)."""
    clone = keras().models.clone_model(model)
    clone.set_weights(model.get_weights() if weights is None else weights)
    return clone


def save_model(model, path: str | os.PathLike) -> None:
    """Save a Keras 2 model for inference (edgepack loads models with compile=False)."""
    if str(path).endswith(".keras"):
        # The native format takes no include_optimizer option and would store adam's two slots per
        # weight (3x the file): save an uncompiled clone carrying the same weights instead.
        with_weights(model).save(str(path))
    else:
        model.save(str(path), include_optimizer=False)


def load_model(path: str | os.PathLike, custom_objects: dict | None = None,
               fix: str = "re-create the run folder"):
    """Load a Keras model file as a tf_keras model, refusing anything else with one line.

    Accepted: tf_keras `.keras` and `.h5` files, Keras 3 `.keras` files (rebuilt in tf_keras by
    edgepack.keras3), and Keras-saved SavedModel folders. Every format loads in safe mode (a Lambda
    layer's stored bytecode is refused, never run); `.h5` files are checked for the HDF5 signature
    first. `fix` ends the error message (what the user should do). A run folder's model is loaded
    after load_run() checked its sha256.
    """
    path = Path(path)
    k = keras()
    if not path.exists():
        raise EdgepackError(f"model file {path} not found")
    if path.is_dir():
        return _load_saved_model(path, fix)
    with open(path, "rb") as f:
        head = f.read(8)
    if path.suffix == ".keras" and not head.startswith(b"PK"):
        raise EdgepackError(f"{path} is not a Keras .keras file (not a zip archive): {fix}")
    if path.suffix == ".h5" and head != b"\x89HDF\r\n\x1a\n":
        raise EdgepackError(f"{path} is not an HDF5 model file: {fix}")
    if path.suffix not in (".keras", ".h5"):
        raise EdgepackError(f"{path}: not a model file edgepack reads (.keras, .h5 or a SavedModel folder)")
    version = _keras_file_version(path) if path.suffix == ".keras" else None
    if version and not version.startswith("2."):
        return checked_model(keras3.load(path), path)
    if path.suffix == ".keras":
        _refuse_custom_layers(path)
    from tf_keras.src.saving.serialization_lib import SafeModeScope

    try:
        # Safe mode for every format: a Lambda layer's stored bytecode is refused, never run
        # (`safe_mode=True` alone covers .keras files only; the scope covers .h5 too).
        with SafeModeScope(True):
            kwargs = {"safe_mode": True} if path.suffix == ".keras" else {}
            model = k.models.load_model(str(path), custom_objects=custom_objects, compile=False, **kwargs)
    except Exception as e:  # Keras raises many types for corrupt files
        raise EdgepackError(f"cannot load model {path} ({_reason(e)}): {fix}") from None
    if not isinstance(model, k.Model):
        raise EdgepackError(f"{path} is not a Keras 2 (tf_keras) model")
    return model


def _refuse_custom_layers(path: Path) -> None:
    """Name a layer tf_keras does not define before loading (Keras's own error for it is cryptic)."""
    try:
        with zipfile.ZipFile(path) as z:
            layers = json.loads(z.read("config.json")).get("config", {}).get("layers", [])
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, AttributeError):
        return  # unreadable: load_model says why
    for layer in layers if isinstance(layers, list) else []:
        cls = layer.get("class_name", "") if isinstance(layer, dict) else ""
        if cls and not hasattr(keras().layers, cls) and cls not in ("Functional", "Sequential", "Model"):
            name = (layer.get("config") or {}).get("name")
            raise EdgepackError(f"{path}: layer {name!r} is a custom layer ({cls}): TF-MOT can only wrap "
                                "tf_keras's own layers; rebuild the model from built-in layers")


def _reason(e: Exception) -> str:
    """An exception as one short line (Keras messages span lines; errors are one line)."""
    detail = " ".join(str(e).split())
    if "Unknown layer" in detail or "Could not locate class" in detail:
        detail = detail[:120] + " (a custom layer: TF-MOT can only wrap tf_keras's own layers)"
    return f"{type(e).__name__}: {detail[:240]}"


def _load_saved_model(path: Path, fix: str):
    """A SavedModel folder saved by tf_keras; a plain tf.Module SavedModel has no layers to compress."""
    if not (path / "saved_model.pb").is_file():
        raise EdgepackError(f"{path} is a folder without saved_model.pb: pass a model file, a SavedModel "
                            "folder or a run folder")
    if not (path / "keras_metadata.pb").is_file():
        raise EdgepackError(f"{path} is a plain TensorFlow SavedModel (no Keras layers): edgepack compresses "
                            "Keras models; save it from tf_keras with model.save(PATH)")
    from tf_keras.src.saving.serialization_lib import SafeModeScope

    try:
        with SafeModeScope(True):
            model = keras().models.load_model(str(path), compile=False)
    except Exception as e:  # Keras raises many types for SavedModels it cannot revive
        raise EdgepackError(f"cannot load SavedModel {path} ({_reason(e)}): {fix}") from None
    return checked_model(model, path)


def checked_model(model, path: Path):
    """`model` if TF-MOT can work on it: Sequential or functional, built from tf_keras's own layers,
    no nested models (refused rather than flattened: TF-MOT's wrappers cannot reach inside them)."""
    k = keras()
    if not (isinstance(model, k.Sequential) or getattr(model, "_is_graph_network", False)):
        raise EdgepackError(f"{path} holds a subclassed model ({type(model).__name__}): TF-MOT needs a "
                            "Sequential or functional tf_keras model; rebuild it as one")
    for layer in model.layers:
        if isinstance(layer, k.Model):
            raise EdgepackError(f"{path}: layer {layer.name!r} is a nested model: TF-MOT cannot wrap inside "
                                "it; build the network as one flat functional or Sequential model")
        module = type(layer).__module__
        if not module.startswith("tf_keras."):
            raise EdgepackError(f"{path}: layer {layer.name!r} is a custom layer ({type(layer).__name__}): "
                                "TF-MOT can only wrap tf_keras's own layers")
        if isinstance(layer, k.layers.Lambda):
            raise EdgepackError(f"{path}: layer {layer.name!r} is a Lambda layer: edgepack never runs stored "
                                "code; replace it with a built-in layer")
    return model


def _keras_file_version(path: Path) -> str | None:
    """The keras_version a .keras archive records in its metadata.json (None if unreadable)."""
    try:
        with zipfile.ZipFile(path) as z:
            return str(json.loads(z.read("metadata.json")).get("keras_version") or "") or None
    except (zipfile.BadZipFile, KeyError, ValueError, OSError):
        return None


def save_checked(model, path: str | os.PathLike, model_format: str, x_check: np.ndarray,
                 tolerance: float = 1e-6) -> Path:
    """Save, reload through LOADERS[model_format] and check the reloaded model reproduces `model`'s
    probabilities on `x_check` (float images) within `tolerance`: a run folder never holds a model
    file that loads differently from the model that was evaluated."""
    path = Path(path)
    with warnings.catch_warnings(), scratch_tempdir(path.parent):
        warnings.simplefilter("ignore", UserWarning)  # "HDF5 is legacy": the only format QAT loads back from
        save_model(model, path)
        reloaded = LOADERS[model_format](path)
    diff = float(np.max(np.abs(predict_proba(model, x_check) - predict_proba(reloaded, x_check))))
    if diff > tolerance:
        raise EdgepackError(f"the saved {model_format} model does not reproduce the trained one "
                            f"(max difference {diff:.2e}): report this as a bug")
    return path


@contextlib.contextmanager
def scratch_tempdir(folder: Path) -> Iterator[None]:
    """Send tempfile's folders (Keras's .keras save/load scratch, tmpXXXX/assets) into `folder` for the
    block and delete them after: a save that fails (disk full) otherwise leaves them in $TMPDIR.
    `folder` is the run's temporary folder, which atomic_dir removes if anything fails."""
    scratch = tempfile.mkdtemp(prefix=".keras-scratch-", dir=folder)
    saved, tempfile.tempdir = tempfile.tempdir, scratch
    try:
        yield
    finally:
        tempfile.tempdir = saved
        shutil.rmtree(scratch, ignore_errors=True)


def predict_proba(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class probabilities for float32 images, batched, without Keras's progress bar."""
    return np.asarray(model.predict(batches(x, batch_size=batch_size)[0], verbose=0), dtype=np.float32)


def count_params(model) -> int:
    """Network parameters as edgepack.weights defines them (BatchNorm included, wrappers excluded)."""
    return weights.parameters(model) or int(model.count_params())


def load_qat_model(path: str | os.PathLike):
    """A quantization-aware (QAT / pruning-preserving QAT) model that `edgepack compress` saved as .h5.

    QAT wrappers do not round-trip through .keras files; .h5 does, inside TF-MOT's quantize_scope.
    The loaded model still holds fake-quant wrappers: convert it to int8 TFLite with
    `optimizations=[tf.lite.Optimize.DEFAULT]` (without it the result stays a float model).
    """
    import tensorflow_model_optimization as tfmot

    with tfmot.quantization.keras.quantize_scope():
        return load_model(path)


# How to load each `model_format` a run folder's metadata may record. Techniques whose models need
# another format (QAT wrappers) add an entry; everything that opens a run folder goes through here.
LOADERS = {"keras": load_model, "keras-qat-h5": load_qat_model}


def describe(model, path: Path) -> dict:
    """What edgepack reads from a user's model: input shape (H, W, C), class count, and whether it
    rescales its own pixels (a Rescaling/Normalization layer before its first weighted layer)."""
    k = keras()
    shape = model.input_shape
    if isinstance(shape, list) or len(shape) != 4 or None in shape[1:]:
        raise EdgepackError(f"{path}: input shape {shape} is not one fixed image shape (batch, H, W, C): "
                            "edgepack classifies single images of a fixed size")
    out = model.output_shape
    if isinstance(out, list) or len(out) != 2:
        raise EdgepackError(f"{path}: output shape {out} is not (batch, classes): one output of class "
                            "probabilities is needed")
    last = model.layers[-1]
    if not (isinstance(last, k.layers.Softmax) or getattr(last, "activation", None) is k.activations.softmax):
        raise EdgepackError(f"{path}: the last layer {last.name!r} does not end in softmax: edgepack "
                            "fine-tunes and reports class probabilities; add a Softmax layer")
    rescales = False
    for layer in model.layers:
        if isinstance(layer, k.layers.Rescaling | k.layers.Normalization):
            rescales = True
        if layer.weights and not isinstance(layer, k.layers.Normalization):
            break
    return {"input_shape": [int(v) for v in shape[1:]], "num_classes": int(out[-1]), "rescales": rescales}


def load_run_model(run):
    """The Keras model of a checked run folder (edgepack.rundir.load_run) or model file (load_source)."""
    if getattr(run, "model", None) is not None:
        return run.model
    fmt = run.metadata.model_format
    loader = LOADERS.get(fmt)
    if loader is None:
        raise EdgepackError(f"{run.path}: unknown model_format {fmt!r} (known: {', '.join(LOADERS)})")
    return loader(run.model_path)
