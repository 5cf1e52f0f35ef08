"""The export formats: one name-keyed table that drives the CLI, `export()` and the pipeline.

Each entry says which file it writes (suffix), which runtime family opens it, which options it
accepts (with defaults), how it is made (converter) and how it is checked against its source.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any

from edgepack.errors import EdgepackError
from edgepack.export import to_onnx, to_tflite

if TYPE_CHECKING:
    from edgepack.export.context import Context


@dataclass(frozen=True)
class Option:
    """One option a format accepts (`--option name=value`): declared once, checked by the one validator
    (edgepack.typed.validate, through the format's options model: `options_model`)."""

    default: Any  # its type (int, float, str, bool) is the type a value must have or be parsed to
    help: str  # one line for --help
    choices: tuple = ()  # allowed values, if a closed set
    minimum: float | None = None  # for numbers
    maximum: float | None = None  # for numbers

    def field(self) -> tuple:
        """(annotation, default) of this option as a pydantic field: its type, bounds and choices."""
        from pydantic import AfterValidator, Field  # noqa: PLC0415  toolchain extra: not for the runtime-only CLI

        kind = type(self.default)
        bounds = {k: v for k, v in (("ge", self.minimum), ("le", self.maximum)) if v is not None}
        if kind is float:
            bounds["allow_inf_nan"] = False
        if not self.choices:
            return Annotated[kind, Field(description=self.help, **bounds)], self.default
        want = "one of " + ", ".join(map(str, self.choices))
        return Annotated[kind, Field(description=self.help, json_schema_extra={"want": want}, **bounds),
                         AfterValidator(functools.partial(_one_of, self.choices, want))], self.default


def _one_of(choices: tuple, want: str, value: Any) -> Any:
    if value not in choices:
        raise ValueError(f"must be {want}, got {value!r}")
    return value


@functools.cache
def options_model(name: str, options: tuple[tuple[str, Option], ...]) -> type:
    """The pydantic model of a format's options (`options`: its Option table's items)."""
    from pydantic import ConfigDict, create_model  # noqa: PLC0415  toolchain extra: not for the runtime-only CLI

    return create_model(f"{name} options", __config__=ConfigDict(extra="forbid"),
                        **{key: opt.field() for key, opt in options})


@dataclass(frozen=True)
class Check:
    """How an exported file is compared with its source Keras model on labelled check images
    (training images no calibration used: edgepack.export.core.check_indices).

    Float formats: the largest difference of any probability (`max_abs_diff` <= threshold) from the
    source model, or, for a format that stores the weights rounded (`weights`: "float16"), from the
    source model with its weights rounded so: the file must compute what it stores, and what the
    rounding itself costs is recorded beside (`vs_source`), not judged (one image near a tie can move
    by 1e-2 in a clustered model, whose many equal weights all round the same way).
    Quantized formats (`quantized`): judged on the engines' reference kernels, so the verdict is the
    file's and not this CPU's (edgepack.runtime.backends.KERNELS), by two rules whose thresholds are
    the format's options: accuracy lost against the source (`max_drop`, points) and top-1 agreement
    with the source (`min_agreement`). Agreement alone refuses good files: near-tied images flip
    either way without costing accuracy.
    """

    metric: str  # "max_abs_diff" for float formats, "rules" for quantized ones
    threshold: float | None = None  # max_abs_diff's bound
    weights: str | None = None  # the dtype the format rounds the weights to (the reference's too)

    @property
    def quantized(self) -> bool:
        return self.metric == "rules"

    def describe(self, options: dict | None = None) -> str:
        if not self.quantized:
            against = f" against the source with {self.weights} weights" if self.weights else ""
            return f"max_abs_diff <= {self.threshold:g}{against}"
        o = {**{k: QUANTIZED_RULES[k].default for k in QUANTIZED_RULES}, **(options or {})}
        return (f"accuracy drop <= {o['max_drop']:g} points and top-1 agreement >= {o['min_agreement']:g} "
                "(reference kernels)")


@dataclass(frozen=True)
class Format:
    """One export format."""

    name: str  # also the output file's stem: `<name><suffix>`
    suffix: str  # ".tflite" or ".onnx"
    runtime: str  # "tflite" (ai_edge_litert) or "onnx" (onnxruntime): how the file is opened
    convert: Callable  # convert(ctx: edgepack.export.context.Context, path: Path) -> None
    check: Check
    summary: str  # one line for --help
    qat: bool  # accepts QAT / PQAT sources (their float formats would not be their float model)
    options: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))  # name -> Option
    # (options, export Context) -> the options of each file to try in order (the first that passes its
    # check is kept)
    candidates: Callable[[dict, Context], list[dict]] = lambda options, ctx: [dict(options)]
    help_when_failed: str = ""  # what could make a file that failed its check pass (the error's end)

    @property
    def filename(self) -> str:
        return self.name + self.suffix


