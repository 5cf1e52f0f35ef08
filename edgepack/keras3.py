"""Keras 3 `.keras` files into tf_keras (Keras 2), which TF-MOT needs.

tf_keras cannot read Keras 3 archives. A child process loads the file with Keras 3 (safe mode:
a Lambda layer's bytecode is refused, never run) and writes its architecture (JSON) and weights
(.npz, read back without pickle); this process turns the Keras 3 config into Keras 2's (dtype
policies, InputLayer shapes, functional node lists), rebuilds it with tf_keras layer by layer and
checks both models give the same outputs on random images. A layer with no tf_keras twin gets one
line naming it. A child process keeps Keras 3 from changing which Keras `tf.keras` means here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError
from edgepack.tfkeras import keras

RESAVE = "re-save it with tf_keras (`import tf_keras as keras`) or as a SavedModel folder"
TOLERANCE = 1e-4  # max |difference| of outputs between the Keras 3 file and its tf_keras rebuild

_CHILD = r"""
import json, sys, numpy as np, keras
path, out = sys.argv[1], sys.argv[2]
m = keras.saving.load_model(path, compile=False, safe_mode=True)
if not isinstance(m, (keras.Sequential, keras.Model)) or type(m).__name__ not in ("Sequential", "Functional"):
    print("SUBCLASSED " + type(m).__name__); sys.exit(3)
json.dump({"config": json.loads(m.to_json())}, open(out + "/model.json", "w"))
w = {f"{l.name}|{i}": np.asarray(v) for l in m.layers for i, v in enumerate(l.get_weights())}
np.savez(out + "/weights.npz", **w)
x = np.random.default_rng(0).uniform(0, 1, (4, *m.input_shape[1:])).astype("float32")
np.savez(out + "/probe.npz", x=x, y=np.asarray(m(x, training=False)))
"""


def load(path: Path):
    """A tf_keras model rebuilt from the Keras 3 file `path` (EdgepackError with one line if not)."""
    with tempfile.TemporaryDirectory(prefix="edgepack-keras3-") as tmp:
        env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
        env["TF_CPP_MIN_LOG_LEVEL"] = "3"
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(path), tmp], capture_output=True,
                              text=True, env=env, timeout=600)
        if proc.returncode == 3:
            raise EdgepackError(f"{path} holds a subclassed Keras 3 model "
                                f"({proc.stdout.split()[-1]}): TF-MOT needs a Sequential or functional "
                                "model; rebuild it as one")
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise EdgepackError(f"cannot load Keras 3 file {path} ({last[:200]}): {RESAVE}")
        config = json.loads(Path(tmp, "model.json").read_text())["config"]
        with np.load(Path(tmp, "weights.npz"), allow_pickle=False) as z:
            stored = {k: z[k] for k in z.files}
        with np.load(Path(tmp, "probe.npz"), allow_pickle=False) as z:
            x, y = z["x"], z["y"]
    model = _rebuild(config, path)
    _set_weights(model, stored, path)
    diff = float(np.max(np.abs(np.asarray(model(x, training=False)) - y)))
    if diff > TOLERANCE:
        raise EdgepackError(f"{path}: the tf_keras rebuild of this Keras 3 model differs from it by "
                            f"{diff:.2e}: {RESAVE}")
    return model


def _rebuild(config: dict, path: Path):
    k = keras()
    kind = config.get("class_name")
    layers = config["config"]["layers"]
    for layer in layers:
        cls = layer.get("class_name")
        if layer.get("registered_name") or not hasattr(k.layers, cls):
            raise EdgepackError(f"{path}: layer {layer['config'].get('name')!r} ({cls}) has no tf_keras "
                                f"twin: {RESAVE}")
        try:
            layer["config"] = _layer_config(layer["config"])
        except EdgepackError as e:
            raise EdgepackError(f"{path}: {e}, which tf_keras does not have: {RESAVE}") from None
        if kind == "Functional":
            layer["inbound_nodes"] = [_node(n) for n in layer.get("inbound_nodes", [])]
    if kind == "Functional":
        for key in ("input_layers", "output_layers"):
            refs = config["config"][key]
            config["config"][key] = [refs] if refs and isinstance(refs[0], str) else refs
    try:
        return k.models.model_from_json(json.dumps({"class_name": kind, "config": config["config"]}))
    except Exception as e:  # Keras raises many types for configs it cannot take
        detail = " ".join(str(e).split())[:160]
        raise EdgepackError(f"{path}: cannot rebuild this Keras 3 model in tf_keras ({detail}): "
                            f"{RESAVE}") from None


# Keras 3 options tf_keras layers do not take; all are off (None/False) in a model that converts.
KERAS3_ONLY = ("optional", "quantization_config", "lora_rank", "lora_alpha")
KERAS3_INIT_ONLY = ("input_axes", "output_axes")  # new VarianceScaling arguments


def _layer_config(cfg: dict) -> dict:
    """A Keras 3 layer config in Keras 2 terms: dtype policy dicts as names, batch_shape."""
    cfg = dict(cfg)
    if isinstance(cfg.get("dtype"), dict):
        cfg["dtype"] = cfg["dtype"].get("config", {}).get("name", "float32")
    if "batch_shape" in cfg:
        cfg["batch_input_shape"] = cfg.pop("batch_shape")
    for key in KERAS3_ONLY:
        if cfg.get(key) not in (None, False):
            raise EdgepackError(f"layer {cfg.get('name')!r} uses the Keras 3 option {key}={cfg[key]!r}")
        cfg.pop(key, None)
    for value in cfg.values():
        if isinstance(value, dict) and isinstance(value.get("config"), dict):
            for key in KERAS3_INIT_ONLY:
                value["config"].pop(key, None)
    return cfg


def _node(node: dict) -> list:
    """Keras 3 {"args": [tensor or [tensors]], "kwargs": {}} -> Keras 2 [[layer, node, tensor, kwargs]]."""
    refs = []

    def walk(obj):
        if isinstance(obj, dict) and obj.get("class_name") == "__keras_tensor__":
            layer, node_index, tensor_index = obj["config"]["keras_history"]
            refs.append([layer, node_index, tensor_index, {}])
        elif isinstance(obj, list | tuple):
            for item in obj:
                walk(item)

    walk(node.get("args", []))
    return refs


def _set_weights(model, stored: dict, path: Path) -> None:
    for layer in model.layers:
        keys = [f"{layer.name}|{i}" for i in range(len(layer.weights))]
        values = [stored[key] for key in keys if key in stored]
        if len(values) != len(layer.weights):
            raise EdgepackError(f"{path}: layer {layer.name!r} has {len(values)} stored weights, tf_keras "
                                f"expects {len(layer.weights)}: {RESAVE}")
        try:
            layer.set_weights(values)
        except ValueError as e:
            detail = " ".join(str(e).split())[:160]
            raise EdgepackError(f"{path}: layer {layer.name!r}: {detail}: {RESAVE}") from None
