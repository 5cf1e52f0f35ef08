"""QAT / PQAT models (TF-MOT quantize wrappers): their float twin, for the ONNX int8 route.

A QAT model is a float model wrapped in fake-quant ops. TFLite turns it into int8 directly (with
Optimize.DEFAULT). For ONNX, edgepack quantises the float twin (same layers and weights, no
wrappers) with ONNX Runtime's static quantisation, the fast route (see edgepack.export.to_onnx).

The twin is rebuilt from the QAT model's functional config (a Sequential model is read as the
functional graph it is), so Sequential and functional models take one path: each QuantizeWrapper is
replaced by its inner layer (TF-MOT's QuantizeAwareActivation unwrapped to the plain activation),
each QuantizeLayer (input fake-quant, identity in float) is dropped and its consumers rewired to its
input, and layers TF-MOT left unwrapped (BatchNormalization, Rescaling) stay as they are. TF-MOT has
already split SeparableConv2D into DepthwiseConv2D + 1x1 Conv2D: the twin keeps that split.
"""

from __future__ import annotations

from edgepack import weights
from edgepack.errors import EdgepackError
from edgepack.tfkeras import keras

WRAPPERS = ("QuantizeWrapperV2", "QuantizeWrapper")  # hold one float layer plus its quantizers
INPUT_QUANTIZER = "QuantizeLayer"  # fake-quantizes a tensor: identity in the float network
FAKE_ACTIVATION = "QuantizeAwareActivation"  # wraps a plain activation inside a wrapped layer
NO_OP_ACTIVATION = "NoOpActivation"  # set on a conv before BatchNorm: identity, i.e. "linear" in float
TFMOT_MODULE = "tensorflow_model_optimization"
TFMOT_CLASSES = {*WRAPPERS, INPUT_QUANTIZER, FAKE_ACTIVATION, NO_OP_ACTIVATION}  # serialised without a module


def float_twin(model):
    """The QAT model's float network: its layers without TF-MOT's wrappers, with the same float
    weights (kernels, biases, BatchNorm statistics; not TF-MOT's min/max/step variables)."""
    k = keras()
    # A Sequential model is a functional graph too: read it as one, so both kinds take one path.
    graph = k.Model(model.inputs, model.outputs, name=model.name) if isinstance(model, k.Sequential) \
        else model
    try:
        config = graph.get_config()
        config["layers"]
    except (NotImplementedError, KeyError):
        raise EdgepackError(f"cannot rebuild the float network of QAT model {model.name!r}: it is not a "
                            "Sequential or functional model: export it to tflite-int8 instead") from None
    layers, renamed = [], {}  # renamed: {layer name in the QAT config: [name, node, tensor] in the twin}
    for entry in config["layers"]:
        if entry["class_name"] == INPUT_QUANTIZER:
            renamed[entry["name"]] = _single_input(entry)
            continue
        if entry["class_name"] in WRAPPERS:
            entry = _unwrapped(entry)
            if entry["wrapper"] != entry["name"]:  # a self-reference would make _rewired loop forever
                renamed[entry["wrapper"]] = [entry["name"], None, None]
        _refuse_tfmot(entry)
        _deserializes(k, entry)
        layers.append(entry)
    for entry in layers:
        entry.pop("wrapper", None)
        entry["inbound_nodes"] = [[_rewired(ref, renamed) for ref in node] for node in entry["inbound_nodes"]]
    twin_config = {**config, "layers": layers,
                   "input_layers": [_rewired(ref, renamed) for ref in config["input_layers"]],
                   "output_layers": [_rewired(ref, renamed) for ref in config["output_layers"]]}
    try:
        twin = k.Model.from_config(twin_config)
    except (ValueError, TypeError, KeyError) as e:
        raise EdgepackError(f"cannot rebuild the float network of QAT model {model.name!r} "
                            f"({str(e).splitlines()[0][:200]}): export it to tflite-int8 instead") from None
    _copy_float_weights(model, twin)
    return twin


