"""The pipeline's settings: one typed definition from which the defaults, the checks, the CLI help and
the settings table in docs/pipeline.md all come.

Layering: the defaults below < `QUICK` (--quick) < a TOML file (--config) < command-line options.
Every value is checked by type (strictly: `"3"` is not a number) and range, and cross-checked against
the technique and format tables, before the pipeline does any work; a problem is one line naming the
key. Loading and checking settings imports neither TensorFlow nor a converter.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.fields import FieldInfo

from edgepack.compress import TECHNIQUES
from edgepack.compress.core import resolve_params
from edgepack.compress.schedule import Phase, control_variants, own_phases
from edgepack.compress.techniques import CLUSTERED_TECHNIQUES, PRUNED_TECHNIQUES
from edgepack.data import MIN_CLASSES
from edgepack.errors import EdgepackError, KeyProblem
from edgepack.export.formats import ALL, FORMATS, INTEGER_FORMATS, options_for
from edgepack.fitting import AUGMENTATIONS
from edgepack.report.options import EXACT_REFERENCE
from edgepack.report.pick import OBJECTIVES
from edgepack.target import DEFAULT as DEFAULT_TARGET
from edgepack.target import TARGETS, Budget, check_budget, parse_bytes
from edgepack.typed import KINDS, expected, inner_model, validate

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the toolchain extra installs tomli
    import tomli as tomllib


class _Section(BaseModel):
    # strict: a TOML string is not a number; forbid: a misspelt key is an error, not a silent default.
    model_config = ConfigDict(strict=True, extra="forbid")


def _doc(text: str, unset: str | None = None, want: str | None = None) -> dict:
    """Field extras: `unset` is what a null default means (for the docs), `want` overrides the
    accepted-values text derived from the type."""
    return {"json_schema_extra": {k: v for k, v in (("unset", unset), ("want", want)) if v},
            "description": text}


class Data(_Section):
    path: str | None = Field(None, **_doc(
        "cifar-10-python.tar.gz or cifar-10-batches-py folder (`--data` wins)",
        unset="`--data`, `$EDGEPACK_DATA`, the Keras cache, download"))
    limit_train: int | None = Field(None, ge=MIN_CLASSES, **_doc(
        "seeded, class-balanced subset of N training images", unset="all 50,000"))
    limit_test: int | None = Field(None, ge=MIN_CLASSES, **_doc(
        "seeded, class-balanced subset of N test images", unset="all 10,000"))
    seed: int = Field(0, ge=0, **_doc("seed of the subsets, training and fine-tuning"))


class Train(_Section):
    epochs: int = Field(10, ge=1, **_doc("baseline training epochs"))
    batch_size: int = Field(32, ge=1, **_doc("baseline training batch size"))
    learning_rate: float = Field(1e-3, gt=0, allow_inf_nan=False, **_doc("baseline Adam learning rate"))


class Finetune(_Section):
    """Forces one fine-tuning recipe on every variant; unset keys keep each technique's own."""

    epochs: int | None = Field(None, ge=1, **_doc("fine-tuning epochs of every variant",
                                                  unset="the technique's own"))
    learning_rate: float | None = Field(None, gt=0, allow_inf_nan=False, **_doc(
        "fine-tuning learning rate of every variant", unset="the technique's own"))
    batch_size: int | None = Field(None, ge=1, **_doc("fine-tuning batch size of every variant",
                                                      unset="the technique's own"))
    augment: Literal[AUGMENTATIONS] | None = Field(None, **_doc(
        "fine-tune every variant on augmented images (`flip`: a random half of each batch mirrored; "
        "`flip-shift`: also moved up to 4 pixels; for photographs)", unset="the technique's own (none)",
        want=", ".join(AUGMENTATIONS[:-1]) + f" or {AUGMENTATIONS[-1]}"))

    @model_serializer(mode="wrap")
    def _set_keys_only(self, handler) -> dict:
        # Unset keys are left out, so {**technique defaults, **finetune} keeps the technique's own.
        return {k: v for k, v in handler(self).items() if v is not None}


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a variant name is also a folder name