FP32 = Check("max_abs_diff", 1e-4)
FP16 = Check("max_abs_diff", 1e-4, weights="float16")
QUANTIZED = Check("rules")
# The quantized check's thresholds, options of every quantized format.
QUANTIZED_RULES = {
    "max_drop": Option(1.0, "check: most accuracy points the file may lose against its source", minimum=0.0,
                       maximum=100.0),
    "min_agreement": Option(0.95, "check: least top-1 agreement with the source (0-1)", minimum=0.0,
                            maximum=1.0),
}
CALIBRATION = Option(500, "class-balanced training images used for calibration", minimum=10)
OPSET = Option(17, "ONNX opset", choices=(13, 14, 15, 16, 17, 18))
INT8_OPSET = Option(17, "ONNX opset (19, 21: also runs in onnx.reference)",
                    choices=(13, 14, 15, 16, 17, 18, 19, 21))
SCHEME = Option("portable", "int8 scheme: portable (the first of s8s8-7bit, u8u8, u8u8-float-ends whose "
                "file passes its check, the u8u8 ones first for clustered weights; each exact on every "
                "CPU), one of those, or full-range (8-bit S8S8 "
                "weights, only for CPUs with VNNI/AMX/ARM)",
                choices=("portable", "s8s8-7bit", "u8u8", "u8u8-float-ends", "full-range"))

# Layers left in float (edgepack.explain.selective); TFLite files made so have float32 input/output.
KEEP_FLOAT = Option("", "comma-separated layer names kept in float, as `edgepack explain` lists them")


def _table() -> dict[str, Format]:
    formats = [
        Format("tflite-fp32", ".tflite", "tflite", to_tflite.fp32, FP32, "TFLite, float32 weights and math",
               qat=False),
        Format("tflite-fp16", ".tflite", "tflite", to_tflite.fp16, FP16,
               "TFLite, float16 weights (half the size), float32 math", qat=False),
        Format("tflite-dynamic", ".tflite", "tflite", to_tflite.dynamic, QUANTIZED,
               "TFLite, dynamic-range: int8 weights, float input/output (QAT models: int8)", True,
               MappingProxyType(QUANTIZED_RULES)),
        Format("tflite-int8", ".tflite", "tflite", to_tflite.int8, QUANTIZED,
               "TFLite, full integer: int8 weights and activations, calibrated (QAT models: learned ranges)",
               True, MappingProxyType({
                   "calibration_images": CALIBRATION,
                   # uint8: what the TFLite Task Library takes, and uint8 pixels are the input as they are
                   "io": Option("uint8", "input/output tensor type", choices=("uint8", "int8", "float")),
                   "keep_float": KEEP_FLOAT, **QUANTIZED_RULES,
               })),
        Format("onnx-fp32", ".onnx", "onnx", to_onnx.fp32, FP32,
               "ONNX via tf2onnx, float32, dynamic batch, input named 'image'", False,
               MappingProxyType({"opset": OPSET})),
        Format("onnx-int8", ".onnx", "onnx", to_onnx.int8, QUANTIZED,
               "ONNX Runtime static quantization (QDQ, per-channel) of the fp32 ONNX, calibrated; "
               "by default the first portable scheme that passes its check (exact on every CPU)",
               True, MappingProxyType({"opset": INT8_OPSET, "calibration_images": CALIBRATION,
                                       "scheme": SCHEME, "keep_float": KEEP_FLOAT, **QUANTIZED_RULES}),
               candidates=to_onnx.candidates,
               help_when_failed="--option keep_float=LAYER (see `edgepack explain --auto`), --option "
                                "scheme=full-range (only for CPUs with VNNI/AMX/ARM), or looser --option "
                                "min_agreement / max_drop"),
    ]
    return {f.name: f for f in formats}


