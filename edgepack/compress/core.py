"""`compress()`: source run folder -> technique (wrap, fine-tune, strip, check) -> new run folder.

The new folder has the same layout as training's (edgepack.rundir): the model file (model.keras, or
model.h5 for QAT models, see `model_format`), history.json, metrics.json (edgepack.metrics schema) and
metadata.json with kind "compress", the technique, variant and parameters, the source run and its
model's sha256, the fine-tuning settings and time, the measured invariants, and the data fields
(class names, input shape and dtype, pixel scaling, data sha256) that export and the runtime read.
Every failure (bad option, bad source, broken invariant) happens before the folder is renamed into
place, so nothing is left behind.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from edgepack import data as data_mod
from edgepack import rundir
from edgepack.compress import distill, targets
from edgepack.compress import invariants as inv
from edgepack.compress.schedule import own_phases
from edgepack.compress.techniques import (
    CLUSTERED_TECHNIQUES,
    PRUNED_TECHNIQUES,
    TECHNIQUES,
    Plan,
    Technique,
)
from edgepack.errors import EdgepackError, require_toolchain
from edgepack.fitting import (
    ROUND_TRIP_IMAGES,
    check_augment,
    data_metadata,
    evaluate,
    fit_checked,
    seed_everything,
    warn_weak_classes,
    write_run,
)
from edgepack.model import checked_model, compile_model, load_run_model
from edgepack.runmeta import RunMetadata
from edgepack.runtime.preprocess import scale_pixels
from edgepack.sources import source_and_data


def flag(option: str) -> str:
    """The CLI spelling of a parameter name."""
    return "--" + option.replace("_", "-")


def get_technique(name: str) -> Technique:
    tech = TECHNIQUES.get(name)
    if tech is None:
        raise EdgepackError(f"unknown technique {name!r}: choose one of {', '.join(TECHNIQUES)}")
    return tech


def resolve_params(tech: Technique, params: dict | None) -> dict:
    """The technique's defaults overridden by `params`; refuses options it does not take or bad values."""
    params = {k: v for k, v in (params or {}).items() if v is not None}
    unknown = sorted(set(params) - set(tech.defaults))
    if unknown:
        raise EdgepackError(f"technique {tech.name} does not take {', '.join(map(flag, unknown))}; it takes "
                            f"{', '.join(map(flag, tech.defaults))}")
    p = {**tech.defaults, **params}
    for key, kind in (("sparsity", float), ("learning_rate", float), ("clusters", int), ("epochs", int),
                      ("batch_size", int), ("polish_epochs", int), ("polish_learning_rate", float),
                      ("distill", float), ("temperature", float)):
        if key in p:
            p[key] = _number(key, p[key], kind)
    if "sparsity" in p and not 0.0 < p["sparsity"] < 1.0:
        raise EdgepackError(f"--sparsity must be between 0 and 1 (exclusive), got {p['sparsity']}")
    if "clusters" in p and p["clusters"] < 2:
        raise EdgepackError(f"--clusters must be a whole number >= 2, got {p['clusters']}")
    for key in ("epochs", "batch_size"):
        if p[key] < 1:
            raise EdgepackError(f"{flag(key)} must be a whole number >= 1, got {p[key]}")
    for key in ("learning_rate", "polish_learning_rate"):
        if key in p and not p[key] > 0:
            raise EdgepackError(f"{flag(key)} must be > 0, got {p[key]}")
    distill.check_params(p)
    check_augment(p["augment"])
    if p.get("polish_epochs", 0) < 0:
        raise EdgepackError(f"--polish-epochs must be a whole number >= 0, got {p['polish_epochs']}")
    if "keep_dense" in p:
        names = p["keep_dense"]
        p["keep_dense"] = [names] if isinstance(names, str) else [str(n) for n in names]
    return p