class Variant(_Section):
    name: str = Field(**_doc("unique name, also its folder under runs/ and exports/"))
    technique: str = Field(**_doc("compression technique", want=f"one of {', '.join(TECHNIQUES)}"))
    source: str = Field("baseline", **_doc("the run it starts from: `baseline` or an earlier variant"))
    params: dict[str, Any] = Field(default_factory=dict, **_doc(
        "the technique's options (`edgepack compress --help`), over [finetune]", want="a table"))

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v == "baseline" or not NAME.fullmatch(v):
            raise ValueError(f"must be letters, digits, '.', '_' or '-' and not 'baseline', got {v!r}")
        return v

    @field_validator("technique")
    @classmethod
    def _technique(cls, v: str) -> str:
        if v not in TECHNIQUES:
            raise ValueError(f"unknown technique {v!r} (known: {', '.join(TECHNIQUES)})")
        return v


def _default_variants() -> list[Variant]:
    """The default variants: the best chain `edgepack optimize` found on CIFAR-10 (scored on validation
    images; docs/optimize.md), each of its steps a row, and one variant of every other technique,
    trained so that they share controls: 2:4 like the chain's first step; QAT's one epoch is that
    step's polish epoch, quantization-aware, after the same first phase (the chain's control's first
    step, named here as QAT's source); PQAT like the chain's second step."""
    fs = {"augment": "flip-shift"}
    first = {"epochs": 3, "learning_rate": 1e-3, **fs}
    polished = {**first, "polish_epochs": 1}
    then = {"epochs": 2, **fs}  # at the technique's own 1e-4
    return [Variant(name="prune-0.65", technique="prune", params={"sparsity": 0.65, **polished}),
            Variant(name="prune-0.65-cluster-8", technique="cluster", source="prune-0.65",
                    params={"clusters": 8, **then}),
            Variant(name="prune-0.65-cluster-8-pcqat", technique="pcqat", source="prune-0.65-cluster-8",
                    params=then),
            Variant(name="prune-2of4", technique="prune-2of4", params=polished),
            Variant(name="finetune-e3-lr0.001-flip-shift", technique="finetune", params=first),
            Variant(name="qat", technique="qat", source="finetune-e3-lr0.001-flip-shift",
                    params={"epochs": 1, "learning_rate": 1e-4, **fs}),
            Variant(name="pqat", technique="pqat", source="prune-0.65", params=then)]


class Export(_Section):
    formats: list[str] = Field(default_factory=lambda: list(FORMATS), **_doc(
        "export formats of every model (QAT models: the integer ones only)",
        want=f'a list of {", ".join(FORMATS)}; or "{ALL}"'))
    options: dict[str, Any] = Field(default_factory=dict, **_doc(
        "format options (`edgepack export --help`); each key must be taken by a chosen format",
        want="a table"))
    # A control is compared with the rows of its matched variants: in the integer formats its int8
    # twin separates quantization from compression; its float files would only repeat its Keras row.
    control_formats: list[str] = Field(default_factory=lambda: list(INTEGER_FORMATS), **_doc(
        "formats the uncompressed controls are exported in (of `formats`); controls no variant is "
        "matched with are not exported", want=f'a list of formats, or "{ALL}"'))

    @field_validator("formats", "control_formats", mode="before")
    @classmethod
    def _all(cls, v):
        return list(FORMATS) if v in (ALL, [ALL]) else v

    @field_validator("formats", "control_formats")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in FORMATS:
                raise ValueError(f"unknown export format {name!r} (known: {', '.join(FORMATS)}, or "
                                 f'formats = "{ALL}")')
        if len(set(v)) != len(v):
            raise ValueError(f"a format is listed twice: {v}")
        return v

    @model_validator(mode="after")
    def _options(self) -> Export:
        try:  # keys taken by a chosen format, of its type (strict: "500" is not a number), in range
            options_for(self.formats, self.options, strict=True)
        except EdgepackError as e:
            raise KeyProblem("options", str(e)) from None
        return self


