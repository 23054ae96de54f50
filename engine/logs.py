"""`log(message, **fields)`: a line in the execution's trace and on `dq.job.<name>`.

A line is a `log` event of the execution, tagged with the step it was written
in (`key`; None in handler code between steps) and the job attempt, so the
dashboard shows it beside its step and in the event log, in write order
(events are sequenced on commit, and a step's lines are sent before its result).

Replay calls the handler again from the top: lines written in handler code
while the replay passes over steps already recorded were written by the run
that recorded them, and are skipped (the trace and the Python logger alike).
A step body that runs again (a retry, or a step a crash interrupted) writes
its lines again: that is a new attempt of the step.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextvars import ContextVar
from typing import Any

from .context import ExecutionContext, current_or_none
from .errors import DqError
from .event_schema import EventKind

#: The step whose function is running in this task (set by execute_step around its call).
STEP: ContextVar[str | None] = ContextVar("dq_log_step", default=None)
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def log(message: Any, /, **fields: Any) -> None:
    """Write `message` (with JSON-able `fields`) to the execution's trace, beside the
    step it is called in, and to the Python logger `dq.job.<job name>`. A `level`
    field (debug, info, warning, error) sets the Python logging level; default info."""
    ctx = current_or_none()
    if ctx is None:
        raise DqError("log() can only be called inside a job handler or one of its steps")
    key = STEP.get()
    if key is None and _replaying(ctx):
        return
    write(ctx, str(message), fields, key)


def write(ctx: ExecutionContext, message: str, fields: dict[str, Any], key: str | None) -> None:
    """Store one line and forward it to Python logging (also used by `thread`'s ctx.logger)."""
    safe = {str(k): _json_safe(v) for k, v in fields.items()}
    data: dict[str, Any] = {"key": key, "message": message}
    if safe:
        data["fields"] = safe
    owner = ctx.owner
    if _on_loop() or ctx.task is None:
        owner.send(ctx, EventKind.LOG, data)
    else:  # a sync handler runs in a worker thread: the committer lives on the loop
        ctx.task.get_loop().call_soon_threadsafe(owner.send, ctx, EventKind.LOG, data)
    level = _LEVELS.get(str(safe.get("level", "info")).lower(), logging.INFO)
    logger = logging.getLogger(f"dq.job.{ctx.job.name}")
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"dq_execution_id": ctx.id, "dq_step": key, "dq_fields": safe})


def _on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _replaying(ctx: ExecutionContext) -> bool:
    """Whether the handler is still passing over steps recorded by an earlier run: a
    recorded step was first called later than the handler's position now."""
    return any(s.seq > ctx.calls for s in ctx.history.values())


def _json_safe(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return repr(value)
