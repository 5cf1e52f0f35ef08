"""What each compression technique promises, measured on the saved model's kernels (numpy only).

Every check reads the kernels as edgepack.weights defines them (Conv/Dense `kernel`, depthwise and
pointwise kernels; biases are never pruned or clustered) and returns a
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

from edgepack import weights
from edgepack.errors import EdgepackError

M_BY_N = (2, 4)  # 2 zeros in every 4 consecutive input-channel values
SPARSITY_TOLERANCE = 0.01  # each pruned kernel must be within 1 point of the target


class InvariantError(EdgepackError):
    """A compressed model does not have the property its technique promises."""


def kernels(model) -> dict[str, np.ndarray]:
    """{kernel key: kernel} of `model` (edgepack.weights.kernels: one definition everywhere)."""
    return weights.kernels(model)


def sparsity(w: np.ndarray) -> float:
    """Share of exact zeros."""
    return float(np.mean(np.asarray(w) == 0))


def input_axis_rows(w: np.ndarray) -> np.ndarray:
    """A Conv2D (H, W, C_in, C_out) or Dense (C_in, C_out) kernel as rows along C_in (see above).
    A depthwise kernel (H, W, C, multiplier) is read the same way, along its channel axis."""
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
    total = weights.share_of_zeros(ks.values()) or 0.0
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
    """Every weight that was zero in the (pruned) source must still be zero.

    A kernel renamed by TF-MOT's QAT layout transform (SeparableConv2D -> DepthwiseConv2D + Conv2D)
    is matched to a new kernel of the same shape; the check must hold for one of them."""
    refilled = {}
    new = [n for n in ks if n not in source]
    for name, w0 in source.items():
        candidates = [name] if name in ks else [n for n in new if ks[n].shape == w0.shape]
        require(bool(candidates) and ks[candidates[0]].shape == w0.shape,
                f"kernel {name} of the source is missing or reshaped in the compressed model")
        refilled[name] = min(int(np.sum((w0 == 0) & (ks[c] != 0))) for c in candidates)
        require(refilled[name] == 0, f"kernel {name}: {refilled[name]} of the source's zeros were refilled "
                                     "(pruning was not preserved)")
    return {"source_kernel_sparsity": {n: sparsity(w) for n, w in source.items()},
            "refilled_zeros": refilled}


def channel_distinct_values(w: np.ndarray) -> int:
    """Most distinct values in one output channel (last axis) of a kernel."""
    w = np.asarray(w)
    return max(distinct_values(w[..., c]) for c in range(w.shape[-1]))


def clusters_kept_record(source: dict[str, np.ndarray], ks: dict[str, np.ndarray]) -> dict:
    """Cluster-preserving QAT keeps each clustered kernel's shared values, as far as TF-MOT 0.8.1
    promises: a Conv2D kernel whose output channels hold (nearly) equal numbers of values gets
    centroids per output channel, so after training only each channel, not the whole kernel, is bound
    by the source's count. Checked: every output channel holds at most the source kernel's count."""
    bound = {n: distinct_values(w) for n, w in source.items() if n in ks}
    per_channel = {n: channel_distinct_values(ks[n]) for n in bound}
    for name, most in per_channel.items():
        require(most <= bound[name], f"kernel {name}: an output channel holds {most} distinct values, more "
                                     f"than the source's {bound[name]} (clusters were not preserved)")
    return {"source_distinct_values": bound, "max_distinct_values_per_channel": per_channel,
            "distinct_values": {n: distinct_values(w) for n, w in ks.items()}}


def masks_held_record(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> dict:
    """The polish phase keeps phase 1's zero masks exactly (TF-MOT stops updating masks after the
    schedule's end_step but still applies them); also counts the weights it changed."""
    moved = {n: int(np.sum((before[n] == 0) != (after[n] == 0))) for n in before}
    for name, n in moved.items():
        require(n == 0, f"kernel {name}: {n} weights changed between zero and non-zero during the polish "
                        "phase (the pruning masks were not held)")
    return {"polish_mask_changes": moved,
            "polish_changed_weights": {n: int(np.sum(before[n] != after[n])) for n in before}}