def _size(text: str) -> str:
    """A budget such as "64KiB", checked (edgepack.target.budget) and kept as written."""
    try:
        parse_bytes(text)
    except EdgepackError as e:
        raise ValueError(str(e)) from None
    return text


Size = Annotated[str, AfterValidator(_size)]
SIZE_WANT = "a size such as \"64KiB\" (a whole number and B, KiB, MiB, kB or MB, no space)"


class Compare(_Section):
    runs: int = Field(200, ge=1, **_doc("timed batch-1 runs per model and thread setting"))
    warmup: int = Field(20, ge=0, **_doc("untimed runs before timing"))
    max_drop: float | None = Field(1.0, ge=0, le=100, allow_inf_nan=False, **_doc(
        "recommend the smallest, fastest variant within this many accuracy points of the baseline",
        unset="no recommendation"))
    objective: Literal[OBJECTIVES] = Field("size", **_doc(
        "what decides among the variants within max_drop: size (the smallest file: what a device stores) "
        "or latency (the fastest on this machine; as fast: the smallest)", want=" or ".join(OBJECTIVES)))
    fail_over: float | None = Field(None, ge=0, le=100, allow_inf_nan=False, **_doc(
        "exit 1 when a variant drops more than this many accuracy points", unset="no gate"))
    exact_reference: Literal[EXACT_REFERENCE] = Field("front", **_doc(
        "which int8 files also run on the engines' reference kernels (their accuracy on any CPU): front "
        "(the Pareto front's and the recommended one) or all", want=" or ".join(EXACT_REFERENCE)))
    target: Literal[tuple(TARGETS)] = Field(DEFAULT_TARGET, **_doc(
        "where the files will run (docs/targets.md): tflm (TensorFlow Lite Micro), arm64 (emulated), browser",
        want=" or ".join(TARGETS)))
    ram: Size | None = Field(None, **_doc(
        "the target's RAM budget for the tensor arena, e.g. \"64KiB\" (B, KiB, MiB, kB, MB; no space)",
        unset="no limit", want=SIZE_WANT))
    flash: Size | None = Field(None, **_doc(
        "the target's flash budget for the model file, e.g. \"256KiB\"", unset="no limit", want=SIZE_WANT))

    @model_validator(mode="after")
    def _budgets_on_a_device(self):
        try:
            check_budget(self.target, Budget.parse(self.ram, self.flash))
        except EdgepackError as e:
            raise KeyProblem("ram" if self.ram else "flash", str(e)) from None
        return self