FORMATS: dict[str, Format] = _table()
ALL = "all"  # `--format all`
# Full-integer formats (int8 weights and activations): what an int8 device runs, and the rows that
# carry the engines' exact-reference accuracy. (tflite-dynamic keeps float activations.)
INTEGER_FORMATS = ("tflite-int8", "onnx-int8")


def resolve(names: list[str] | tuple[str, ...] | str) -> list[str]:
    """Format names in table order, `all` expanded; unknown names fail with one line."""
    if isinstance(names, str):
        names = [names]
    if not names:
        raise EdgepackError(f"no export format given: choose from {', '.join(FORMATS)} or {ALL}")
    if ALL in names:
        return list(FORMATS)
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise EdgepackError(f"unknown export format {unknown[0]!r}: choose from {', '.join(FORMATS)} "
                            f"or {ALL}")
    return [n for n in FORMATS if n in names]


def for_source(names: list[str], qat: bool, explicit: bool) -> tuple[list[str], dict[str, str]]:
    """The formats that apply to this source, and the reason for each left out (for `all`).

    A QAT / PQAT model's float formats are refused: the converter turns a QAT model into int8 (fp16,
    dynamic) or a float model emulating fake-quant that cannot match it to 1e-4 (fp32).
    """
    skipped = {n: "QAT source: only integer formats apply" for n in names if qat and not FORMATS[n].qat}
    if skipped and explicit:
        name = next(iter(skipped))
        takers = ", ".join(n for n, f in FORMATS.items() if f.qat)
        raise EdgepackError(f"{name} does not apply to a QAT/PQAT model (its float file would not be a float "
                            f"model): choose {takers}, or export the run it was fine-tuned from")
    return [n for n in names if n not in skipped], skipped


def options_for(names: list[str], options: dict | None, strict: bool = False) -> dict[str, dict]:
    """Each format's full options: defaults, overridden by `options` where that format accepts the key.

    A key no chosen format accepts is an error (it would otherwise be silently ignored). Values are
    checked by the format's options model (edgepack.typed.validate; one line naming the format and the
    key): text (the command line's `--option k=v`) is parsed ("500" -> 500), any other value must have
    the option's type (an int for a float is fine; `strict`: text too, as in a TOML settings file).
    """
    options = dict(options or {})
    for key in options:
        if not any(key in FORMATS[n].options for n in names):
            takers = [n for n, f in FORMATS.items() if key in f.options]
            hint = f"accepted by {', '.join(takers)}" if takers else "no format accepts it"
            raise EdgepackError(f"option {key!r} is not accepted by {', '.join(names)} ({hint})")
    return {n: _parsed(FORMATS[n], options, strict) for n in names}


def _parsed(fmt: Format, options: dict, strict: bool) -> dict:
    from edgepack.typed import validate  # noqa: PLC0415  pydantic (toolchain extra): not for the runtime-only CLI

    model = options_model(fmt.name, tuple(fmt.options.items()))
    out = {k: opt.default for k, opt in fmt.options.items()}
    for key in [k for k in out if k in options]:  # one at a time: text is parsed, other values are not
        value = options[key]
        lax = not strict and isinstance(value, str)
        out[key] = getattr(validate(model, {key: value}, f"{fmt.name}: option ", strict=not lax), key)
    return out
