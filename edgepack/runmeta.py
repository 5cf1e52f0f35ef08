"""A run folder's `metadata.json`: what made the model in it, as one typed record.

`RunMetadata` is the one definition: `edgepack.rundir` writes it with `write()` (for train, compress
and adopt, through edgepack.fitting.write_run) and reads it with `read()` (load_run); a user's model
file opened by load_source gets one too (kind "model-file", never written). Every reader uses its
attributes, so a missing key is found here once, not as a `.get()` default in each stage.

Keys: writers build the record with keyword arguments (`build`), checked like a file, so a misspelt or
unknown key or a wrong type fails at once. Readers refuse a file without the required keys, of another
schema or with wrongly typed values (RunMetadataError: one line naming the file, the key and the fix),
and keep keys this version does not know in `extra` (written back unchanged), so a newer minor writer's
additions are neither lost nor trusted. Both check through edgepack.typed.validate (pydantic, strict: a
"3" is not a number; JSON arrays fill the tuples). The exported-file metadata is
edgepack.runtime.metadata.FileMetadata.
No TensorFlow or toolchain extra to import: the runtime-only CLI imports this through edgepack.rundir
(pydantic, of the toolchain extra, is imported only to check a record).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from edgepack.atomic import read_json, write_json
from edgepack.errors import KeyProblem, RunFolderError
from edgepack.runtime.metadata import scaling_problem

SCHEMA_VERSION = 1  # before 1: an untyped dict without schema_version (source hash: source_model_sha256)
MODEL_FILE_KIND = "model-file"  # a user's model file opened by rundir.load_source (never written)
KINDS = ("train", "compress", "adopt", MODEL_FILE_KIND)  # what made the run folder
FIX = "re-create the run folder with this edgepack version"


class RunMetadataError(RunFolderError):
    """A run folder's metadata.json is malformed or of another schema."""


