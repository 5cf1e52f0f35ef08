"""Pydantic models' validation errors as one line naming the key, and a field's accepted values in
words: what the settings file, its command-line options and the docs table say (edgepack.settings).
"""

from __future__ import annotations

from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from edgepack.errors import EdgepackError

KINDS = {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}


def validate(model: type[BaseModel], data: dict, where: str) -> Any:
    """`model` from `data`, or an EdgepackError of one line naming the first problem's key."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise EdgepackError(f"{where}{_describe(errors[0], model)}{more}") from None


def _path(loc: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _walk(model: type[BaseModel], loc: tuple) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """The model that holds the last key of `loc`, and that key's field (None if unknown)."""
    holder: type[BaseModel] | None = model
    fi = None
    for part in loc:
        if isinstance(part, int):
            continue
        if holder is None or part not in holder.model_fields:
            return holder, None
        fi = holder.model_fields[part]
        holder = inner_model(fi.annotation)
    return holder, fi


def inner_model(annotation) -> type[BaseModel] | None:
    for t in (annotation, *get_args(annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _describe(error: dict, model: type[BaseModel]) -> str:
    loc, kind, value = error["loc"], error["type"], error.get("input")
    path = _path(loc)
    if kind in ("value_error", "assertion_error"):
        cause = error["ctx"]["error"]
        return f"{getattr(cause, 'path', path)}: {cause}" if getattr(cause, "path", path) else str(cause)
    if kind == "extra_forbidden":
        holder, _ = _walk(model, loc[:-1])
        known = ", ".join(holder.model_fields) if holder else ""
        if len(loc) == 1:
            return f"unknown section {loc[0]!r} (known: {known})"
        return f"unknown key {loc[-1]!r} in [{_path(loc[:-1])}] (known: {known})"
    if kind == "missing":
        return f"{path}: missing (required)"
    if kind == "model_type":
        return f"{path} must be a table, got {value!r:.80}"
    _, fi = _walk(model, loc)
    return f"{path}: must be {expected(fi) if fi else 'something else'}, got {value!r:.80}"


def expected(fi: FieldInfo) -> str:
    """What a field accepts, in words, from its type and bounds ("a whole number >= 1")."""
    want = (fi.json_schema_extra or {}).get("want")
    if want:
        return want
    kinds = [t for t in get_args(fi.annotation) if t is not type(None)] if get_origin(fi.annotation) in (
        Union, type(int | None)) else [fi.annotation]
    text = KINDS.get(kinds[0], "a value")
    bound = {k: getattr(m, k) for m in fi.metadata for k in ("ge", "gt", "le") if hasattr(m, k)}
    if "le" not in bound and any(getattr(m, "allow_inf_nan", True) is False for m in fi.metadata):
        text = text.replace("a number", "a finite number")
    if "ge" in bound and "le" in bound:
        return f"{text} from {bound['ge']:g} to {bound['le']:g}"
    if "ge" in bound or "gt" in bound:
        return f"{text} >= {bound['ge']:g}" if "ge" in bound else f"{text} > {bound['gt']:g}"
    return text
