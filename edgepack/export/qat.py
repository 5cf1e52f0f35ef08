"""QAT / PQAT models (TF-MOT quantize wrappers): their float twin, for the ONNX int8 route.

A QAT model is a float model wrapped in fake-quant ops. TFLite turns it into int8 directly (with
Optimize.DEFAULT). For ONNX, edgepack quantises the float twin (same layers and weights, no
wrappers) with ONNX Runtime's static quantisation, the fast route (see edgepack.export.to_onnx).
"""

from __future__ import annotations

from edgepack.errors import EdgepackError


def float_twin(model):
    """The QAT model's float network: each wrapped layer rebuilt from its config, with its kernel/bias."""
    from edgepack.model import keras

    k = keras()
    if not isinstance(model, k.Sequential):
        raise EdgepackError(f"cannot rebuild the float network of QAT model {model.name!r} (not Sequential): "
                            "export it to tflite-int8 instead")
    layers, weights = [], []
    for wrapper in model.layers:
        inner = getattr(wrapper, "layer", None)
        if inner is None:
            continue  # the input QuantizeLayer
        cfg = inner.get_config()
        act = cfg.get("activation")
        if isinstance(act, dict) and act.get("class_name") == "QuantizeAwareActivation":
            cfg["activation"] = act["config"]["activation"]
        layers.append(type(inner).from_config(cfg))
        # Inside a QuantizeWrapper the float weights are the wrapper's, named ...kernel:0 / ...bias:0.
        weights.append([v.numpy() for v in wrapper.weights if v.name.endswith(("kernel:0", "bias:0"))])
    twin = k.Sequential([k.layers.Input(shape=model.input_shape[1:], name="image"), *layers], name=model.name)
    for layer, w in zip(twin.layers, weights, strict=True):
        if w:
            layer.set_weights(w)
    return twin