@dataclass(frozen=True)
class RunMetadata:
    """What made one run folder's model (schema version 1)."""

    # edgepack.typed.validate: strict types, an unknown key refused (readers move them to `extra` first)
    __pydantic_config__ = {"strict": True, "extra": "forbid"}

    # what it is
    kind: str  # one of KINDS
    technique: str  # "baseline", "finetune", "prune", "cluster", "qat", ... (compress's TECHNIQUES)
    variant: str  # the run's name in reports, e.g. "baseline", "prune-0.8"
    model_file: str  # the model file (or SavedModel folder) inside the run folder
    model_format: str  # how to load it: a key of edgepack.model.LOADERS ("keras", "keras-qat-h5", ...)
    # what it takes and says
    class_names: tuple[str, ...] | None  # index = class id; None only for a model file given without names
    input_shape: tuple[int, ...]  # one image, (height, width, channels)
    pixel_scaling: dict  # edgepack.runtime.preprocess spec: float input from uint8 pixels
    input_dtype: str = "uint8"  # pixels as stored in the data
    num_outputs: int | None = None  # model files: the model's class count (names may come from the data)
    # the data it was trained / evaluated on
    data_source: str | None = None  # the --data path it was read from
    data_sha256: str | None = None  # edgepack.data's hash of that data
    num_train_images: int | None = None
    num_test_images: int | None = None
    test_images_sha256: str | None = None  # the exact test images metrics.json was computed on
    # how the data's training and test images were formed (edgepack.data.Dataset.split): {"rule": "given"}
    # (CIFAR-10, train/ and test/ folders) or the one-folder rule {"rule": "stratified", "test_fraction",
    # "seed"}; None in runs made before it was recorded
    split: dict | None = None
    # training images held out from fitting (edgepack.data.validation_split's record), or None
    validation: dict | None = None
    # the model file (filled in by rundir when the folder is written)
    parameters: int | None = None  # weights only (edgepack.weights)
    model_gzip_bytes: int | None = None  # the model file gzip'ed at level 9
    model_bytes: int | None = None  # the model file's size
    model_sha256: str | None = None  # load_run refuses a model file that no longer matches it
    # train
    config: dict | None = None  # train's TrainConfig as a dict
    train_seconds: float | None = None  # seconds of (fine-)training, train and compress alike
    wall_seconds: float | None = None  # the whole command, seconds
    # compress (and adopt: source_sha256)
    params: dict = field(default_factory=dict)  # the technique's options as used (free: technique-owned)
    source_run: str | None = None  # absolute path of the source run folder or model file
    source_kind: str | None = None  # the source's kind
    source_sha256: str | None = None  # sha256 of the source's model file (exports carry the same key)
    source_variant: str | None = None
    source_technique: str | None = None
    source_accuracy: float | None = None  # the source's recorded test accuracy, if measured
    source_data_sha256: str | None = None
    finetune: dict | None = None  # {epochs, learning_rate, batch_size, steps, seed, seconds}
    compressed_layers: tuple[str, ...] = ()  # layers the technique compressed
    skipped_layers: dict = field(default_factory=dict)  # layer -> why the technique left it
    invariants: dict = field(default_factory=dict)  # the technique's checks on the final model
    adopted_from: str | None = None  # adopt: the user's model file
    # provenance (rundir.provenance)
    versions: dict = field(default_factory=dict)  # package -> version
    git_commit: str | None = None
    command: str | None = None
    platform: str | None = None
    non_finite: dict | None = None  # edgepack.atomic.write_json: which values were NaN/inf (written as null)
    extra: dict = field(default_factory=dict)  # keys this version does not know (kept, not used)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        """The JSON object: every field, `extra`'s keys at the top level where they came from."""
        d = asdict(self)
        extra = d.pop("extra")
        return {**d, **{k: v for k, v in extra.items() if k not in d}}

    @classmethod
    def from_dict(cls, raw: object, where: str) -> RunMetadata:
        """Parse and check; RunMetadataError naming `where` (one line) when it cannot be used."""
        if not isinstance(raw, dict):
            raise RunMetadataError(f"{where} must hold a JSON object: {FIX}")
        version = raw.get("schema_version")
        if version is None:
            raise RunMetadataError(f"{where} has no schema_version (written by an older edgepack): {FIX}")
        if isinstance(version, int) and version != SCHEMA_VERSION:  # another type: validate says so
            how = "newer" if version > SCHEMA_VERSION else "older"
            fix = "upgrade edgepack" if version > SCHEMA_VERSION else FIX
            raise RunMetadataError(f"{where}: run metadata schema {version} is {how} than this edgepack's "
                                   f"({SCHEMA_VERSION}): {fix}")
        known = {f.name for f in fields(cls)} - {"extra"}
        meta = _checked({k: v for k, v in raw.items() if k in known}, f"{where}: ", RunMetadataError, FIX)
        return replace(meta, extra={k: v for k, v in raw.items() if k not in known})

    def __post_init__(self):
        """What types alone do not say (run by edgepack.typed.validate after the types are checked)."""
        if self.kind not in KINDS:
            raise KeyProblem("kind", f"must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not self.model_file or Path(self.model_file).name != self.model_file:
            raise KeyProblem("model_file", "must be a file name inside the run folder, got "
                             f"{self.model_file!r}")
        if len(self.input_shape) != 3 or min(self.input_shape) <= 0:
            raise KeyProblem("input_shape", "must be [height, width, channels], got "
                             f"{list(self.input_shape)!r}")
        if (self.class_names is None and self.kind != MODEL_FILE_KIND) or self.class_names == ():
            raise KeyProblem("class_names", "must be a non-empty list of strings")
        problem = scaling_problem(self.pixel_scaling, self.input_shape[-1])
        if problem:
            raise KeyProblem("pixel_scaling", problem)

    def with_names(self, class_names) -> RunMetadata:
        """A copy with `class_names` (a model file's names taken from the data)."""
        return replace(self, class_names=tuple(str(n) for n in class_names))


def _checked(values: dict, where: str, error: type[Exception], fix: str = "") -> RunMetadata:
    """`values` (as JSON holds them) checked into a record, through the one validator."""
    from edgepack.typed import validate  # noqa: PLC0415  pydantic (toolchain extra): not for the runtime-only CLI

    return validate(RunMetadata, values, where, fix=fix, error=error)


def build(**values) -> RunMetadata:
    """A record from a writer's keyword arguments, checked as it will be written (ValueError naming the
    key: an unknown key or a wrong type is a bug)."""
    return _checked(values, "run metadata: ", ValueError)


def read(path: str | os.PathLike) -> RunMetadata:
    """The metadata.json at `path` (RunFolderError, one line, when missing, not JSON or not usable)."""
    return RunMetadata.from_dict(read_json(path), str(path))


def write(path: str | os.PathLike, meta: RunMetadata) -> None:
    """Write `meta` atomically as strict JSON (edgepack.atomic.write_json)."""

    write_json(path, meta.to_dict())

