"""A model to work on and the data to work on it with: one rule for compress and export.

The source is a run folder (edgepack.rundir.load_run) or a user's model file / SavedModel folder
(edgepack.rundir.load_source). The data is read at the model's input size (image folders are resized
the way the runtime resizes; CIFAR-10 is 32x32 only), and a model file without --class-names takes
the data's class names.
"""

from __future__ import annotations

import dataclasses

from edgepack import data as data_mod
from edgepack import rundir
from edgepack.errors import EdgepackError


def source_and_data(source, data_path=None, limit_train: int | None = None, limit_test: int | None = None,
                    seed: int = 0, ds=None, class_names=None, preprocessing: str | None = None):
    """(Run, Dataset) for `source`; `ds` (already loaded) skips reading the data again. Data read here
    leaves out the training images the source's chain held out (held_out_like)."""
    data_mod.check_limits(limit_train=limit_train, limit_test=limit_test)
    if rundir.is_run_folder(source):
        src = rundir.load_run(source)
    else:
        src = rundir.load_source(source, class_names=class_names, preprocessing=preprocessing,
                                 require_names=False)
    shape = list(src.metadata.input_shape)
    if ds is None:
        size = tuple(shape[:2]) if len(shape) == 3 else None
        ds = held_out_like(src, data_mod.load_data(src.data_path(data_path), limit_train, limit_test, seed,
                                                   image_size=size))
    if src.metadata.class_names is None:  # a model file without --class-names
        if len(ds.class_names) != src.metadata.num_outputs:
            raise EdgepackError(f"{source} outputs {src.metadata.num_outputs} classes but the data has "
                                f"{len(ds.class_names)}: pass the data it was trained on or --class-names")
        src = dataclasses.replace(src, metadata=src.metadata.with_names(ds.class_names))
    if list(ds.class_names) != list(src.metadata.class_names):
        raise EdgepackError(f"the data's class names differ from the source's: pass the --data it was "
                            f"trained on ({src.metadata.data_source or 'its labels'})")
    if shape and shape != list(ds.x_train.shape[1:]):
        raise EdgepackError(f"{source} takes {shape} images but the data's are {list(ds.x_train.shape[1:])}: "
                            "pass data of the model's input size")
    return src, ds


def held_out_like(src: rundir.Run, ds: data_mod.Dataset) -> data_mod.Dataset:
    """`ds` without the training images the source's chain held out (its metadata's `validation`
    record: `train --validation-split`, inherited by every compress run made from it): compress never
    fits on them and export never calibrates on them, so a search's validation images stay unseen and
    its reproduce commands train on exactly the trial's images. The test images are kept."""
    rec = src.metadata.validation
    if not rec:
        return ds
    search, again = data_mod.validation_split(ds, float(rec["fraction"]), int(rec["seed"]))
    if again["indices_sha256"] != rec.get("indices_sha256"):
        raise EdgepackError(f"{src.path} was made holding out {rec.get('validation_images')} training "
                            "images that this data does not give back (another file or --limit-train): pass "
                            "the data and limits it was trained with")
    print(f"held out: {rec['validation_images']} training images the source's chain never fitted on "
          "(its validation split)", flush=True)
    return dataclasses.replace(ds, x_train=search.x_train, y_train=search.y_train,
                               split={**ds.split, "held_out": dict(rec)})