class Settings(_Section):
    """What a settings file may hold (every key optional)."""

    data: Data = Field(default_factory=Data)
    train: Train = Field(default_factory=Train)
    finetune: Finetune = Field(default_factory=Finetune)
    variants: list[Variant] = Field(default_factory=_default_variants, **_doc(
        "the compressed variants ([[variants]] tables; a file's list replaces this one)",
        want="an array of tables"))
    # Controls: the original fine-tuned with the same epochs and learning rate as the compressed
    # variants, not compressed, one per distinct recipe. Extra low-learning-rate epochs alone move
    # accuracy; the report credits compression only with the rest.
    controls: bool = Field(True, **_doc("add one uncompressed fine-tuning control per recipe"))
    export: Export = Field(default_factory=Export)
    compare: Compare = Field(default_factory=Compare)

    @model_validator(mode="after")
    def _variants(self) -> Settings:
        seen: list[str] = []
        for i, v in enumerate(self.variants):
            where = f"variants[{i}]"
            if v.name in seen:
                raise KeyProblem(f"{where}.name", f"{v.name!r} is used twice (controls are named "
                          "finetune-e<epochs>-lr<rate>: rename the variant or set controls = false)")
            if v.source != "baseline" and v.source not in seen:
                raise KeyProblem(f"{where}.source", f"{v.source!r} must be 'baseline' or an earlier variant")
            tech = TECHNIQUES[v.technique]
            if tech.needs_clustered_source and (
                    v.source == "baseline" or self._by_name(v.source).technique not in CLUSTERED_TECHNIQUES):
                raise KeyProblem(f"{where}.source",
                                 f"{v.technique} starts from a cluster variant, not {v.source!r}")
            if tech.needs_pruned_source and v.source != "baseline" and not self._pruned(v.source):
                raise KeyProblem(f"{where}.source", f"{v.technique} starts from a pruned variant "
                          f"({', '.join(PRUNED_TECHNIQUES)}, or a cluster variant of one), not {v.source!r}")
            _check_params(where, tech, v.params, self.finetune.model_dump())
            seen.append(v.name)
        return self

    def _by_name(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)

    def _pruned(self, name: str) -> bool:
        """A prune variant, or a cluster variant of one (which keeps its zeros)."""
        v = self._by_name(name)
        return v.technique in PRUNED_TECHNIQUES or (
            v.technique in CLUSTERED_TECHNIQUES and v.source != "baseline" and self._pruned(v.source))


class Resolved(Settings):
    """The settings a pipeline runs with (controls added); `settings.json` is this, dumped."""

    quick: bool = Field(False, **_doc("--quick: a smoke run on a subset (command line only)"))


def _check_params(where: str, tech, params: dict, finetune: dict) -> None:
    """A variant's params: options its technique takes, of their default's type, in range (compress's
    own rules, run on the merged recipe)."""
    for key, value in params.items():
        if key not in tech.defaults:
            raise KeyProblem(f"{where}.params", f"technique {tech.name} does not take {key!r}; it takes "
                      f"{', '.join(tech.defaults)}")
        default = tech.defaults[key]
        if isinstance(default, tuple):
            ok, want = isinstance(value, list) and all(isinstance(x, str) for x in value), "a list of strings"
        else:
            kinds = (int, float) if type(default) is float else (type(default),)
            ok, want = isinstance(value, kinds) and not isinstance(value, bool), KINDS[type(default)]
        if not ok:
            raise KeyProblem(f"{where}.params.{key}", f"must be {want}, got {value!r:.80}")
    try:
        resolve_params(tech, {**finetune, **params})
    except EdgepackError as e:
        raise KeyProblem(f"{where}.params", str(e)) from None


# --quick: a few-minute smoke run on a subset; the report says so.
QUICK: dict = {
    "data": {"limit_train": 5000, "limit_test": 1000},
    "train": {"epochs": 2},
    "finetune": {"epochs": 1},
    "compare": {"runs": 30, "warmup": 5},
}


