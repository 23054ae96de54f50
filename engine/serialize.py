"""JSON values in, typed values out: input/output validation and step results."""

from __future__ import annotations

import importlib
import json
from functools import lru_cache
from typing import Any

import pydantic
from pydantic import BaseModel, TypeAdapter

from .errors import ValidationError
from .text import encodable, find_unencodable, first_unencodable

_MODEL_TAG = "__dq_model__"


@lru_cache(maxsize=512)
def adapter(schema: Any) -> TypeAdapter[Any]:
    return TypeAdapter(schema)


def check_schema(schema: Any, option: str) -> None:
    """Fail at definition time when pydantic cannot build a validator for `schema`."""
    try:
        adapter(schema)
    except (pydantic.PydanticSchemaGenerationError, TypeError) as exc:
        raise ValueError(f"{option}: {schema!r} is not a type pydantic can validate: {exc}") from exc


class UnencodableText(TypeError):
    """A value holds text that cannot be encoded as UTF-8 (a lone surrogate)."""


def plain_json(value: Any, what: str) -> Any:
    """A JSON-compatible deep copy of `value`; TypeError naming `what` otherwise
    (UnencodableText when it holds text no page, download or stream could encode)."""
    if value is None or isinstance(value, int | float | bool):
        return value
    if isinstance(value, str):
        check_encodable(value, what)
        return value
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    try:
        text = json.dumps(value, default=_model_default, ensure_ascii=False)
    except RecursionError:
        raise TypeError(f"{what} is nested too deeply to store") from None
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} is not JSON-serialisable: {exc}") from None
    stored = json.loads(text)
    if not encodable(text):  # one check over the whole text; the walk only to name the place
        check_encodable(stored, what)
    return stored


def check_encodable(value: Any, what: str) -> None:
    """Raise UnencodableText naming `what` and the place when `value` (JSON) holds a surrogate."""
    found = find_unencodable(value)
    if found is not None:
        where, text = found
        at = f" at {where}" if where else ""
        raise UnencodableText(
            f"{what} holds text that cannot be encoded{at}: {first_unencodable(text)} is a lone "
            "UTF-16 surrogate (a truncated emoji?); send valid Unicode"
        )


def _model_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def validate_in(schema: Any, value: Any, what: str) -> tuple[Any, Any]:
    """(typed value for the handler, JSON value to store). Raises ValidationError."""
    if schema is None:
        try:
            stored = plain_json(value, what)
        except TypeError as exc:
            raise ValidationError(str(exc)) from None
        return stored, (stored if stored is None or type(stored) in _PLAIN else _finite(stored, what))
    ta = adapter(schema)
    try:
        typed = ta.validate_python(value)
    except pydantic.ValidationError as exc:
        raise ValidationError(f"{what} is invalid: {exc}", exc) from None
    stored = ta.dump_python(typed, mode="json")
    try:
        check_encodable(stored, what)
    except TypeError as exc:
        raise ValidationError(str(exc)) from None
    return typed, _finite(stored, what)


#: Values stored as they are (no copy, no check) as step results.
_SCALARS = (int, float, bool)
#: JSON values that cannot hold NaN or Infinity (`_finite`'s common case, also tested inline).
_PLAIN = (int, str, bool)


def _finite(stored: Any, what: str) -> Any:
    # NaN and Infinity are not JSON: PostgreSQL's jsonb (the input index, the
    # input filter) refuses them, so they are refused here, before anything is stored.
    if stored is None or type(stored) in _PLAIN:  # the common case, no encoding
        return stored
    try:
        json.dumps(stored, allow_nan=False)
    except ValueError:
        raise ValidationError(f"{what} is invalid: NaN and Infinity are not JSON numbers") from None
    return stored


def load_typed(schema: Any, stored: Any) -> Any:
    """The typed value of a stored JSON value (a model instance for a model schema)."""
    if schema is None:
        return stored
    return adapter(schema).validate_python(stored)


def dump_step(value: Any, step: str) -> Any:
    """The stored form of a step result. Pydantic models keep their class for replay."""
    if value is None or type(value) in _SCALARS:  # plain_json's first case, before building `what`
        return value
    what = f"the result of step {step!r}"
    if isinstance(value, BaseModel):
        cls = type(value)
        data = value.model_dump(mode="json")
        check_encodable(data, what)
        return {_MODEL_TAG: f"{cls.__module__}:{cls.__qualname__}", "data": data}
    try:
        return plain_json(value, what)
    except UnencodableText:
        raise
    except TypeError as exc:
        raise TypeError(f"{exc}; return JSON values or a pydantic model") from None


def load_step(stored: Any) -> Any:
    if isinstance(stored, dict) and _MODEL_TAG in stored:
        module, _, qualname = str(stored[_MODEL_TAG]).partition(":")
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj.model_validate(stored["data"])
    return stored
