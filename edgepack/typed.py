"""The one validator: pydantic checks a record and its first problem becomes one line naming the key.

What it checks: the settings file and its command-line options (edgepack.settings), each export format's
options (edgepack.export.formats), and the JSON records edgepack writes and reads back: a run folder's
metadata.json (edgepack.runmeta) and metrics.json (edgepack.metrics), an export folder's export.json
(edgepack.export.summary), a device's results (edgepack.report.devices). Records are pydantic models, or
plain dataclasses (importable without pydantic, which the runtime-only install lacks) that pydantic
checks as the JSON their file holds (arrays fill tuples). `expected()` gives a field's accepted values in
words, for the errors, the settings' --help and the docs table.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from edgepack.errors import EdgepackError

KINDS = {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}
PLURAL = {int: "whole numbers", float: "numbers", str: "strings", bool: "true/false values"}


def validate(model: type, data: Any, where: str, *, strict: bool | None = None, fix: str = "",
             error: type[Exception] = EdgepackError) -> Any:
    """`model` from `data`, or `error` of one line: `where`, the first problem's key and what it must be,
    then `fix` (what to do about it) if given.

    `model` is a pydantic model (checked as Python values, `strict` as asked), or a dataclass, checked
    as JSON (`data` a dict/list, or a file's JSON text): JSON arrays fill tuples, and the dataclass's
    `__pydantic_config__` says strict or not.
    """
    try:
        if _is_model(model):
            return model.model_validate(data, strict=strict)
        text = data if isinstance(data, str | bytes) else json.dumps(data)
        return _adapter(model).validate_json(text, strict=strict)
    except ValidationError as e:
        errors = e.errors()
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        end = f": {fix}" if fix else ""
        raise error(f"{where}{_describe(errors[0], model)}{more}{end}") from None


@functools.cache
def _adapter(model: type) -> TypeAdapter:
    return TypeAdapter(model)


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


@functools.cache
def fields_of(model: type) -> dict[str, FieldInfo]:
    """A pydantic model's or a dataclass's fields by name ({} for any other type)."""
    if _is_model(model):
        return model.model_fields
    if dataclasses.is_dataclass(model):
        hints = typing.get_type_hints(model, include_extras=True)
        return {f.name: FieldInfo.from_annotation(hints[f.name]) for f in dataclasses.fields(model)}
    return {}


def _path(loc: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _walk(model: type, loc: tuple) -> tuple[type | None, FieldInfo | None]:
    """The model that holds the last key of `loc`, and that key's field (None if unknown)."""
    holder: type | None = model
    fi = None
    for part in loc:
        if isinstance(part, int):
            continue
        if holder is None or part not in fields_of(holder):
            return holder, None
        fi = fields_of(holder)[part]
        holder = inner_model(fi.annotation)
    return holder, fi


def inner_model(annotation) -> type | None:
    """The record type (pydantic model or dataclass) in an annotation: X, X | None, list[X], dict[str, X]."""
    if _is_model(annotation) or (isinstance(annotation, type) and dataclasses.is_dataclass(annotation)):
        return annotation
    return next((t for t in map(inner_model, get_args(annotation)) if t is not None), None)


def _describe(error: dict, model: type) -> str:
    loc, kind, value = error["loc"], error["type"], error.get("input")
    path = _path(loc)
    if kind in ("value_error", "assertion_error"):
        cause = error["ctx"]["error"]
        return f"{getattr(cause, 'path', path)}: {cause}" if getattr(cause, "path", path) else str(cause)
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        holder, _ = _walk(model, loc[:-1])
        known = ", ".join(fields_of(holder)) if holder else ""
        if len(loc) == 1:
            what = "section" if _is_model(model) else "key"  # settings: TOML sections
            return f"unknown {what} {loc[0]!r} (known: {known})"
        return f"unknown key {loc[-1]!r} in [{_path(loc[:-1])}] (known: {known})"
    if kind in ("missing", "missing_argument"):
        return f"{path}: missing (required)"
    if kind in ("model_type", "dataclass_type"):
        table = "a table" if _is_model(model) else "a JSON object"  # settings: TOML tables
        return f"{path + ' ' if path else ''}must be {table}, got {value!r:.80}"
    _, fi = _walk(model, loc)
    inside = loc and isinstance(loc[-1], int)  # an element of a list-valued field
    return f"{path}: must be {_element(model, loc) if inside or not fi else expected(fi)}, got {value!r:.80}"


def _element(model: type, loc: tuple) -> str:
    """What an element of a list, or a value of a dict, must be (`loc` goes on inside a field)."""
    for cut in range(len(loc) - 1, 0, -1):
        _, fi = _walk(model, loc[:cut])
        if fi is not None and not isinstance(loc[cut - 1], int):
            t = fi.annotation
            for _ in loc[cut:]:  # one level down per list index or dict key
                args = [a for a in get_args(_optional(t)) if a is not Ellipsis]
                if not args:
                    return "something else"
                t = args[-1]
            return _kind(t)
    return "something else"


def _optional(annotation):
    """X from X | None."""
    if get_origin(annotation) in (Union, type(int | None)):
        args = [t for t in get_args(annotation) if t is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _kind(t) -> str:
    t = _optional(t)
    origin = get_origin(t)
    if origin is typing.Annotated:
        return _kind(get_args(t)[0])
    if origin in (list, tuple):
        return f"a list of {PLURAL.get(get_args(t)[0], 'values')}"
    if origin is dict or t is dict or inner_model(t) is t:
        return "an object"
    if origin is Literal:
        return "one of " + ", ".join(map(str, get_args(t)))
    return KINDS.get(t, "a value")


def expected(fi: FieldInfo) -> str:
    """What a field accepts, in words, from its type and bounds ("a whole number >= 1")."""
    want = (fi.json_schema_extra or {}).get("want")
    if want:
        return want
    text = _kind(fi.annotation)
    bound = {k: getattr(m, k) for m in fi.metadata for k in ("ge", "gt", "le") if hasattr(m, k)}
    if "le" not in bound and any(getattr(m, "allow_inf_nan", True) is False for m in fi.metadata):
        text = text.replace("a number", "a finite number")
    if "ge" in bound and "le" in bound:
        return f"{text} from {bound['ge']:g} to {bound['le']:g}"
    if "ge" in bound or "gt" in bound:
        return f"{text} >= {bound['ge']:g}" if "ge" in bound else f"{text} > {bound['gt']:g}"
    return text
