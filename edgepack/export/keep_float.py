"""Layers kept in float in an int8 file (`--keep-float`, `--option keep_float=A,B`): their names as
engines see them, and the converters' hooks. Used by export's converters; edgepack.explain.selective
chooses the layers (`explain --auto`) on top of it.
"""

from __future__ import annotations

from pathlib import Path

from edgepack.errors import EdgepackError


def layer_name(tensor: str) -> str:
    """The source layer of a tensor: `model/conv2/Relu;model/conv2/BiasAdd` and
    `model/conv2/Relu:0` both give `conv2` (Keras names: `<model>/<layer>/<op>`)."""
    first = tensor.split(";")[0].split(":")[0]
    parts = first.split("/")
    return parts[1] if len(parts) >= 3 else parts[0]


QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def parse_names(value) -> list[str]:
    """The option's value: a comma-separated string (CLI) or a list of names."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    return [s.strip() for s in items if s and s.strip()]


def resolve(names: list[str], nodes: list[str], fmt: str) -> list[str]:
    """The engine names (`nodes`, in graph order) of the layers or full names asked for."""
    layers = list(dict.fromkeys(layer_name(n) for n in nodes))
    chosen = []
    for name in names:
        hits = [n for n in nodes if n == name or layer_name(n) == name]
        if not hits:
            raise EdgepackError(f"{fmt}: unknown layer {name!r} in keep_float: choose from "
                                f"{', '.join(layers)} (see `edgepack explain FILE`)")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def onnx_nodes_to_exclude(model_path: Path, value) -> list[str]:
    """quantize_static's nodes_to_exclude for the (pre-processed) float ONNX model at `model_path`."""
    names = parse_names(value)
    if not names:
        return []
    import onnx

    nodes = [n.name for n in onnx.load(str(model_path)).graph.node if n.op_type not in QDQ_OPS and n.name]
    return resolve(names, nodes, "onnx-int8")


def tflite_int8(conv, ctx, path: Path) -> None:
    """Write the int8 file of an int8-configured TFLiteConverter with ctx.options['keep_float'] in float."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    if ctx.qat or conv.representative_dataset is None:
        raise EdgepackError("tflite-int8: keep_float needs a calibrated model (QAT/PQAT files take their "
                            "ranges from training): export the run it was fine-tuned from")
    plain = Interpreter(model_content=conv.convert())  # its tensor names are the denylist's names
    details = plain.get_tensor_details()
    ops = [op for op in plain._get_ops_details() if op["op_name"] != "DELEGATE"]
    nodes = [details[op["outputs"][0]]["name"] for op in ops]
    denylist = resolve(parse_names(ctx.options["keep_float"]), nodes, "tflite-int8")
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=conv, debug_dataset=conv.representative_dataset,
        debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=denylist))
    path.write_bytes(debugger.get_nondebug_quantized_model())
