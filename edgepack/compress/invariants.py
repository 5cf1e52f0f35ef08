"""What each compression technique promises, measured on the saved model's kernels (numpy only).

Every check reads the Conv/Dense kernels (biases are never pruned or clustered) and returns a
JSON-ready record for metadata.json; `require()` turns a broken promise into a one-line error, so
a run folder is only written when its invariants hold.

2:4 grouping (the same as TF-MOT's `sparsity_m_by_n=(2, 4)` and TFLite's layout): a kernel is
viewed as rows along its *input* axis - Conv2D (H, W, C_in, C_out) as C_out*H*W rows of C_in
values, Dense (C_in, C_out) as C_out rows of C_in values - and each row is cut into groups of 4
consecutive values, the last group zero-padded. Every group must hold at most 2 non-zeros. With
C_in = 3 (the first conv) each group is 3 real weights plus one padding zero, so only one real
weight per group is removed: that kernel ends at 1/3 sparsity, not 1/2.
"""

from __future__ import annotations

import numpy as np

from edgepack.errors import EdgepackError

M_BY_N = (2, 4)  # 2 zeros in every 4 consecutive input-channel values
SPARSITY_TOLERANCE = 0.01  # each pruned kernel must be within 1 point of the target


class InvariantError(EdgepackError):
    """A compressed model does not have the property its technique promises."""


def kernels(model) -> dict[str, np.ndarray]:
    """{layer name: kernel} for every Conv/Dense kernel, also inside QAT/prune/cluster wrappers.

    Inside a QuantizeWrapper the weights are read from `layer.weights` (names end `kernel:0`;
    the quantizer's `kernel_min`/`kernel_max` do not match).
    """
    out: dict[str, np.ndarray] = {}
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)  # a wrapper's wrapped layer carries the real name
        for w in layer.weights:
            if w.name.split("/")[-1] == "kernel:0":
                out[inner.name] = np.array(w.numpy())
    return out


def sparsity(w: np.ndarray) -> float:
    """Share of exact zeros."""
    return float(np.mean(np.asarray(w) == 0))


def input_axis_rows(w: np.ndarray) -> np.ndarray:
    """A Conv2D (H, W, C_in, C_out) or Dense (C_in, C_out) kernel as rows along C_in (see above)."""
    w = np.asarray(w)
    if w.ndim == 2:
        return w.T
    if w.ndim == 4:
        return np.transpose(w, (3, 0, 1, 2)).reshape(-1, w.shape[2])
    raise ValueError(f"kernel of rank {w.ndim} has no 2:4 layout (expected 2 or 4)")


def m_by_n_violations(w: np.ndarray, m_by_n: tuple[int, int] = M_BY_N) -> int:
    """Number of groups of n consecutive input-channel values holding more than n - m non-zeros."""
    zeros, n = m_by_n
    rows = input_axis_rows(w)
    pad = (-rows.shape[1]) % n
    rows = np.pad(rows, ((0, 0), (0, pad)))
    groups = rows.reshape(rows.shape[0], -1, n)
    return int(np.sum(np.count_nonzero(groups, axis=2) > n - zeros))


def distinct_values(w: np.ndarray) -> int:
    return int(np.unique(np.asarray(w)).size)


# --- the records each technique stores (and the failures it refuses)

def require(ok: bool, message: str) -> None:
    if not ok:
        raise InvariantError(message)


def sparsity_record(ks: dict[str, np.ndarray], target: float | None, pruned: list[str]) -> dict:
    """Per-kernel sparsity; with a target, each pruned kernel must be within SPARSITY_TOLERANCE."""
    per = {name: sparsity(w) for name, w in ks.items()}
    total = sum(int(np.sum(w == 0)) for w in ks.values()) / max(1, sum(w.size for w in ks.values()))
    if target is not None:
        for name in pruned:
            require(abs(per[name] - target) <= SPARSITY_TOLERANCE,
                    f"kernel {name} has sparsity {per[name]:.4f}, not within {SPARSITY_TOLERANCE} of the "
                    f"target {target}: the pruning schedule did not finish (use more training images "
                    "or --epochs)")
    return {"kernel_sparsity": per, "overall_kernel_sparsity": total, "pruned_layers": pruned}


def two_of_four_record(ks: dict[str, np.ndarray], pruned: list[str]) -> dict:
    """Every pruned kernel must follow the 2:4 pattern along its input axis."""
    violations = {name: m_by_n_violations(ks[name]) for name in pruned}
    for name, bad in violations.items():
        require(bad == 0, f"kernel {name} breaks the 2:4 pattern in {bad} groups of 4 input-channel values")
    return {"m_by_n": list(M_BY_N), "m_by_n_axis": "input channels (TFLite layout, zero-padded groups)",
            "m_by_n_violations": violations,
            **sparsity_record(ks, None, pruned)}


def cluster_record(ks: dict[str, np.ndarray], clusters: int, clustered: list[str]) -> dict:
    """Every clustered kernel must hold at most `clusters` distinct values."""
    distinct = {name: distinct_values(w) for name, w in ks.items()}
    for name in clustered:
        require(distinct[name] <= clusters,
                f"kernel {name} holds {distinct[name]} distinct values, more than the {clusters} clusters")
    return {"clusters": clusters, "clustered_layers": clustered, "distinct_values": distinct}


def zeros_kept_record(source: dict[str, np.ndarray], ks: dict[str, np.ndarray]) -> dict:
    """Every weight that was zero in the (pruned) source must still be zero."""
    refilled = {}
    for name, w0 in source.items():
        require(name in ks and ks[name].shape == w0.shape,
                f"kernel {name} of the source is missing or reshaped in the compressed model")
        refilled[name] = int(np.sum((w0 == 0) & (ks[name] != 0)))
        require(refilled[name] == 0, f"kernel {name}: {refilled[name]} of the source's zeros were refilled "
                                     "(pruning was not preserved)")
    return {"source_kernel_sparsity": {n: sparsity(w) for n, w in source.items()},
            "refilled_zeros": refilled}
