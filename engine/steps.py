"""The steps: run, sleep, child jobs, waits. Each is a checkpoint with a key.

Keys: a step's name, `name#2`, `name#3`... for repeats in call order, or
`#<call index>` for `run(fn)` without a name. Before a step runs, its key is
looked up in the history: a completed step returns its stored result; a step
that failed in this same job attempt raises its stored error again; anything
else runs (again).
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import inspect
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from . import logs
from .backoff import DEFAULT_RETRY, backoff_attempts, make_backoff, make_retry
from .context import EXECUTION, ExecutionContext, current
from .durations import parse_duration
from .errors import (
    Interrupt,
    NonDeterminismError,
    TimeoutError,
    error_from_dict,
    error_to_dict,
    job_error,
)
from .event_schema import EventKind
from .execution import Execution
from .idempotency import take
from .ids import now_ms
from .limits import Limit
from .serialize import dump_step, load_step, load_typed, validate_in
from .storage.base import Batch, EventRecord, StepRecord
from .transitions import LOST, enter_step, step_done

if TYPE_CHECKING:
    from .job import Job

T = TypeVar("T")
_DEFAULT_BACKOFF = make_backoff(None)
# Module globals: an enum member's lookup costs ~0.2 µs, on every step.
_STEP_START, _STEP_SUCCESS, _STEP_FAILURE = EventKind.STEP_START, EventKind.STEP_SUCCESS, EventKind.STEP_FAILURE
_ENGINE = __name__.rsplit(".", 1)[0] + "."
_CO_COROUTINE = inspect.CO_COROUTINE


def _caller_line() -> int | None:
    """The line of the first frame outside the engine: where the handler called the step."""
    frame = sys._getframe(2)
    while frame is not None:
        if not frame.f_globals.get("__name__", "").startswith(_ENGINE):
            return frame.f_lineno
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _boundary(ctx: ExecutionContext) -> None:
    """Pause, cancel and shutdown requests take effect here, between steps."""
    if ctx.control is not None:
        raise ctx.control.interrupt()


def _replayed(ctx: ExecutionContext, key: str, kind: str, name: str) -> StepRecord | None:
    rec = ctx.history.get(key)
    if rec is not None and (rec.kind != kind or rec.name != name):
        raise NonDeterminismError(
            f"execution {ctx.id}: step {key!r} was recorded as {rec.kind} {rec.name!r} "
            f"but this run calls {kind} {name!r} there; the handler's code between steps "
            "must be deterministic"
        )
    return rec


async def _park(ctx: ExecutionContext, awaitable: Awaitable[T]) -> T:
    """Await at a point where pause and shutdown may interrupt at once (nothing half-done)."""
    ctx.parked += 1
    try:
        return await awaitable
    finally:
        ctx.parked -= 1


def _event(ctx: ExecutionContext, type: EventKind, data: dict[str, Any], at: int) -> EventRecord:
    return EventRecord(ctx.id, ctx.job.name, type, data, at)


async def _fire(ctx: ExecutionContext, event: str, step: StepRecord, **extra: Any) -> None:
    hooks = ctx.owner.hooks
    if hooks.wanted(ctx.job, event):
        info = {"key": step.key, "name": step.name, "kind": step.kind, "attempt": step.attempt,
                "status": step.status, "event": event, **extra}  # fmt: skip
        typed = load_typed(ctx.job.options.input, ctx.record.input)
        await hooks.fire(ctx.job, event, ctx.id, {"input": typed, "step": info})


def _new_step(ctx: ExecutionContext, key: str, name: str, kind: str, seq: int, line: int | None,
              prior: StepRecord | None, **fields: Any) -> StepRecord:  # fmt: skip
    return StepRecord(
        ctx.id, key, name, kind, "running", started_at=now_ms(), job_attempt=ctx.attempt,
        seq=prior.seq if prior is not None else seq, line=line, **fields,
    )  # fmt: skip


def run(
    name: str | Callable[[], Any],
    fn: Callable[[], Any] | None = None,
    /,
    *,
    retry: int | None = None,
    backoff: Any = None,
    timeout: Any = None,
    concurrency: int | None = None,
) -> Coroutine[Any, Any, Any]:
    """Run `fn` once as a durable step; its result is stored before the handler goes on.

    A plain function returning the step's coroutine (no frame of its own on every
    step): the key is taken, and the caller's line read, where `run` is called,
    also when the coroutine runs in another task (`asyncio.gather`)."""
    ctx = EXECUTION.get()
    if ctx is None:
        ctx = current()  # raises: not inside a handler
    if fn is None and callable(name):
        fn, label = name, getattr(name, "__qualname__", "step")
        ctx.calls += 1
        key, seq = f"#{ctx.calls}", ctx.calls
    elif isinstance(name, str) and callable(fn):
        if not name or "#" in name:
            raise ValueError(f"run: step names must be non-empty and contain no '#', got {name!r}")
        label = name
        key, seq = ctx.next_key(name)
    else:
        raise TypeError("run: expected run(name, fn) or run(fn) with a callable fn")
    # The defaults skip option parsing (and its messages): this is every step's path.
    if backoff is None:
        retries = DEFAULT_RETRY if retry is None else make_retry(retry, f"step {label!r} retry")(None)
        backoff_for = _DEFAULT_BACKOFF
    else:
        attempts = backoff_attempts(backoff, f"step {label!r} backoff")
        retries = make_retry(retry, f"step {label!r} retry", attempts)(None)
        backoff_for = make_backoff(backoff, f"step {label!r} backoff")
    timeout_ms = parse_duration(timeout, f"step {label!r} timeout") if timeout is not None else None
    if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1):
        raise ValueError(f"step {label!r} concurrency: expected an int >= 1, got {concurrency!r}")
    frame = sys._getframe(1)  # the caller (usually the handler): `_caller_line` inline
    line = frame.f_lineno if not frame.f_globals.get("__name__", "").startswith(_ENGINE) else _caller_line()
    return execute_step(
        ctx, "run", key, label, seq, line, fn,
        retries=retries, backoff_for=backoff_for, timeout_ms=timeout_ms, concurrency=concurrency,
    )  # fmt: skip


@asynccontextmanager
async def _step_slot(ctx: ExecutionContext, key: str, label: str, limit: int) -> AsyncIterator[None]:
    """`run(..., concurrency=N)`: at most N of this step at once across all executions and processes."""
    owner = ctx.owner
    slot = Limit(f"step:{ctx.job.name}:{label}", limit)
    holder = f"{ctx.id}|{key}"
    await _park(ctx, owner.acquire_slot(slot, holder, ctx.record.priority))
    try:
        yield
    except BaseException:
        await asyncio.shield(owner.give_back_slot(slot, holder))
        raise
    # fn returned: the slot goes on in the transaction that stores the step (queued
    # right after this), not in one of its own before it.
    owner.give_back_slot_nowait(slot, holder)


async def execute_step(
    ctx: ExecutionContext,
    kind: str,
    key: str,
    label: str,
    seq: int,
    line: int | None,
    fn: Callable[[], Any],
    *,
    retries: int,
    backoff_for: Callable[[int, Any], int],
    timeout_ms: int | None,
    concurrency: int | None = None,
) -> Any:
    """Run `fn` as step `key` with replay, retries, timeout, records and events."""
    if ctx.control is not None:  # `_boundary`, inline: every step's path
        raise ctx.control.interrupt()
    job_attempt = ctx.record.retry_count
    prior = _replayed(ctx, key, kind, label) if ctx.history else None
    attempt = 1
    if prior is not None:
        if prior.status == "completed":
            return load_step(prior.output)
        if prior.job_attempt == job_attempt:
            if prior.status == "failed":
                raise error_from_dict(prior.error or {})
            if prior.status == "retrying":
                attempt = prior.attempt + 1
        seq = prior.seq
    owner, job_name = ctx.owner, ctx.job.name  # the records built inline below: every step's path
    step = StepRecord(ctx.id, key, label, kind, "running", attempt, None, None, now_ms(), None, job_attempt, seq, line)
    while True:
        # The stored record's current_step is written when the execution suspends
        # or ends, not per step (an UPDATE per step): while it runs, the running
        # step record and the step_start event say where it is.
        ctx.record.current_step = key
        owner.record_step(
            ctx,
            StepRecord(ctx.id, key, label, kind, "running", attempt, None, None, step.started_at, None, step.job_attempt, step.seq, line),
            EventRecord(ctx.id, job_name, _STEP_START, {"key": key, "name": label, "kind": kind, "attempt": attempt, "line": line}, step.started_at),
        )  # fmt: skip
        if owner.hooks.any_for(ctx.job):
            await _fire(ctx, "step_start", step)
        try:
            step_token = logs.STEP.set(key)  # log() lines written by fn belong to this step
            try:
                if concurrency is not None:
                    async with _step_slot(ctx, key, label, concurrency):
                        value = await _call(fn, timeout_ms, key)
                elif timeout_ms is None:
                    value = await _start(fn)
                else:
                    value = await _call(fn, timeout_ms, key)
            finally:
                logs.STEP.reset(step_token)
            stored = dump_step(value, key)
        except Exception as exc:
            will_retry = attempt <= retries and not isinstance(exc, NonDeterminismError)
            now = now_ms()
            err = error_to_dict(exc)
            step.status, step.error, step.completed_at = ("retrying" if will_retry else "failed"), err, now
            await owner.commit_for(ctx, step_done(
                ctx.holder, replace(step),
                _event(ctx, _STEP_FAILURE, {"key": key, "name": label, "kind": kind, "attempt": attempt, "error": err, "will_retry": will_retry, "duration_ms": now - step.started_at}, now),
            ))  # fmt: skip
            await _fire(ctx, "step_failure", step, error=exc)
            if not will_retry:
                raise
            await _park(ctx, asyncio.sleep(backoff_for(attempt, None) / 1000))
            _boundary(ctx)
            attempt += 1
            step.status, step.attempt, step.error, step.completed_at = "running", attempt, None, None
            step.started_at = now_ms()
            continue
        now = now_ms()
        step.status, step.output, step.completed_at = "completed", stored, now
        await owner.commit_step(
            ctx, step,
            EventRecord(ctx.id, job_name, _STEP_SUCCESS, {"key": key, "name": label, "kind": kind, "attempt": attempt, "duration_ms": now - step.started_at}, now),
        )  # fmt: skip
        ctx.history[key] = step
        if owner.hooks.any_for(ctx.job):
            await _fire(ctx, "step_success", step)
        return value


async def _call(fn: Callable[[], Any], timeout_ms: int | None, key: str) -> Any:
    if timeout_ms is None:
        return await _start(fn)
    scope = asyncio.timeout(timeout_ms / 1000)
    try:
        async with scope:
            return await _start(fn)
    except builtins.TimeoutError as exc:
        if scope.expired() and not isinstance(exc, TimeoutError):
            raise TimeoutError(f"step {key!r} timed out after {timeout_ms} ms") from None
        raise


def _start(fn: Callable[[], Any]) -> Awaitable[Any]:
    """The step's work. An async `fn` runs on the loop (its coroutine is returned as
    is: no extra frame per step). A sync one runs in the default thread pool (with
    the caller's contextvars), never on the loop: a blocking call would freeze every
    execution, the dashboard and lease renewal."""
    # The common case (an `async def`) tested inline, without getattr calls: this
    # runs on every step.
    try:
        plain_async = fn.__code__.co_flags & _CO_COROUTINE
    except AttributeError:  # a partial, a callable object
        plain_async = 0
    if plain_async or _is_async(fn):
        result: Awaitable[Any] = fn()
        return result
    return _in_thread(fn)


async def _in_thread(fn: Callable[[], Any]) -> Any:
    # What it returns is awaited on the loop when awaitable (`lambda: client.get(url)`).
    # Cancelled meanwhile (a timeout, a cancel), a coroutine it made is closed, by
    # whichever side sees the other's mark last, never left to warn "never awaited".
    made: list[Any] = []
    dropped: list[bool] = []

    def call() -> Any:
        value = fn()
        made.append(value)
        if dropped and inspect.iscoroutine(value):
            value.close()
        return value

    try:
        value = await asyncio.to_thread(call)
    except asyncio.CancelledError:
        dropped.append(True)
        if made and inspect.iscoroutine(made[0]):
            made[0].close()
        raise
    return await value if inspect.isawaitable(value) else value


def _is_async(fn: Callable[[], Any]) -> bool:
    """Whether `fn` is an async callable that is not a plain `async def` (`_start`
    tests that case itself): a wrapped coroutine function, an async `__call__`."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


async def sleep(duration: Any) -> None:
    """A durable sleep: the wake time is stored; a long sleep frees the worker and survives restarts."""
    ctx = current()
    ms = parse_duration(duration, "sleep")
    key, seq = ctx.next_key("sleep")
    line = _caller_line()
    _boundary(ctx)
    prior = _replayed(ctx, key, "sleep", "sleep")
    if prior is not None and prior.status == "completed":
        return
    owner = ctx.owner
    ctx.record.current_step = key
    if prior is not None and isinstance(prior.output, Mapping):
        step, until = prior, int(prior.output["until"])
    else:
        step = _new_step(ctx, key, "sleep", "sleep", seq, line, prior)
        until = step.started_at + ms
        step.output = {"until": until}
        await owner.commit_for(ctx, Batch(
            updates=[enter_step(ctx.holder, key)],
            steps=[replace(step)],
            events=[_event(ctx, EventKind.SLEEP, {"key": key, "until": until, "line": line}, step.started_at)],
        ))  # fmt: skip
    remaining = until - now_ms()
    if remaining > owner.short_sleep_ms:
        if await owner.suspend(ctx, "waiting", wait_reason="sleep", run_at=until):
            raise Interrupt("suspend")
        raise LOST.interrupt()
    if remaining > 0:
        await _park(ctx, asyncio.sleep(remaining / 1000))
    now = now_ms()
    step.status, step.completed_at = "completed", now
    await owner.commit_for(ctx, step_done(ctx.holder, step, _event(ctx, EventKind.WAKE, {"key": key}, now)))
    ctx.history[key] = step


def _digest(job: Job, input: Any) -> str:
    try:
        _typed, stored = validate_in(job.options.input, input, f"input of job {job.name!r}")
    except Exception:
        return "?"  # the call fails validation right after; the key does not matter
    text = json.dumps(stored, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:8]


async def child_step(
    ctx: ExecutionContext, job: Job, input: Any, *, wait: bool, line: int | None = None,
    idempotency_key: str | None = None,
) -> Any:
    """`job.run`/`job.start` inside a handler: the child is created once, in the same
    transaction as the step that records its id."""
    owner = ctx.owner
    owner.check_registered(job)
    kind = "child" if wait else "start"
    # Keyed by job and input: branches of an asyncio.gather may call children in a
    # different order on replay; calls with equal inputs are interchangeable.
    key, seq = ctx.next_key(f"{job.name}({_digest(job, input)})")
    _boundary(ctx)
    prior = _replayed(ctx, key, kind, job.name)
    child_id: str | None = None
    if prior is not None and isinstance(prior.output, Mapping):
        if prior.status == "completed":
            if not wait:
                rec = await ctx.owner.get_execution(prior.output["child_id"])
                if rec is not None:
                    return Execution(ctx.queue, rec)
            else:
                return load_typed(job.options.output, prior.output.get("output"))
        elif prior.job_attempt == ctx.attempt and prior.status == "failed":
            raise error_from_dict(prior.error or {})
        elif prior.status == "running":
            child_id = prior.output["child_id"]
    step: StepRecord
    if child_id is None:
        child = owner.new_record(job, input, parent=ctx)
        for _ in range(50):
            # With an idempotency key, the step records the key's holder when there is one.
            state, first = None, None
            if idempotency_key is not None:
                state, first = await owner.guard(ctx, owner.idempotency_holder(job.name, idempotency_key))
            target = first if first is not None else child
            step = _new_step(ctx, key, job.name, kind, seq, line, prior, output={"child_id": target.id})
            events = [_event(ctx, _STEP_START, {"key": key, "name": job.name, "kind": kind, "attempt": 1, "line": line, "child_id": target.id}, step.started_at)]
            if not wait:
                step.status, step.completed_at = "completed", step.started_at
                events.append(_event(ctx, _STEP_SUCCESS, {"key": key, "name": job.name, "kind": kind, "attempt": 1, "duration_ms": 0, "child_id": target.id}, step.started_at))
            batch = Batch(
                updates=[enter_step(ctx.holder, key)],
                steps=[replace(step)], events=events, fences={ctx.id: ctx.record.token},
            )  # fmt: skip
            if first is not None:
                result = await owner.commit_for(ctx, batch)
            else:
                if idempotency_key is not None:
                    take(batch, child, idempotency_key, state, job.idempotency_ttl_ms)
                result = await owner.guard(ctx, owner.create(job, child, batch))
                if ctx.id in result.refused:
                    await owner.cancel(child.id, "parent lost its lease before recording the child")
                    raise LOST.interrupt()
            if not result.conflict:
                break
        else:
            raise RuntimeError(f"idempotency key {idempotency_key!r} of job {job.name!r} kept changing")
        if not wait:
            ctx.history[key] = step
            return Execution(ctx.queue, target)
        child_id = target.id
    else:
        assert prior is not None
        step = prior
    ctx.record.current_step = key
    done = await _park(ctx, owner.guard(ctx, owner.wait_terminal(child_id)))
    now = now_ms()
    if done.status == "completed":
        step.status, step.completed_at = "completed", now
        step.output = {"child_id": child_id, "output": done.output}
        await owner.commit_for(ctx, step_done(
            ctx.holder, step,
            _event(ctx, _STEP_SUCCESS, {"key": key, "name": job.name, "kind": kind, "attempt": step.attempt, "duration_ms": now - step.started_at, "child_id": child_id}, now),
        ))  # fmt: skip
        ctx.history[key] = step
        return load_typed(job.options.output, done.output)
    exc = job_error(done)
    err = error_to_dict(exc)
    step.status, step.error, step.completed_at = "failed", err, now
    await owner.commit_for(ctx, step_done(
        ctx.holder, step,
        _event(ctx, _STEP_FAILURE, {"key": key, "name": job.name, "kind": kind, "attempt": step.attempt, "error": err, "will_retry": False, "child_id": child_id}, now),
    ))  # fmt: skip
    raise exc
