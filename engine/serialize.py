"""JSON values in, typed values out: input/output validation and step results."""

from __future__ import annotations

import importlib
import json
from functools import lru_cache
from typing import Any

import pydantic
from pydantic import BaseModel, TypeAdapter

from .errors import ValidationError

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


def plain_json(value: Any, what: str) -> Any:
    """A JSON-compatible deep copy of `value`; TypeError naming `what` otherwise."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    try:
        return json.loads(json.dumps(value, default=_model_default))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} is not JSON-serialisable: {exc}") from None


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
        return stored, _finite(stored, what)
    ta = adapter(schema)
    try:
        typed = ta.validate_python(value)
    except pydantic.ValidationError as exc:
        raise ValidationError(f"{what} is invalid: {exc}", exc) from None
    return typed, _finite(ta.dump_python(typed, mode="json"), what)


def _finite(stored: Any, what: str) -> Any:
    # NaN and Infinity are not JSON: PostgreSQL's jsonb (the input index, the
    # input filter) refuses them, so they are refused here, before anything is stored.
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
    if isinstance(value, BaseModel):
        cls = type(value)
        return {_MODEL_TAG: f"{cls.__module__}:{cls.__qualname__}", "data": value.model_dump(mode="json")}
    try:
        return plain_json(value, f"the result of step {step!r}")
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
