"""What a search may score on: validation images its source never learned, checked before any work.

A run folder records the training images it held out (metadata `validation`: `edgepack train
--validation-split`, inherited by every compress run made from it); the search scores on exactly that
split (its fraction and seed, re-made from the same data and limits and checked by the sha256 of its
indices). A source without such a record (a run trained on every training image, a user's model file)
learned, or may have learned, any training image: it is refused unless --val-data gives held-out images
(an image folder or CIFAR-format archive, all of whose images are scored on; the trials then fine-tune
on --data's training images, less those the source held out).
"""

from __future__ import annotations

import dataclasses
import functools
import json

import numpy as np

from edgepack import data as data_mod
from edgepack import rundir
from edgepack.errors import EdgepackError
from edgepack.sources import source_and_data

DEFAULT_SEED = 0  # sampler and training seed when the source records no split
FIX = ("train the source with `edgepack train --validation-split 0.1`, or pass held-out images with "
       "--val-data FOLDER_OR_ARCHIVE")


def resolve(opts):
    """(opts with the split's seed and fraction filled in, the source Run with class names, the data
    spec every trial rebuilds the search data from, the search Dataset, the split record); one-line
    refusals for a source that learned the validation images and for a split other than its own."""
    is_run = rundir.is_run_folder(opts.model)
    src = rundir.load_source(opts.model, class_names=opts.class_names, preprocessing=opts.preprocessing,
                             require_names=False)  # a run folder, or a model file (loaded: checked)
    rec = src.metadata.validation
    if opts.val_data:
        if opts.val_fraction is not None:
            raise EdgepackError("--val-fraction splits --data's training images; with --val-data the "
                                "search scores on --val-data's images: leave one of them out")
        opts = dataclasses.replace(opts, seed=DEFAULT_SEED if opts.seed is None else opts.seed)
    elif not rec:
        what = ("is a model file: edgepack cannot know which images it was trained on" if not is_run else
                "records no held-out training images (metadata.json has no `validation`): it learned the "
                "images the search would score on")
        raise EdgepackError(f"{opts.model} {what}; {FIX}")
    else:
        opts = _own_split(opts, rec)
    shape = list(src.metadata.input_shape or [])
    spec = {"path": str(data_mod.resolve_data_path(src.data_path(opts.data))), "seed": opts.seed,
            "limit_train": opts.limit_train, "limit_test": opts.limit_test, "val_fraction": opts.val_fraction,
            "image_size": shape[:2] if len(shape) == 3 else None}
    if opts.val_data:
        spec["val_data"] = str(data_mod.resolve_data_path(opts.val_data, download=False))
        if rec:  # trials leave out what compress leaves out (edgepack.sources.held_out_like)
            spec["held_out"] = {"fraction": float(rec["fraction"]), "seed": int(rec["seed"])}
    ds, split = search_data(spec)
    if rec and not opts.val_data:
        _check_same_images(opts, src, ds, split, rec)
    # class names and image size against the data (a model file without names takes the data's)
    src, _ = source_and_data(opts.model, ds=ds, class_names=opts.class_names,
                             preprocessing=opts.preprocessing)
    return opts, src, spec, ds, split


def _own_split(opts, rec: dict):
    """opts with the source's split; a different --val-fraction or --seed is refused."""
    fraction, seed = float(rec["fraction"]), int(rec["seed"])
    for flag, given, own in (("--val-fraction", opts.val_fraction, fraction), ("--seed", opts.seed, seed)):
        if given is not None and given != own:
            raise EdgepackError(f"{opts.model} held out its validation images with {flag} {own:g}; the "
                                f"search scores on exactly those: leave {flag} out or pass {flag} {own:g}")
    return dataclasses.replace(opts, val_fraction=fraction, seed=seed)


def _check_same_images(opts, src, ds, split: dict, rec: dict) -> None:
    """The split re-made from --data and the limits must be the images the source held out."""
    same = src.metadata.data_sha256 == ds.sha256 and split["indices_sha256"] == rec.get("indices_sha256")
    if not same:
        raise EdgepackError(f"{opts.model} held out {rec.get('validation_images')} training images of "
                            f"{src.metadata.data_source or 'its data'} that this --data and --limit-train "
                            "do not give back: pass the data and limits it was trained with, or held-out "
                            "images with --val-data FOLDER_OR_ARCHIVE")


@functools.lru_cache(maxsize=2)
def _search_data(spec_json: str):
    spec = json.loads(spec_json)
    size = tuple(spec["image_size"]) if spec.get("image_size") else None
    full = data_mod.load_data(spec["path"], spec.get("limit_train"), spec.get("limit_test"), spec["seed"],
                              image_size=size)
    if not spec.get("val_data"):
        return data_mod.validation_split(full, spec["val_fraction"], spec["seed"])
    return _with_val_data(full, spec, size)


def _with_val_data(full, spec: dict, size):
    """Train on `full`'s training images (less the source's held-out ones), score on every image of
    spec["val_data"] (its training and test parts alike)."""
    val = data_mod.load_data(spec["val_data"], image_size=size, download=False)
    if val.sha256 == full.sha256:
        raise EdgepackError(f"--val-data {spec['val_data']} is the same data as --data: give images the "
                            "source never trained on")
    if list(val.class_names) != list(full.class_names):
        raise EdgepackError(f"--val-data {spec['val_data']} has classes {', '.join(val.class_names)}, the "
                            f"data {', '.join(full.class_names)}: give images of the same classes")
    if val.x_train.shape[1:] != full.x_train.shape[1:]:
        raise EdgepackError(f"--val-data {spec['val_data']} has {list(val.x_train.shape[1:])} images, the "
                            f"data {list(full.x_train.shape[1:])}: give images of the same size and channels")
    train, held = full, 0
    if spec.get("held_out"):
        rule = spec["held_out"]
        train, record = data_mod.validation_split(full, rule["fraction"], rule["seed"])
        held = record["validation_images"]
    x_val = np.concatenate([val.x_train, val.x_test])
    y_val = np.concatenate([val.y_train, val.y_test])
    record = {"rule": "given", "val_data": val.source, "val_data_sha256": val.sha256,
              "train_images": int(len(train.y_train)), "validation_images": int(len(y_val)),
              "held_out_by_source": held, "test_images_untouched": int(len(full.y_test))}
    search = data_mod.Dataset(train.x_train, train.y_train, x_val, y_val, full.class_names, full.source,
                              full.sha256, full.input_shape, {**record, "of": dict(full.split)})
    return search, record


def search_data(spec: dict):
    """(search Dataset, split record) for a data spec (path, limits, seed, image_size, and val_fraction
    or val_data); cached: in-process trials read the data once."""
    return _search_data(json.dumps(spec, sort_keys=True))