def _unwrapped(entry: dict) -> dict:
    """A wrapper's config entry turned into its inner layer's, keeping the wrapper's graph position."""
    inner = entry["config"]["layer"]
    cfg = {key: _float_activation(value) for key, value in inner["config"].items()}
    return {**inner, "config": cfg, "name": cfg["name"], "inbound_nodes": entry["inbound_nodes"],
            "wrapper": entry["name"]}


def _float_activation(value):
    """A config value with TF-MOT's activation wrappers replaced by the float activation they run."""
    if _is(value, FAKE_ACTIVATION):
        return _float_activation(value["config"]["activation"])
    return "linear" if value == NO_OP_ACTIVATION or _is(value, NO_OP_ACTIVATION) else value


def _is(value, class_name: str) -> bool:
    return isinstance(value, dict) and value.get("class_name") == class_name


def _single_input(entry: dict) -> list:
    """The one tensor a QuantizeLayer reads, as a [layer, node, tensor] reference."""
    nodes = entry["inbound_nodes"]
    if len(nodes) != 1 or len(nodes[0]) != 1:
        raise EdgepackError(f"cannot rebuild the float network: QAT layer {entry['name']!r} is used "
                            f"{len(nodes)} times or reads several tensors: export it to tflite-int8 instead")
    return list(nodes[0][0][:3])


def _rewired(ref: list, renamed: dict) -> list:
    """A [layer, node, tensor, ...] reference with dropped or unwrapped layers replaced (chains too)."""
    ref = list(ref)
    while ref[0] in renamed:
        name, node, tensor = renamed[ref[0]]
        ref[:3] = [name, ref[1] if node is None else node, ref[2] if tensor is None else tensor]
    return ref


def _refuse_tfmot(entry: dict) -> None:
    """Anything of TF-MOT's left after unwrapping cannot be rebuilt as a float layer: say which."""
    def walk(value):
        if isinstance(value, dict):
            return (str(value.get("module", "")).startswith(TFMOT_MODULE)
                    or value.get("class_name") in TFMOT_CLASSES or any(map(walk, value.values())))
        return isinstance(value, list) and any(map(walk, value))

    if walk(entry):
        raise EdgepackError(f"cannot rebuild the float network: layer {entry['name']!r} "
                            f"({entry['class_name']}) holds a TF-MOT part edgepack does not unwrap: "
                            "export it to tflite-int8 instead")


def _deserializes(k, entry: dict) -> None:
    """Each float layer must build from its config alone: name the first that does not."""
    try:
        k.layers.deserialize({"class_name": entry["class_name"], "config": entry["config"],
                              "module": entry.get("module"), "registered_name": entry.get("registered_name")})
    except (ValueError, TypeError, KeyError) as e:
        raise EdgepackError(f"cannot rebuild the float network: layer {entry['name']!r} "
                            f"({entry['class_name']}) does not rebuild from its config ({type(e).__name__}): "
                            "export it to tflite-int8 instead") from None


def _copy_float_weights(model, twin) -> None:
    """Copy each twin layer's weights from the QAT layer of the same name; inside a wrapper, the
    float weights are the wrapper's variables named like the twin's (kernel, bias, gamma, ...)."""
    source = {getattr(layer, "layer", layer).name: layer for layer in model.layers}
    for layer in twin.layers:
        if not layer.weights:
            continue
        qat = source[layer.name]
        if type(qat).__name__ not in WRAPPERS:
            layer.set_weights(qat.get_weights())
            continue
        found = {}
        for v in qat.weights:
            found.setdefault(weights.variable_name(v), []).append(v)
        values = []
        for w in layer.weights:
            match = found.get(weights.variable_name(w), [])
            if len(match) != 1:
                raise EdgepackError(f"cannot rebuild the float network: QAT layer {qat.name!r} has "
                                    f"{len(match)} variables named {weights.variable_name(w)!r}, expected 1: "
                                    "export it to tflite-int8 instead")
            values.append(match[0].numpy())
        layer.set_weights(values)
