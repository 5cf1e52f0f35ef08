"""One definition of a Keras model's weights, used for sparsity, parameter counts and invariants.

Kernels: the weight matrices a technique can compress - `kernel` (Conv/Dense), `depthwise_kernel`
(DepthwiseConv2D, SeparableConv2D) and `pointwise_kernel` (SeparableConv2D). Sparsity is the share
of exact zeros over these kernels only (biases and BatchNorm values are never pruned).
Parameters: the network's own variables - kernels, biases and BatchNorm's gamma, beta and moving
statistics (all four: they ship in every exported file) - without TF-MOT's wrapper variables
(pruning masks and thresholds, cluster centroids and indices, quantizer ranges, step counters), so
a wrapped model counts the same as the float model it came from. Model size is a file saved without
optimizer state (edgepack.model.save_model). numpy only; the model is any tf_keras model.
"""

from __future__ import annotations

import numpy as np

KERNELS = ("kernel", "depthwise_kernel", "pointwise_kernel")  # variable names without ":0"
NETWORK_VARIABLES = (*KERNELS, "bias", "gamma", "beta", "moving_mean", "moving_variance")


def variable_name(w) -> str:
    """`conv1/kernel:0` -> `kernel` (TF-MOT wrappers keep the inner layer's variable names)."""
    return w.name.split("/")[-1].split(":")[0]


def kernel_key(layer_name: str, var: str, kernel_vars: list[str]) -> str:
    """A kernel's name in records: the layer's name when the layer has one kernel (Conv, Dense,
    DepthwiseConv2D), `layer/variable` when it has several (SeparableConv2D)."""
    return layer_name if len(kernel_vars) == 1 else f"{layer_name}/{var}"


def kernels(model) -> dict[str, np.ndarray]:
    """{kernel key: array} for every kernel of `model`, also inside TF-MOT wrappers."""
    out: dict[str, np.ndarray] = {}
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)  # a wrapper's wrapped layer carries the real name
        found = [w for w in layer.weights if variable_name(w) in KERNELS]
        names = [variable_name(w) for w in found]
        for w, var in zip(found, names, strict=True):
            out[kernel_key(inner.name, var, names)] = np.array(w.numpy())
    return out


def parameters(model) -> int:
    """Number of network parameter values (see the module's docstring)."""
    return int(sum(int(np.prod(w.shape)) for w in model.weights if variable_name(w) in NETWORK_VARIABLES))


def share_of_zeros(arrays) -> float | None:
    """Exact zeros over all values of `arrays` (None for no values)."""
    arrays = list(arrays)
    total = sum(int(np.size(a)) for a in arrays)
    if total == 0:
        return None
    return float(sum(int(np.count_nonzero(np.asarray(a) == 0)) for a in arrays) / total)


def sparsity(model) -> float | None:
    return share_of_zeros(kernels(model).values())
