"""One error root, a must-not-catch tier, and a stored form that round-trips."""

from __future__ import annotations

import builtins
import importlib
import json
import traceback as tb
from typing import Any

import pydantic


class DqError(Exception):
    """Root of every error dq raises."""


class JobError(DqError):
    """A job failed for good; `.cause` is the last attempt's error."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class CancelledError(DqError):
    """An execution was cancelled. An ordinary Exception, unlike asyncio's."""

    def __init__(self, message: str = "cancelled", reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class TimeoutError(DqError, builtins.TimeoutError):
    """An attempt or a step ran past its timeout."""


class ValidationError(DqError, ValueError):
    """Input or output did not match its schema; `.cause` holds pydantic's error."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class NonDeterminismError(DqError):
    """A replay reached a different step than the recorded history."""


class LeaseLostError(DqError):
    """This process no longer holds the execution (another worker took it over)."""


class StorageLostError(DqError):
    """The storage lost data dq wrote (e.g. Redis FLUSHALL, a restart without
    persistence). Raised instead of carrying on as if the queue were empty."""


class StorageBusyError(DqError, builtins.TimeoutError):
    """No storage connection became free within the adapter's acquire timeout: the
    call was not sent, so nothing of it was written. Safe to call again later."""


class StoredError(DqError):
    """An error whose class could not be rebuilt from storage."""

    def __init__(self, message: str, type_name: str) -> None:
        super().__init__(message)
        self.type_name = type_name


class Interrupt(BaseException):
    """Unwinds a handler without failing it (suspend, pause, cancel, shutdown).

    A BaseException so that `except Exception` in user code cannot swallow it.
    """

    def __init__(self, kind: str, reason: str | None = None) -> None:
        super().__init__(kind)
        self.kind = kind
        self.reason = reason


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}"


def error_to_dict(exc: BaseException) -> dict[str, Any]:
    """The stored form of an error: type, message, traceback, cause chain."""
    stored_tb = getattr(exc, "__dq_traceback__", None)
    data: dict[str, Any] = {
        "type": getattr(exc, "type_name", None) if isinstance(exc, StoredError) else _type_name(exc),
        "message": str(exc),
        "traceback": stored_tb
        if stored_tb is not None
        else "".join(tb.format_exception(type(exc), exc, exc.__traceback__)),
    }
    args = getattr(exc, "__dq_args__", exc.args)
    if args and not isinstance(exc, JobError | ValidationError | CancelledError | StoredError):
        try:
            json.dumps(args)
            data["args"] = list(args)  # rebuilds the same error (KeyError('k'), custom fields)
        except (TypeError, ValueError):
            pass
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        data["cause"] = error_to_dict(cause)
    reason = getattr(exc, "reason", None)
    if isinstance(exc, CancelledError) and reason is not None:
        data["reason"] = reason
    return data


def _load_class(type_name: str) -> type[BaseException] | None:
    module, _, qualname = type_name.rpartition(".")
    if not module:
        return None
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return obj if isinstance(obj, type) and issubclass(obj, BaseException) else None


def _rebuild(cls: type[BaseException], args: Any, message: str, type_name: str) -> BaseException:
    """The class called with its stored args when that works; else built without its
    __init__ (whose signature is unknown to us) and given the message."""
    if isinstance(args, list):
        try:
            exc = cls(*args)
            exc.__dq_args__ = tuple(args)  # type: ignore[attr-defined]
            return exc
        except Exception:
            pass
    exc = cls.__new__(cls)
    try:
        BaseException.__init__(exc, message)
    except TypeError:
        return StoredError(message, type_name)
    return exc


def error_from_dict(data: dict[str, Any]) -> BaseException:
    """Rebuild an error of the same type when the class can be imported."""
    type_name = str(data.get("type") or "builtins.Exception")
    message = str(data.get("message", ""))
    cause = error_from_dict(data["cause"]) if data.get("cause") else None
    cls = _load_class(type_name)
    exc: BaseException
    if cls is None or issubclass(cls, pydantic.ValidationError):
        exc = StoredError(message, type_name)
    elif cls in (JobError, ValidationError):
        exc = cls(message, cause)
    elif cls is CancelledError:
        exc = CancelledError(message, data.get("reason"))
    else:
        exc = _rebuild(cls, data.get("args"), message, type_name)
        if cause is not None and not hasattr(exc, "cause"):
            exc.__cause__ = cause
    exc.__dq_traceback__ = data.get("traceback")  # type: ignore[attr-defined]
    return exc
