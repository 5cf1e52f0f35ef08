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
    """(Run, Dataset) for `source`; `ds` (already loaded) skips reading the data again."""
    data_mod.check_limits(limit_train=limit_train, limit_test=limit_test)
    if rundir.is_run_folder(source):
        src = rundir.load_run(source)
    else:
        src = rundir.load_source(source, class_names=class_names, preprocessing=preprocessing,
                                 require_names=False)
    shape = list(src.metadata.input_shape)
    if ds is None:
        size = tuple(shape[:2]) if len(shape) == 3 else None
        ds = data_mod.load_data(src.data_path(data_path), limit_train, limit_test, seed, image_size=size)
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
