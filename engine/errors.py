"""One error root, a must-not-catch tier, and a stored form that round-trips."""

from __future__ import annotations

import builtins
import json
import sys
import traceback as tb
from typing import TYPE_CHECKING, Any

import pydantic

from .text import scrub

if TYPE_CHECKING:
    from .storage.base import ExecutionRecord


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


class StoredError(JobError):
    """An error whose class is not rebuilt from storage (unknown, or not allowed: see
    `error_from_dict`): its type name, message and traceback, as text."""

    def __init__(self, message: str, type_name: str, traceback: str | None = None) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.traceback = traceback


class Interrupt(BaseException):
    """Unwinds a handler without failing it (suspend, pause, cancel, shutdown).

    A BaseException so that `except Exception` in user code cannot swallow it.
    """

    def __init__(self, kind: str, reason: str | None = None) -> None:
        super().__init__(kind)
        self.kind = kind
        self.reason = reason


#: Modules whose exception classes stored errors may name, besides builtins and dq's
#: own: the modules that define jobs (and thread functions), registered as they are
#: defined. Only modules already imported are looked in: stored data never imports.
_ERROR_MODULES: set[str] = set()
_DQ_PACKAGE = __name__.rsplit(".", 2)[0] + "."


def allow_error_module(module: str) -> None:
    """Let stored errors name classes of `module` (a job's or thread function's module)."""
    _ERROR_MODULES.add(module)


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}"


def _json_or_none(value: Any) -> Any:
    try:
        json.dumps(value, ensure_ascii=False).encode()  # UnicodeEncodeError is a ValueError
    except (TypeError, ValueError):
        return None
    return value


def error_to_dict(exc: BaseException) -> dict[str, Any]:
    """The stored form of an error: type, message, traceback, args and attributes that
    serialise to JSON, cause chain.

    An error cannot be refused like a bad input (it is what happened), so its text
    is made encodable: a lone surrogate becomes U+FFFD (see text.py); args and
    attributes that cannot be encoded are left out like those that do not serialise."""
    stored_tb = getattr(exc, "__dq_traceback__", None)
    stored = isinstance(exc, StoredError)
    data: dict[str, Any] = {
        "type": exc.type_name if isinstance(exc, StoredError) else _type_name(exc),
        "message": scrub(str(exc)),
        "traceback": scrub(
            stored_tb if stored_tb is not None else "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
        ),
    }
    args = _json_or_none(list(exc.args))
    if args:
        data["args"] = args
    attrs = {
        k: v for k, v in getattr(exc, "__dict__", {}).items()
        if not k.startswith("_") and not isinstance(v, BaseException) and _json_or_none([v]) is not None
    }  # fmt: skip
    if attrs and not stored:
        data["attrs"] = attrs
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        data["cause"] = error_to_dict(cause)
    if isinstance(exc, CancelledError) and exc.reason is not None:
        data["reason"] = scrub(exc.reason) if isinstance(exc.reason, str) else exc.reason
    return data


def _allowed_class(type_name: str) -> type[BaseException] | None:
    """The class `type_name` names if it is a builtin, dq's, or defined in (or imported
    into) a registered module that is already loaded; never imports anything."""
    module_name, _, qualname = type_name.rpartition(".")
    if module_name == "builtins":
        obj = getattr(builtins, qualname, None)
        return obj if isinstance(obj, type) and issubclass(obj, BaseException) else None
    if not (module_name.startswith(_DQ_PACKAGE) or module_name in _ERROR_MODULES or _imported_by_jobs(module_name)):
        return None
    obj = sys.modules.get(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and issubclass(obj, BaseException)) or issubclass(obj, pydantic.ValidationError):
        return None
    return obj


def _imported_by_jobs(module_name: str) -> bool:
    """Whether a jobs' module imported a class of `module_name` (`from x import Error`)."""
    for name in list(_ERROR_MODULES):
        module = sys.modules.get(name)
        for value in list(vars(module).values()) if module is not None else ():
            if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == module_name:
                return True
    return False


def _rebuild(cls: type[BaseException], data: dict[str, Any], message: str) -> BaseException | None:
    """An instance of `cls` with the stored args and attributes. A builtin is called
    (its signature is known); any other class is made without calling its __init__,
    whose signature is unknown here: calling it with the stored args would run the
    message through it a second time."""
    args = data.get("args")
    if not isinstance(args, list):
        args = [message] if message else []
    if cls.__module__ == "builtins":
        try:
            return cls(*args)
        except Exception:
            pass
    try:
        exc = cls.__new__(cls, *args)
        BaseException.__init__(exc, *args)
    except Exception:
        return None
    attrs = data.get("attrs")
    if isinstance(attrs, dict) and hasattr(exc, "__dict__"):
        exc.__dict__.update({k: v for k, v in attrs.items() if isinstance(k, str) and not k.startswith("_")})
    return exc


def error_from_dict(data: dict[str, Any]) -> BaseException:
    """Rebuild a stored error as the same type with the same message and attributes,
    when its class is allowed (see `_allowed_class`); otherwise a `StoredError` (a
    `JobError`) with its type name, message and traceback as text."""
    type_name = str(data.get("type") or "builtins.Exception")
    message = str(data.get("message", ""))
    traceback = data.get("traceback")
    cause = error_from_dict(data["cause"]) if isinstance(data.get("cause"), dict) else None
    cls = _allowed_class(type_name)
    exc = _rebuild(cls, data, message) if cls is not None else None
    if exc is None:
        exc = StoredError(message, type_name, traceback if isinstance(traceback, str) else None)
    if cause is not None:
        if isinstance(exc, JobError | ValidationError):
            exc.cause = cause
        else:
            exc.__cause__ = cause
    if isinstance(exc, CancelledError):
        exc.reason = data.get("reason")
    exc.__dq_traceback__ = traceback  # type: ignore[attr-defined]
    return exc


def job_error(rec: ExecutionRecord) -> BaseException:
    """What `result()` raises for a failed or cancelled execution."""
    if rec.status == "cancelled":
        reason = (rec.error or {}).get("reason") if rec.error else None
        return CancelledError(f"execution {rec.id} of job {rec.job_name!r} was cancelled", reason)
    cause = error_from_dict(rec.error) if rec.error else None
    return JobError(f"job {rec.job_name!r} failed: {cause}", cause)
