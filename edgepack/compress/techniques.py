"""The compression techniques: one name-keyed table (`TECHNIQUES`) that the CLI and the pipeline read.

A technique is four small functions around a shared fine-tuning loop (edgepack.compress.core):
  wrap(model, params, plan)  -> (model with TF-MOT wrappers, extra Keras callbacks)
  finish(trained)            -> the model to save (wrappers stripped; (P)CQAT: a plain QAT model)
  check(final, params, plan) -> the measured invariants for metadata.json (raises InvariantError)
  variant(params)            -> a short unique name ("prune-0.8", "cluster-16", ...)
Adding a technique is adding one entry. TensorFlow and TF-MOT are imported only when a function runs.

Fine-tuning defaults are the recipes measured on the real data (docs/results.md): pruning and
2:4 fine-tune 2 epochs at adam's 1e-3 (plus, optionally, a polish phase with the masks held:
POLISH_DEFAULTS); clustering 2 epochs at 1e-4; QAT, PQAT, CQAT and PCQAT 1 epoch at 1e-4.
Chains TF-MOT supports: prune -> pqat; prune -> cluster (sparsity-preserving) -> pcqat; cluster -> cqat.
`finetune` is the control: the source trained further without compression, so a comparison can
separate what the extra epochs did from what the compression cost (match its --epochs and
--learning-rate to the variant it controls for; the default matches `cluster`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from edgepack import weights
from edgepack.compress import invariants as inv
from edgepack.compress.distill import DEFAULTS as DISTILL_DEFAULTS
from edgepack.errors import EdgepackError
from edgepack.export.qat import float_twin
from edgepack.tfkeras import keras


@dataclass(frozen=True)
class Plan:
    """What a technique needs to know about the model and the fine-tuning run."""

    steps: int  # fine-tuning steps (batches) over all epochs
    targets: tuple[str, ...]  # layers to wrap (edgepack.compress.targets: TF-MOT's registries)
    source_kernels: dict = field(repr=False)  # {kernel key: kernel} of the source before any change
    compressed: tuple[str, ...] = ()  # kernel keys (edgepack.weights) the technique changes


@dataclass(frozen=True)
class Technique:
    name: str
    summary: str  # one line for --help
    defaults: Mapping[str, Any]  # every option the technique takes, with its default
    wrap: Callable
    finish: Callable
    check: Callable
    variant: Callable[[dict], str]
    model_format: str = "keras"  # edgepack.model.LOADERS key of the saved model
    needs_pruned_source: bool = False  # source must be pruned (edgepack.compress.core.source_is_pruned)
    needs_clustered_source: bool = False  # source must be a `cluster` run folder


PRUNED_TECHNIQUES = ("prune", "prune-2of4")
CLUSTERED_TECHNIQUES = ("cluster",)


def _tfmot():
    import tensorflow_model_optimization as tfmot

    return tfmot


def _wrap_targets(model, targets, wrap_one):
    """Clone `model`, wrapping the layers named in `targets` (other layers are reused as they are)."""
    return keras().models.clone_model(model, clone_function=lambda layer: (
        wrap_one(layer) if layer.name in targets else layer))


def _identity(model):
    return model


# --- pruning

def pruning_schedule(steps: int, sparsity: float):
    """PolynomialDecay from 0 to `sparsity` that finishes half-way through fine-tuning.

    TF-MOT's default frequency (100 steps) leaves short runs at 0% with no warning: the frequency
    here is at most 1/20 of the run and end_step a multiple of it, so the final mask is applied and
    the second half of fine-tuning recovers accuracy at the final sparsity.
    """
    if steps < 2:
        raise inv.InvariantError(f"pruning needs at least 2 fine-tuning steps, got {steps}: "
                                 "use more training images, more --epochs or a smaller --batch-size")
    freq = max(1, min(100, steps // 20))
    end = max(freq, (steps // 2) // freq * freq)
    return _tfmot().sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=sparsity, begin_step=0, end_step=end, frequency=freq)


def _wrap_prune(model, params, plan, m_by_n=None):
    tfmot = _tfmot()
    if m_by_n:
        freq = max(1, min(100, plan.steps // 20))  # the 2:4 mask is recomputed every `freq` steps
        # With a polish phase the masks must stop moving after phase 1 (plan.steps); -1: never stop.
        end = plan.steps - 1 if params.get("polish_epochs") else -1
        kw = {"pruning_schedule": tfmot.sparsity.keras.ConstantSparsity(0.5, begin_step=0, end_step=end,
                                                                        frequency=freq),
              "sparsity_m_by_n": m_by_n}
    else:
        kw = {"pruning_schedule": pruning_schedule(plan.steps, params["sparsity"])}
    wrapped = _wrap_targets(model, plan.targets, lambda layer: tfmot.sparsity.keras.prune_low_magnitude(
        layer, **kw))
    # Without this callback fit() fails with InvalidArgumentError (TOOLCHAIN.md).
    return wrapped, [tfmot.sparsity.keras.UpdatePruningStep()]


def _strip_pruning(model):
    return _tfmot().sparsity.keras.strip_pruning(model)


def _check_prune(model, params, plan):
    return inv.sparsity_record(inv.kernels(model), params["sparsity"], list(plan.compressed))


def _check_2of4(model, params, plan):
    return inv.two_of_four_record(inv.kernels(model), list(plan.compressed))


# --- clustering

def _wrap_cluster(model, params, plan):
    """preserve_sparsity (set by compress from the source, see core.source_is_pruned): TF-MOT keeps
    the zeros of a pruned source as a zero centroid, so prune -> cluster stays sparse."""
    c = _tfmot().clustering.keras
    init = c.CentroidInitialization.KMEANS_PLUS_PLUS
    keep = bool(params.get("preserve_sparsity"))
    return _wrap_targets(model, plan.targets, lambda layer: c.cluster_weights(
        layer, number_of_clusters=params["clusters"], cluster_centroids_init=init,
        preserve_sparsity=keep)), []


def _strip_clustering(model):
    return _tfmot().clustering.keras.strip_clustering(model)


def _check_cluster(model, params, plan):
    ks = inv.kernels(model)
    record = inv.cluster_record(ks, params["clusters"], list(plan.compressed))
    if params.get("preserve_sparsity"):
        record.update(inv.zeros_kept_record(plan.source_kernels, ks))
    return {**record, "preserve_sparsity": bool(params.get("preserve_sparsity"))}


# --- quantization-aware training

def _annotated(model, plan):
    """`model` with the layers in plan.targets annotated for QAT; the rest (e.g. Rescaling, which
    TF-MOT's 8-bit registry has no config for) stay float instead of failing quantize_model."""
    q = _tfmot().quantization.keras
    return _wrap_targets(model, plan.targets, q.quantize_annotate_layer)


def _quantize_apply(model, plan, scheme=None):
    """TF-MOT's quantize_apply on the annotated model; its failures become one line naming the cause.

    Known here (TF-MOT 0.8.1): QAT splits a SeparableConv2D into a DepthwiseConv2D and a new Conv2D
    named by Keras's counter, which starts at 0 for a model loaded from a file; when the model has its
    own layer named "conv2d" the two collide and the rebuilt graph feeds the wrong tensor."""
    q = _tfmot().quantization.keras
    try:
        return q.quantize_apply(_annotated(model, plan), *([scheme] if scheme else []))
    except (ValueError, TypeError, KeyError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        names = {layer.name for layer in model.layers}
        hint = ("; it splits SeparableConv2D into a new Conv2D that collides with your layer named 'conv2d': "
                "give your Conv2D layers their own names (name=...) and re-save the model"
                if "conv2d" in names and any(type(la).__name__ == "SeparableConv2D" for la in model.layers)
                else "")
        raise EdgepackError(f"TF-MOT could not quantize-wrap this model ({type(e).__name__}: {first}){hint}"
                            ) from None


def _wrap_qat(model, params, plan):
    return _quantize_apply(model, plan), []


def _wrap_pqat(model, params, plan):
    scheme = _tfmot().experimental.combine.Default8BitPrunePreserveQuantizeScheme()
    return _quantize_apply(model, plan, scheme), []


def _wrap_cluster_qat(model, params, plan, preserve_sparsity: bool):
    """(P)CQAT: TF-MOT's cluster-preserving scheme (its default is preserve_sparsity=True: pass it)."""
    scheme = _tfmot().experimental.combine.Default8BitClusterPreserveQuantizeScheme(
        preserve_sparsity=preserve_sparsity)
    return _quantize_apply(model, plan, scheme), []


def _plain_qat(model):
    """The trained (P)CQAT model as an ordinary QAT model with the same float kernels and ranges.

    Why: its cluster-preserving weight quantizer rebuilds its centroids from the kernel at load time,
    so a saved CQAT .h5 does not load back (TOOLCHAIN.md). At inference that quantizer is the default
    8-bit one (kernel -> fake-quant with the learned min/max), so the plain QAT twin gives the same
    outputs (tested) and saves, loads and exports like `qat`."""
    wrapped = tuple(layer.layer.name for layer in model.layers if type(layer).__name__.startswith(
        "QuantizeWrapper"))
    plain = _quantize_apply(float_twin(model), Plan(steps=0, targets=wrapped, source_kernels={}))
    # Same graph, same order; Keras may number the input quantizer differently (quantize_layer_1).
    pairs = zip([la for la in model.layers if la.weights], [la for la in plain.layers if la.weights],
                strict=True)
    for source, layer in pairs:
        same = (type(source).__name__ == type(layer).__name__ and
                getattr(source, "layer", source).name == getattr(layer, "layer", layer).name) \
            if hasattr(source, "layer") else type(source) is type(layer)
        inv.require(same, f"cannot rebuild {source.name} as a plain QAT layer (found {layer.name})")
        values = {_own_name(v, source): v for v in source.weights}
        layer.set_weights([values[_own_name(w, layer)].numpy() for w in layer.weights])
    return plain


def _own_name(variable, layer) -> str:
    """A variable's name within its layer ("quantize_layer_1_min" of quantize_layer_1 -> "min")."""
    return weights.variable_name(variable).removeprefix(layer.name + "_")


def _check_cqat(model, params, plan):
    ks = inv.kernels(model)
    return {**_quantized_layers(model, plan), **inv.clusters_kept_record(plan.source_kernels, ks),
            **inv.sparsity_record(ks, None, [])}


def _check_pcqat(model, params, plan):
    return {**_check_cqat(model, params, plan), **inv.zeros_kept_record(plan.source_kernels,
                                                                          inv.kernels(model))}


def _quantized_layers(model, plan) -> dict:
    """Every annotated layer must be wrapped; SeparableConv2D is split by TF-MOT into a
    DepthwiseConv2D and a Conv2D under new names, so it is counted by the kernels it leaves."""
    wrapped = sorted(getattr(layer, "layer", layer).name for layer in model.layers
                     if type(layer).__name__.startswith("QuantizeWrapper"))
    split = [n for n in plan.targets if any(k.startswith(n + "/") for k in plan.compressed)]
    missing = sorted(set(plan.targets) - set(wrapped) - set(split))
    inv.require(not missing, f"layers {', '.join(missing)} were not wrapped for quantization-aware training")
    return {"quantized_layers": wrapped, "split_layers": split}


def _check_qat(model, params, plan):
    return {**_quantized_layers(model, plan), **inv.sparsity_record(inv.kernels(model), None, [])}


def _check_pqat(model, params, plan):
    ks = inv.kernels(model)
    return {**_quantized_layers(model, plan), **inv.zeros_kept_record(plan.source_kernels, ks),
            **inv.sparsity_record(ks, None, [])}


def _check_finetune(model, params, plan):
    return inv.sparsity_record(inv.kernels(model), None, [])


# --- the table

def _finetune_defaults(epochs: int, learning_rate: float) -> dict:
    return {"epochs": epochs, "learning_rate": learning_rate, "batch_size": 32, **DISTILL_DEFAULTS,
            "augment": "none"}


# Two-phase pruning: after `epochs` at `learning_rate` (the schedule reaches the target at the end of
# phase 1), `polish_epochs` more at `polish_learning_rate` with the masks held. 0 = one phase.
POLISH_DEFAULTS = {"polish_epochs": 0, "polish_learning_rate": 1e-4}


def _variant(base: Callable[[dict], str], name: str) -> Callable[[dict], str]:
    """Base name, plus the fine-tuning settings that differ from the technique's defaults."""

    def variant(params: dict) -> str:
        tech = TECHNIQUES[name]
        parts = [base(params)]
        if params.get("polish_epochs"):
            parts.append(f"polish{params['polish_epochs']}")
            if params["polish_learning_rate"] != tech.defaults["polish_learning_rate"]:
                parts.append(f"plr{params['polish_learning_rate']:g}")
        if params.get("keep_dense"):
            parts.append("keep-" + "+".join(params["keep_dense"]))
        if params.get("augment", "none") != "none":
            parts.append(params["augment"])
        if params.get("distill"):
            parts.append(f"kd{params['distill']:g}")
            if params["temperature"] != tech.defaults["temperature"]:
                parts.append(f"T{params['temperature']:g}")
        for key, tag in (("epochs", "e"), ("learning_rate", "lr"), ("batch_size", "b")):
            if params[key] != tech.defaults[key]:
                parts.append(f"{tag}{params[key]:g}")
        return "-".join(parts)

    return variant


def _entry(name, summary, defaults, wrap, finish, check, base, **kw) -> Technique:
    return Technique(name, summary, MappingProxyType(defaults), wrap, finish, check,
                     _variant(base, name), **kw)


TECHNIQUES: dict[str, Technique] = {t.name: t for t in (
    _entry("prune", "magnitude pruning to --sparsity (polynomial decay), wrappers stripped",
           {"sparsity": 0.5, "keep_dense": (), **_finetune_defaults(2, 1e-3), **POLISH_DEFAULTS},
           _wrap_prune, _strip_pruning, _check_prune, lambda p: f"prune-{p['sparsity']:g}"),
    _entry("prune-2of4", "structured 2:4 sparsity (2 zeros in every 4 input-channel weights)",
           {"keep_dense": (), **_finetune_defaults(2, 1e-3), **POLISH_DEFAULTS},
           lambda m, p, plan: _wrap_prune(m, p, plan, m_by_n=inv.M_BY_N), _strip_pruning, _check_2of4,
           lambda p: "prune-2of4"),
    _entry("cluster", "weight clustering to --clusters shared values per kernel (k-means++ init); "
           "keeps a pruned source's zeros",
           {"clusters": 16, "keep_dense": (), **_finetune_defaults(2, 1e-4)},
           _wrap_cluster, _strip_clustering, _check_cluster, lambda p: f"cluster-{p['clusters']}"),
    _entry("qat", "int8 quantization-aware training (fake-quant wrappers, saved as .h5)",
           _finetune_defaults(1, 1e-4), _wrap_qat, _identity, _check_qat, lambda p: "qat",
           model_format="keras-qat-h5"),
    _entry("pqat", "pruning-preserving int8 QAT from a pruned run folder (keeps its zeros)",
           _finetune_defaults(1, 1e-4), _wrap_pqat, _identity, _check_pqat, lambda p: "pqat",
           model_format="keras-qat-h5", needs_pruned_source=True),
    _entry("cqat", "cluster-preserving int8 QAT from a cluster run folder (keeps its shared values)",
           _finetune_defaults(1, 1e-4), lambda m, p, plan: _wrap_cluster_qat(m, p, plan, False), _plain_qat,
           _check_cqat, lambda p: "cqat", model_format="keras-qat-h5", needs_clustered_source=True),
    _entry("pcqat", "sparsity- and cluster-preserving int8 QAT from a prune -> cluster run folder",
           _finetune_defaults(1, 1e-4), lambda m, p, plan: _wrap_cluster_qat(m, p, plan, True), _plain_qat,
           _check_pcqat, lambda p: "pcqat", model_format="keras-qat-h5", needs_pruned_source=True,
           needs_clustered_source=True),
    _entry("finetune", "control: the source trained further, not compressed",
           _finetune_defaults(2, 1e-4), lambda m, p, plan: (m, []), _identity, _check_finetune,
           lambda p: "finetune"),
)}
