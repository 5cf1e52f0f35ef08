"""Which layers and kernels a technique compresses, read from TF-MOT's own registries.

TF-MOT decides per layer class which weights it can prune, cluster or quantize; edgepack asks those
registries instead of keeping its own list, and records what it left alone and why
(`skipped_layers` in metadata.json, printed by compress). Seen with TF-MOT 0.8.1: pruning and
clustering cover Conv2D and Dense kernels and only the pointwise kernel of SeparableConv2D;
DepthwiseConv2D kernels and SeparableConv2D's depthwise kernels are not prunable or clusterable.
The default 8-bit QAT registry quantizes Conv2D, DepthwiseConv2D, Dense, pooling, Add, Concatenate
and activations, turns SeparableConv2D into a DepthwiseConv2D plus a 1x1 Conv2D, and has no config
for Rescaling/Normalization (they stay float under qat; pqat refuses them: its prune-preserving
scheme asks the registry about every layer).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgepack import weights
from edgepack.errors import EdgepackError
from edgepack.tfkeras import keras

SPARSITY_TECHNIQUES = ("prune", "prune-2of4")
CLUSTER_TECHNIQUES = ("cluster",)
QUANTIZE_TECHNIQUES = ("qat", "pqat", "cqat", "pcqat")
STRICT_QUANTIZE = ("pqat", "cqat", "pcqat")  # their schemes ask the registry about every layer


@dataclass(frozen=True)
class Selection:
    layers: tuple[str, ...]  # layers to wrap
    compressed: tuple[str, ...]  # kernel keys (edgepack.weights) the technique changes
    skipped: dict  # {layer or kernel key: why it is left as it is}


def _registry(technique: str):
    if technique in SPARSITY_TECHNIQUES:
        from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry

        return PruneRegistry, "pruning"
    from tensorflow_model_optimization.python.core.clustering.keras.clustering_registry import (
        ClusteringRegistry,
    )

    return ClusteringRegistry, "clustering"


def _kernel_vars(layer) -> list[str]:
    return [weights.variable_name(w) for w in layer.weights if weights.variable_name(w) in weights.KERNELS]


def select(model, technique: str, keep: tuple[str, ...] = ()) -> Selection:
    """The layers `technique` wraps and the kernels it compresses; `keep`: layers to leave alone."""
    with_kernels = {layer.name: layer for layer in model.layers if _kernel_vars(layer)}
    unknown = [n for n in keep if n not in with_kernels]
    if unknown:
        raise EdgepackError(f"--keep-dense {' '.join(unknown)}: no such layer with weights "
                            f"(the model has {', '.join(with_kernels)})")
    skipped = {n: "kept by --keep-dense" for n in keep}
    if technique in QUANTIZE_TECHNIQUES:
        selection = _select_quantize(model, skipped)
        refused = {n: why for n, why in selection.skipped.items() if "BatchNormalization" not in why}
        if technique in ("cqat", "pcqat"):
            refused.update(_cluster_preserve_refusals(model))
        if technique in STRICT_QUANTIZE and refused:
            # TF-MOT's prune- and cluster-preserving schemes ask their registry about every layer,
            # annotated or not (BatchNormalization after a conv is handled by pqat's layout transforms).
            name, why = next(iter(refused.items()))
            raise EdgepackError(f"{technique} cannot wrap layer {name!r}: {why.split(':')[0]} (TF-MOT's "
                                f"{technique} scheme needs every layer supported); use qat, or "
                                "move the rescaling out of the model and pass --preprocess")
        return selection
    if technique not in SPARSITY_TECHNIQUES + CLUSTER_TECHNIQUES:
        return Selection((), (), {})
    registry, what = _registry(technique)
    layers, compressed = [], []
    for name, layer in with_kernels.items():
        if name in keep:
            continue
        kvars = _kernel_vars(layer)
        if not registry.supports(layer):
            skipped[name] = f"{type(layer).__name__} is not in TF-MOT's {what} registry"
            continue
        allowed = set(registry._weight_names(layer)) if layer.__class__ in registry._LAYERS_WEIGHTS_MAP \
            else set(kvars)  # a PrunableLayer / ClusterableLayer names its own weights
        for var in kvars:
            key = weights.kernel_key(name, var, kvars)
            if var in allowed:
                compressed.append(key)
            else:
                skipped[key] = f"TF-MOT 0.8 has no {what} for the {var} of {type(layer).__name__}"
        if allowed & set(kvars):
            layers.append(name)
    if not compressed:
        raise EdgepackError(f"no layer of this model can be compressed by {technique} "
                            f"({'; '.join(f'{k}: {v}' for k, v in skipped.items())})")
    return Selection(tuple(layers), tuple(compressed), skipped)


def _cluster_preserve_refusals(model) -> dict:
    """Layers with weights that TF-MOT's cluster-preserving QAT registry has no entry for (0.8.1:
    only Conv2D, Dense and DepthwiseConv2D; e.g. SeparableConv2D is not). BatchNormalization is left
    to TF-MOT's layout transforms, which fold it into the conv before them (as for pqat)."""
    from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.cluster_preserve import (
        cluster_preserve_quantize_registry as registry,
    )

    supports = registry.ClusterPreserveQuantizeRegistry.supports
    return {layer.name: f"{type(layer).__name__} is not in TF-MOT's cluster-preserving QAT registry"
            for layer in model.layers if layer.weights and not supports(layer)
            and type(layer).__name__ != "BatchNormalization"}


def _select_quantize(model, skipped: dict) -> Selection:
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry as registry,
    )

    supported = registry.Default8BitQuantizeRegistry().supports
    separable = keras().layers.SeparableConv2D  # TF-MOT's layout transform splits it (see module doc)
    layers, compressed = [], []
    for layer in model.layers:
        if isinstance(layer, keras().layers.InputLayer):
            continue
        if supported(layer) or isinstance(layer, separable):
            layers.append(layer.name)
            kvars = _kernel_vars(layer)
            compressed += [weights.kernel_key(layer.name, v, kvars) for v in kvars]
        else:
            skipped[layer.name] = (f"{type(layer).__name__} has no config in TF-MOT's default 8-bit "
                                   "registry: it stays float")
    return Selection(tuple(layers), tuple(compressed), skipped)
