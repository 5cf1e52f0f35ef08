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


def _walk(model: type, loc: tuple) -> tuple[Any, FieldInfo | None]:
    """The type at `loc` inside `model`, and its field when `loc` ends on a record's key (None when it
    ends on a list element or a dict value); (None, None) for a path the types do not know."""
    t, fi = model, None
    for part in loc:
        t = _bare(t)
        fields = fields_of(t) if isinstance(t, type) else {}
        if fields:
            if part not in fields:
                return None, None
            fi, t = fields[part], fields[part].annotation
            continue
        args = [a for a in get_args(t) if a is not Ellipsis]  # list[X], tuple[X, ...], dict[str, X]
        if not args:
            return None, None
        fi, t = None, args[-1]
    return t, fi


def inner_model(annotation) -> type | None:
    """The record type (pydantic model or dataclass) in an annotation: X, X | None, list[X], dict[str, X]."""
    if _is_model(annotation) or (isinstance(annotation, type) and dataclasses.is_dataclass(annotation)):
        return annotation
    return next((t for t in map(inner_model, get_args(annotation)) if t is not None), None)


def _describe(error: dict, model: type) -> str:
    loc, kind, value = error["loc"], error["type"], error.get("input")
    path = _path(loc)
    if kind in ("value_error", "assertion_error"):
        cause = error["ctx"]["error"]  # KeyProblem's path is relative to the record whose check raised it
        at = ".".join(p for p in (path, getattr(cause, "path", "")) if p).replace(".[", "[")
        return f"{at}: {cause}" if at else str(cause)
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        holder, _ = _walk(model, loc[:-1])
        known = ", ".join(fields_of(_bare(holder))) if holder is not None else ""
        if len(loc) == 1:
            # settings: TOML sections; a model may name its own (results.json's rows: "key")
            what = getattr(model, "TOP_LEVEL", "section" if _is_model(model) else "key")
            return f"unknown {what} {loc[0]!r} (known: {known})"
        return f"unknown key {loc[-1]!r} in [{_path(loc[:-1])}] (known: {known})"
    if kind in ("missing", "missing_argument"):
        return f"{path}: missing (required)"
    if kind in ("model_type", "dataclass_type"):
        table = "a table" if _is_model(model) else "a JSON object"  # settings: TOML tables
        return f"{path + ' ' if path else ''}must be {table}, got {value!r:.80}"
    t, fi = _walk(model, loc)
    want = expected(fi) if fi else _kind(t) if t is not None else "something else"
    return f"{path}: must be {want}, got {value!r:.80}"


def _bare(t):
    """X from X | None and from Annotated[X, ...]."""
    t = _optional(t)
    return get_args(t)[0] if get_origin(t) is typing.Annotated else t


def _optional(annotation):
    """X from X | None."""
    if get_origin(annotation) in (Union, type(int | None)):
        args = [t for t in get_args(annotation) if t is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _kind(t) -> str:
    t = _bare(t)
    origin = get_origin(t)
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