def _number(key: str, value, kind: type) -> int | float:
    """`value` as an int or float; whole numbers only for ints (16.0 is 16, 16.5 is refused)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not math.isfinite(number) or (kind is int and number != int(number)):
        what = "a whole number" if kind is int else "a finite number"
        raise EdgepackError(f"{flag(key)} must be {what}, got {value!r}")
    return kind(number)


# Recorded share of exact zeros from which a run counts as pruned without being a prune run (e.g. a
# finetune of one): trained float kernels hold almost no exact zeros.
PRUNED_SPARSITY = 0.05


def source_is_pruned(meta: RunMetadata) -> bool:
    """A prune / prune-2of4 run, a run made from one that kept its zeros (cluster with
    preserve_sparsity), or a run whose recorded kernels hold >= PRUNED_SPARSITY zeros."""
    recorded = meta.invariants.get("overall_kernel_sparsity") or 0.0
    return (meta.technique in PRUNED_TECHNIQUES or bool(meta.params.get("preserve_sparsity"))
            or recorded >= PRUNED_SPARSITY)


def _check_source(src: rundir.Run, tech: Technique) -> None:
    meta = src.metadata
    kind = f"{meta.technique!r}"
    if meta.model_format != "keras":
        raise EdgepackError(f"{src.path} holds a {meta.model_format} model: compress a float run "
                            "folder (from train, prune, prune-2of4, cluster or finetune) or model file")
    if tech.needs_clustered_source and meta.technique not in CLUSTERED_TECHNIQUES:
        first = "prune, then cluster" if tech.needs_pruned_source else "cluster"
        raise EdgepackError(f"technique {tech.name} needs a clustered run folder, but {src.path} is a {kind} "
                            f"run: run `edgepack compress` with {first} first")
    if tech.needs_pruned_source and not source_is_pruned(meta):
        what = "a cluster run made from a pruned run" if tech.needs_clustered_source else \
            f"a pruned run folder ({' or '.join(PRUNED_TECHNIQUES)})"
        raise EdgepackError(f"technique {tech.name} needs {what}, but {src.path} is a {kind} run without "
                            "recorded zeros: run `edgepack compress --technique prune` first")


def compress(source_run_dir: str | os.PathLike, technique: str, out: str | os.PathLike,
             params: dict | None = None, data_path: str | os.PathLike | None = None, force: bool = False,
             limit_train: int | None = None, limit_test: int | None = None, seed: int = 0,
             ds: data_mod.Dataset | None = None, variant: str | None = None,
             class_names: str | list[str] | None = None, preprocessing: str | None = None) -> Path:
    """Compress the model of a run folder with `technique` and write the run folder `out`.

    params: the technique's options (see TECHNIQUES[technique].defaults), e.g. {"sparsity": 0.8}.
    data_path: CIFAR-10 for fine-tuning (training images) and metrics (test images); default: the
    data the source was trained on if it still exists, then the usual search (edgepack.data).
    ds: an already loaded data set (overrides data_path and the limits).
    variant: the name to record (default: derived from the technique and params, e.g. "prune-0.8").
    source_run_dir may also be a user's model file (.keras, .h5, SavedModel folder); then
    class_names and preprocessing describe it (edgepack.rundir.load_source).
    """
    require_toolchain("edgepack compress")
    tech = get_technique(technique)
    params = resolve_params(tech, params)
    with rundir.claim_output(out, {"--model": source_run_dir, "--data": data_path}, force):
        return _compress(source_run_dir, tech, out, params, data_path, force, limit_train, limit_test,
                         seed, ds, variant, {"class_names": class_names, "preprocessing": preprocessing})


def _compress(source, tech: Technique, out, params: dict, data_path, force: bool, limit_train,
              limit_test, seed: int, ds: data_mod.Dataset | None, variant: str | None,
              source_options: dict) -> Path:
    started = time.time()
    src, ds = source_and_data(source, data_path, limit_train, limit_test, seed, ds, **source_options)
    _check_source(src, tech)
    if tech.name in CLUSTERED_TECHNIQUES:  # prune -> cluster keeps the zeros (recorded in params)
        params = {**params, "preserve_sparsity": source_is_pruned(src.metadata)}

    model = checked_model(load_run_model(src), src.model_path)
    selection = targets.select(model, tech.name, tuple(params.get("keep_dense", ())))
    source_kernels = inv.kernels(model)
    if tech.needs_pruned_source and not any((w == 0).any() for w in source_kernels.values()):
        raise EdgepackError(f"{src.path} is recorded as pruned but its kernels hold no zeros: re-create it")
    part = data_mod.evaluated_on(ds)  # inside a search the "test" part is the validation split
    print(f"{tech.name}: {len(ds.y_train)} training / {len(ds.y_test)} {part} images from {ds.source}",
          flush=True)
    _print_selection(tech.name, selection)

    scaling = src.metadata.pixel_scaling
    seed_everything(seed)
    steps = params["epochs"] * math.ceil(len(ds.y_train) / params["batch_size"])
    plan = Plan(steps=steps, targets=selection.layers, source_kernels=source_kernels,
                compressed=selection.compressed)
    wrapped, callbacks = tech.wrap(model, params, plan)
    x_train = scale_pixels(ds.x_train, scaling)
    y_fit, loss, metric, teacher = ds.y_train, None, None, None
    if params["distill"]:
        teacher_model, teacher = distill.teacher(src)
        print(f"{tech.name}: distilling from {teacher} (weight {params['distill']:g}, temperature "
              f"{params['temperature']:g})", flush=True)
        soft = distill.soft_targets(teacher_model, x_train, params["temperature"])
        y_fit = distill.packed_targets(ds.y_train, soft)
        loss, metric = distill.loss_and_metric(params["distill"], params["temperature"])
    phases = [("compress", params["epochs"], params["learning_rate"])]
    if params.get("polish_epochs"):
        phases.append(("polish", params["polish_epochs"], params["polish_learning_rate"]))
    hist, finetune, phase_kernels = None, [], []
    if params["augment"] != "none":
        print(f"{tech.name}: fine-tuning on augmented images ({params['augment']})", flush=True)
    for i, (phase, epochs, rate) in enumerate(phases):
        # wrapped models must be (re)compiled; a new phase: a new adam
        compile_model(wrapped, rate, loss, metric)
        t0 = time.time()
        h = fit_checked(wrapped, x_train, y_fit, epochs=epochs, batch_size=params["batch_size"],
                        callbacks=callbacks, augment=params["augment"], seed=seed + i)
        finetune.append({"phase": phase, "epochs": epochs, "learning_rate": rate,
                         "seconds": round(time.time() - t0, 2),
                         **({"distill": params["distill"], "temperature": params["temperature"]}
                            if params["distill"] else {}),
                         **({"augment": params["augment"]} if params["augment"] != "none" else {})})
        hist = _joined(hist, h)
        if len(phases) > 1:  # the polish phase must hold phase 1's masks: compared below
            phase_kernels.append(inv.kernels(wrapped))  # numpy copies, read inside the wrappers
    finetune_seconds = sum(f["seconds"] for f in finetune)
    final = tech.finish(wrapped)
    invariants = tech.check(final, params, plan)
    if phase_kernels:
        invariants.update(inv.masks_held_record(*phase_kernels))
    metrics, _ = evaluate(final, ds, scaling)
    variant = variant or chained_variant(src.metadata, tech.variant(params))
    source_accuracy = src.metrics.accuracy if src.metrics else None
    print(f"{variant}: {part} accuracy {metrics['accuracy']:.4f} (source: "
          f"{'not measured' if source_accuracy is None else f'{source_accuracy:.4f}'}) after "
          f"{finetune_seconds:.0f} s of fine-tuning", flush=True)
    warn_weak_classes(metrics, f"{variant}: ")
    metadata = {
        "kind": "compress", "technique": tech.name, "variant": variant, "params": params,
        "source_run": str(src.path.resolve()), "source_kind": src.metadata.kind,
        "source_sha256": src.metadata.model_sha256,  # the key exported files use too
        "source_variant": src.metadata.variant, "source_technique": src.metadata.technique,
        "source_accuracy": source_accuracy, "source_data_sha256": src.metadata.data_sha256,
        "finetune": {"epochs": params["epochs"], "learning_rate": params["learning_rate"],
                     "batch_size": params["batch_size"], "steps": steps, "seed": seed,
                     "seconds": round(finetune_seconds, 2), "phases": finetune,
                     "teacher": str(teacher.resolve()) if teacher else None,
                     "schedule": schedule(src.metadata, finetune)},
        "validation": src.metadata.validation,  # held out by the chain's training run: never fitted on
        "compressed_layers": list(selection.compressed), "skipped_layers": selection.skipped,
        "invariants": invariants, **data_metadata(ds, scaling),
        "train_seconds": round(finetune_seconds, 2),  # same key as train's: seconds of (fine-)training
        "wall_seconds": round(time.time() - started, 2),
    }
    return write_run(out, force, final, tech.model_format, x_train[:ROUND_TRIP_IMAGES], metadata, metrics,
                     hist)


def schedule(source_meta: RunMetadata, phases: list[dict]) -> list[list]:
    """Every fine-tuning phase from the trained model to this one, [[epochs, learning rate], ...]
    (a distilling or augmenting phase adds more: edgepack.compress.schedule.Phase.record): the source's
    schedule (a compressed source) and then this run's phases. A matched control is fine-tuned with
    the same schedule (edgepack.compress.schedule)."""
    ft = source_meta.finetune or {}
    before = []
    if source_meta.kind == "compress":  # runs made before schedules were recorded: their one phase
        before = ft.get("schedule") or ([[ft["epochs"], ft["learning_rate"]]] if "epochs" in ft else [])
    return [*before, *(own_phases(p)[0].record() for p in phases)]  # a record is one phase


def chained_variant(source_meta: RunMetadata, own: str) -> str:
    """`<source variant>+<own>` when the source is itself a compressed run (prune-0.6+cluster-16),
    else `own`: the name says the whole chain."""
    if source_meta.kind == "compress" and source_meta.variant:
        return f"{source_meta.variant}+{own}"
    return own


def _joined(first, second):
    """One Keras History-like record of both phases (history.json lists every epoch)."""
    if first is None:
        return second
    for key, values in second.history.items():
        first.history.setdefault(key, []).extend(values)
    return first


def _print_selection(name: str, selection: targets.Selection) -> None:
    """What the technique compresses and what it leaves, with reasons (also in metadata.json)."""
    if selection.compressed:
        print(f"{name} compresses: {', '.join(selection.compressed)}", flush=True)
    for key, why in selection.skipped.items():
        print(f"{name} skips {key}: {why}", flush=True)
