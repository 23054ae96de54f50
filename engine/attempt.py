"""One attempt of an execution: the handler's call with its timeout, and what its
failure or interruption means (retry, fail, cancel, pause, release)."""

from __future__ import annotations

import asyncio
import builtins
import logging
from typing import TYPE_CHECKING, Any

from . import context
from .errors import CancelledError, Interrupt, NonDeterminismError, TimeoutError, error_to_dict
from .ids import now_ms
from .transitions import TIMEOUT
from .transitions import retry as retry_transition

if TYPE_CHECKING:
    from .context import ExecutionContext
    from .job import Job
    from .runtime import Runtime

log = logging.getLogger("dq")

#: Attempt timeouts longer than this are enforced by the watchdog (1 s precision).
_WATCHDOG_MIN_MS = 30_000


async def call_handler(runtime: Runtime, ctx: ExecutionContext, typed_input: Any) -> Any:
    job = ctx.job
    args = (typed_input,) if job.takes_input else ()
    qtoken = context.set_queue(runtime.queue)
    etoken = context.set_execution(ctx)
    try:
        if job.timeout_ms > _WATCHDOG_MIN_MS:
            # Long timeouts (the default is a day) are enforced by one watchdog
            # for all executions instead of a timer per execution.
            ctx.deadline = asyncio.get_running_loop().time() + job.timeout_ms / 1000
            try:
                return await invoke(job, args)
            except asyncio.CancelledError:
                if ctx.control != TIMEOUT:
                    raise
                ctx.control = None
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                raise TimeoutError(f"job {job.name!r} attempt timed out after {job.options.timeout}") from None
        scope = asyncio.timeout(job.timeout_ms / 1000)
        try:
            async with scope:
                return await invoke(job, args)
        except builtins.TimeoutError as exc:
            if scope.expired() and not isinstance(exc, TimeoutError):
                raise TimeoutError(f"job {job.name!r} attempt timed out after {job.options.timeout}") from None
            raise
    finally:
        ctx.deadline = None
        context.reset_execution(etoken)
        context.reset_queue(qtoken)

async def invoke(job: Job, args: tuple[Any, ...]) -> Any:
    if job.is_async:
        return await job.handler(*args)
    return await asyncio.to_thread(job.handler, *args)

async def watchdog(runtime: Runtime) -> None:
    """Time out attempts past their (long) deadline."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(1.0)
        now = loop.time()
        for ctx in list(runtime.contexts.values()):
            if ctx.deadline is not None and now > ctx.deadline and not ctx.finishing and ctx.control is None:
                ctx.control = TIMEOUT
                if ctx.task is not None:
                    ctx.task.cancel()

async def attempt_failed(runtime: Runtime, ctx: ExecutionContext, typed_input: Any, exc: Exception) -> None:
    job, rec = ctx.job, ctx.record
    try:
        retries = job.retry_for(typed_input)
    except Exception as retry_exc:
        log.warning("dq: retry(input) of job %r raised %r; not retrying", job.name, retry_exc)
        retries = 0
    if isinstance(exc, NonDeterminismError) or rec.retry_count >= retries:
        await runtime._finish(ctx, "failed", typed_input, error=exc)
        return
    retry = rec.retry_count + 1
    try:
        delay = job.backoff_for(retry, typed_input)
    except Exception as backoff_exc:
        log.warning("dq: backoff of job %r raised %r; retrying at once", job.name, backoff_exc)
        delay = 0
    now = now_ms()
    ctx.finishing = True
    change = retry_transition(ctx.holder, error=error_to_dict(exc), retry_count=retry, run_at=now + delay, now=now)
    try:
        await runtime.commit_for(ctx, change.batch())
    except Interrupt:
        return
    if runtime.timer is not None:
        runtime.timer.at(now + delay)
    await runtime.hooks.fire(job, "error", rec.id, {"input": typed_input, "error": exc, "attempt": retry})

async def interrupted(runtime: Runtime, ctx: ExecutionContext, intr: Interrupt, typed_input: Any) -> None:
    kind = intr.kind
    if kind in ("suspend", "lost", "unavailable"):
        return
    if kind == "cancel":
        error = CancelledError(f"execution {ctx.id} was cancelled", intr.reason)
        await runtime._finish(ctx, "cancelled", typed_input, error=error, reason=intr.reason)
    elif kind == "pause":
        await runtime.suspend(ctx, "paused", wait_reason="paused", event=("pause", {}))
        await runtime.hooks.fire(ctx.job, "pause", ctx.id, {"input": typed_input})
    elif kind == "shutdown":
        await runtime.suspend(ctx, "pending", wait_reason="released", event=("released", {"reason": "shutdown"}))
