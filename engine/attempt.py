"""The executor's side of one attempt: the handler's call with its replay context and
timeout, and what its outcome means (complete, retry, fail, cancel, pause, release).
Every state change goes to the state owner through `seam.StateOwner`."""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from .context import EXECUTION
from .errors import CancelledError, Interrupt, NonDeterminismError, TimeoutError, error_to_dict
from .event_schema import EventKind
from .ids import now_ms
from .seam import StateOwner
from .serialize import validate_in
from .transitions import TIMEOUT, cancel_running, complete, fail
from .transitions import retry as retry_transition

if TYPE_CHECKING:
    from .context import ExecutionContext
    from .job import Job

log = logging.getLogger("dq")

_START = EventKind.START  # a module global: read on every execution
#: Attempt timeouts longer than this are enforced by the watchdog (1 s precision).
_WATCHDOG_MIN_MS = 30_000


def _resumed(steps: Iterable[Any], retry_count: int) -> bool:
    """Whether this attempt recorded steps already (a resume). Not inline in `run`: a
    generator there would make `rec` a cell of every execution's frame."""
    return any(s.job_attempt == retry_count for s in steps)


async def run(owner: StateOwner, ctx: ExecutionContext, typed_input: Any) -> None:
    """Call the handler (admitted and claimed) and hand its output to the owner. An
    exception leaves here for `attempt_failed`, an Interrupt for `interrupted`."""
    job, rec = ctx.job, ctx.record
    resumed = bool(ctx.history) and _resumed(ctx.history.values(), rec.retry_count)
    attempt_no = rec.retry_count + 1
    owner.send(ctx, _START, {"attempt": attempt_no, "resumed": resumed, "worker": owner.worker_id,
                             "source": owner.source_fingerprint(job)})  # fmt: skip
    if not resumed and owner.hooks.any_for(job):
        await owner.hooks.fire(job, "start", rec.id, {"input": typed_input, "attempt": attempt_no})
    if job.timeout_ms > _WATCHDOG_MIN_MS and job.is_async:
        # The common case, inline (no coroutine of ours between this one and the
        # handler's, on every execution): an async handler under a long timeout
        # (the default is a day), which one watchdog enforces for all executions
        # instead of a timer per execution. Otherwise `call_handler`.
        etoken = EXECUTION.set(ctx)
        ctx.deadline = time.monotonic() + job.timeout_ms / 1000
        try:
            output = await (job.handler(typed_input) if job.takes_input else job.handler())
        except asyncio.CancelledError:
            if ctx.control != TIMEOUT:
                raise
            raise _watchdog_timeout(ctx) from None
        finally:
            ctx.deadline = None
            EXECUTION.reset(etoken)
    else:
        output = await call_handler(ctx, typed_input)
    _typed_out, stored_out = validate_in(job.options.output, output, job.output_what)
    change = complete(ctx.holder, output=stored_out, current_step=rec.current_step, now=now_ms())
    await owner.end(ctx, change, typed_input)


def _watchdog_timeout(ctx: ExecutionContext) -> TimeoutError:
    """The watchdog cancelled this attempt at its deadline: take back that
    cancellation and report the timeout instead."""
    ctx.control = None
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    return TimeoutError(f"job {ctx.job.name!r} attempt timed out after {ctx.job.options.timeout}")


async def call_handler(ctx: ExecutionContext, typed_input: Any) -> Any:
    """The handler's call with its replay context and timeout (`run` inlines the
    common case: an async handler under the watchdog)."""
    job = ctx.job
    args = (typed_input,) if job.takes_input else ()
    etoken = EXECUTION.set(ctx)
    try:
        if job.timeout_ms > _WATCHDOG_MIN_MS:
            ctx.deadline = time.monotonic() + job.timeout_ms / 1000
            try:
                return await invoke(job, args)
            except asyncio.CancelledError:
                if ctx.control != TIMEOUT:
                    raise
                raise _watchdog_timeout(ctx) from None
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
        EXECUTION.reset(etoken)

def invoke(job: Job, args: tuple[Any, ...]) -> Awaitable[Any]:
    """The handler's awaitable: an async handler's own coroutine (no frame of ours in
    between, on every execution), a sync one's run in the default thread pool."""
    if job.is_async:
        coro: Awaitable[Any] = job.handler(*args)
        return coro
    return asyncio.to_thread(job.handler, *args)

async def watchdog(running: Callable[[], Iterable[ExecutionContext]]) -> None:
    """Time out attempts past their (long) deadline (`time.monotonic`)."""
    while True:
        await asyncio.sleep(1.0)
        now = time.monotonic()
        for ctx in list(running()):
            if ctx.deadline is not None and now > ctx.deadline and not ctx.finishing and ctx.control is None:
                ctx.control = TIMEOUT
                if ctx.task is not None:
                    ctx.task.cancel()

async def attempt_failed(owner: StateOwner, ctx: ExecutionContext, typed_input: Any, exc: Exception) -> None:
    """Retry after the job's backoff, or fail for good (retries exhausted, nondeterminism)."""
    job, rec = ctx.job, ctx.record
    try:
        retries = job.retry_for(typed_input)
    except Exception as retry_exc:
        log.warning("dq: retry(input) of job %r raised %r; not retrying", job.name, retry_exc)
        retries = 0
    if isinstance(exc, NonDeterminismError) or rec.retry_count >= retries:
        err = error_to_dict(exc)
        change = fail(ctx.holder, error=err, attempt=rec.retry_count + 1, current_step=rec.current_step, now=now_ms())
        await owner.end(ctx, change, typed_input, error=exc)
        return
    retry = rec.retry_count + 1
    try:
        delay = job.backoff_for(retry, typed_input)
    except Exception as backoff_exc:
        log.warning("dq: backoff of job %r raised %r; retrying at once", job.name, backoff_exc)
        delay = 0
    now = now_ms()
    change = retry_transition(ctx.holder, error=error_to_dict(exc), retry_count=retry, run_at=now + delay, now=now)
    await owner.end(ctx, change, typed_input, error=exc)

async def interrupted(owner: StateOwner, ctx: ExecutionContext, intr: Interrupt, typed_input: Any) -> None:
    """What an Interrupt means: nothing more to write (suspended, lost, storage gone),
    cancelled, paused, or released at shutdown."""
    kind = intr.kind
    if kind in ("suspend", "lost", "unavailable"):
        return
    if kind == "cancel":
        error = CancelledError(f"execution {ctx.id} was cancelled", intr.reason)
        rec = ctx.record
        change = cancel_running(
            ctx.holder, error=error_to_dict(error), reason=intr.reason, current_step=rec.current_step, now=now_ms()
        )  # fmt: skip
        await owner.end(ctx, change, typed_input, error=error, reason=intr.reason)
    elif kind == "pause":
        await owner.suspend(ctx, "paused", wait_reason="paused", event=(EventKind.PAUSE, {}))
        await owner.hooks.fire(ctx.job, "pause", ctx.id, {"input": typed_input})
    elif kind == "shutdown":
        await owner.suspend(ctx, "pending", wait_reason="released", event=(EventKind.RELEASED, {"reason": "shutdown"}))