def merge(base: dict, override: dict) -> dict:
    """Nested dict update (override wins; lists are replaced, not merged)."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        both = isinstance(v, dict) and isinstance(out.get(k), dict)
        out[k] = merge(out[k], v) if both else copy.deepcopy(v)
    return out


def read_toml(config: str | Path) -> dict:
    if Path(config).is_dir():
        raise EdgepackError(f"--config {config} is a folder: expected a TOML settings file "
                            "(e.g. examples/pipeline.toml)")
    try:
        with open(config, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise EdgepackError(f"config file {config} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise EdgepackError(f"config file {config} is not valid TOML ({e})") from None


def load_settings(config: str | Path | None = None, quick: bool = False,
                  overrides: dict | None = None) -> Resolved:
    """Defaults, then --quick, then the TOML file, then CLI overrides; every value checked."""
    user = read_toml(config) if config is not None else {}
    where = f"config file {config}: " if config is not None else "settings: "
    validate(Settings, user, where)  # the file alone first, so its problems are named as its own
    merged = merge(merge(QUICK, user) if quick else user, overrides or {})
    s = validate(Settings, merged, where)
    variants = [v.model_dump() for v in s.variants]
    if s.controls:
        made = {c["name"]: c for c in controls(variants, s.finetune.model_dump())}
        # a finetune variant that is one of the controls (e.g. named as a variant's source) is that control
        variants = list(made.values()) + [v for v in variants if not _is_control(v, made.get(v["name"]))]
    return validate(Resolved, {**merged, "variants": variants, "quick": quick}, where)


def schedule(variant: dict, by_name: dict[str, dict], finetune: dict) -> tuple[Phase, ...]:
    """Every phase from the baseline to `variant` (edgepack.compress.schedule): its source's schedule,
    then its own phases as compress resolves its options."""
    params = resolve_params(TECHNIQUES[variant["technique"]], {**finetune, **variant.get("params", {})})
    own = own_phases(params)
    source = variant.get("source", "baseline")
    return (() if source == "baseline" else schedule(by_name[source], by_name, finetune)) + own


def _is_control(variant: dict, control: dict | None) -> bool:
    return control is not None and variant["technique"] == "finetune" and all(
        variant.get(k) == control.get(k) for k in ("source", "params"))


def controls(variants: list[dict], finetune: dict) -> list[dict]:
    """Uncompressed fine-tuning controls, one per distinct schedule among the compressed variants
    (edgepack.compress.schedule.control_variants)."""
    by_name = {v["name"]: v for v in variants}
    return control_variants(schedule(v, by_name, finetune) for v in variants if v["technique"] != "finetune")


def field(section: str, key: str) -> FieldInfo:
    return Settings.model_fields[section].annotation.model_fields[key]


def parse_option(section: str, key: str, text: str):
    """A command-line value for [section] key, parsed and range-checked by the same field."""
    fi = field(section, key)
    try:
        return TypeAdapter(Annotated[fi.annotation, fi]).validate_python(text, strict=False)
    except ValidationError:
        raise ValueError(f"must be {expected(fi)}, got {text!r}") from None


def default_text(section: str, key: str) -> str:
    """`default: 10; --quick: 2` for --help, from the model and QUICK."""
    fi = field(section, key)
    text = _show(fi.default, fi)
    quick = QUICK.get(section, {}).get(key)
    return f"default: {text}" + (f"; --quick: {_show(quick, fi)}" if quick is not None else "")


def _show(value, fi: FieldInfo | None = None) -> str:
    if value is None:
        return ((fi.json_schema_extra or {}).get("unset") if fi else None) or "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and not math.isnan(value):
        return f"{value:g}"
    if isinstance(value, list):
        return ", ".join(v.name if isinstance(v, Variant) else str(v) for v in value)
    return str(value)


def markdown_table() -> str:
    """The settings reference (docs/pipeline.md), rendered from the models so it cannot drift."""
    defaults = Settings()
    rows = ["| setting | default | --quick | accepts | what |", "|---|---|---|---|---|"]

    def row(key: str, fi: FieldInfo, default, quick) -> None:
        q = "" if quick is None else _show(quick, fi)
        rows.append(f"| `{key}` | {_show(default, fi)} | {q} | {expected(fi)} | {fi.description} |")

    for name, fi in Settings.model_fields.items():
        sub = inner_model(fi.annotation)
        if sub is None or name == "variants":
            row(name, fi, getattr(defaults, name), None)
        if name == "variants":
            for key, vfi in Variant.model_fields.items():
                default = "(required)" if vfi.is_required() else vfi.get_default(call_default_factory=True)
                row(f"variants[].{key}", vfi, default, None)
        elif sub is not None:
            for key, sfi in sub.model_fields.items():
                row(f"{name}.{key}", sfi, getattr(getattr(defaults, name), key), QUICK.get(name, {}).get(key))
    return "\n".join(rows) + "\n"
