"""Durable waits and sends: `job.wait_for`, `pipe.wait_for`, `pipe.send` inside handlers."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .context import ExecutionContext, current
from .durations import parse_duration
from .errors import TimeoutError, error_from_dict, error_to_dict
from .event_schema import EventKind
from .ids import now_ms
from .matching import describe_match, matches
from .serialize import load_typed
from .steps import _boundary, _caller_line, _event, _new_step, _park, _replayed
from .storage.base import Batch, ExecutionQuery, PipeMessage, StepRecord

if TYPE_CHECKING:
    from .job import Job
    from .pipe import Pipe


async def wait_for_job(job: Job, match: Any, timeout: Any = None) -> Any:
    """Wait until an execution of `job` whose input matches completes after this step
    began; returns its output. Durable: the start time (and the deadline, with
    `timeout`) is stored with the step; past the deadline the step raises TimeoutError."""
    timeout_ms = _timeout_ms(timeout, f"{job.name}.wait_for")
    ctx = current()
    owner = ctx.owner
    owner.check_registered(job)
    key, seq = ctx.next_key(f"wait:{job.name}")
    line = _caller_line()
    _boundary(ctx)
    prior = _replayed(ctx, key, "wait", job.name)
    if prior is not None and prior.status == "completed" and isinstance(prior.output, Mapping):
        return load_typed(job.options.output, prior.output.get("output"))
    prior = _current_attempt(ctx, prior)
    if prior is not None and isinstance(prior.output, Mapping):
        step, since = prior, int(prior.output["since"])
    else:
        step = _new_step(ctx, key, job.name, "wait", seq, line, prior)
        since = step.started_at
        step.output = {"since": since, "deadline": since + timeout_ms if timeout_ms is not None else None,
                       "match": describe_match(match)}
        await owner.commit_for(ctx, Batch(
            steps=[replace(step)],
            events=[_event(ctx, EventKind.WAIT, {"key": key, "kind": "job", "job": job.name, "line": line, "deadline": step.output["deadline"]}, since)],
        ))  # fmt: skip
    deadline = step.output.get("deadline")
    ctx.record.current_step = key
    seen: set[str] = set()
    while True:
        found = await ctx.queue.storage.query(ExecutionQuery(
            job_names=[job.name], statuses=["completed"], completed_after=since - 1,
            completed_before=deadline + 1 if deadline is not None else None, order="oldest",
        ))  # fmt: skip
        for rec in found:
            if rec.id in seen:
                continue
            seen.add(rec.id)
            if matches(match, rec.input, load_typed(job.options.input, rec.input)):
                now = now_ms()
                step.status, step.completed_at = "completed", now
                step.output = {"since": since, "deadline": deadline, "execution_id": rec.id, "output": rec.output}
                await owner.commit_for(ctx, Batch(
                    steps=[step],
                    events=[_event(ctx, EventKind.STEP_SUCCESS, {"key": key, "name": job.name, "kind": "wait", "attempt": 1, "duration_ms": now - step.started_at}, now)],
                ))  # fmt: skip
                ctx.history[key] = step
                return load_typed(job.options.output, rec.output)
        await _wait_more(ctx, step, deadline, f"waiting for job {job.name!r}")


def _timeout_ms(timeout: Any, label: str) -> int | None:
    return parse_duration(timeout, f"{label} timeout") if timeout is not None else None


def _current_attempt(ctx: ExecutionContext, prior: StepRecord | None) -> StepRecord | None:
    """A wait that timed out raises again within the same job attempt (replay);
    a later attempt waits afresh."""
    if prior is not None and prior.status == "failed":
        if prior.job_attempt == ctx.attempt:
            raise error_from_dict(prior.error or {})
        return replace(prior, output=None)
    return prior


async def _wait_more(ctx: ExecutionContext, step: StepRecord, deadline: int | None, what: str) -> None:
    """Sleep until the next poll, or fail the step with TimeoutError at its deadline.
    The deadline is stored, so it holds across restarts: a wait resumed after it
    (nothing having matched before it) times out at once."""
    now = now_ms()
    if deadline is not None and now >= deadline:
        error = TimeoutError(f"{what} timed out at its deadline ({deadline - step.started_at} ms after it began)")
        step.status, step.completed_at, step.error = "failed", now, error_to_dict(error)
        await ctx.owner.commit_for(ctx, Batch(
            steps=[step],
            events=[_event(ctx, EventKind.STEP_FAILURE, {"key": step.key, "name": step.name, "kind": "wait", "attempt": 1, "error": step.error, "will_retry": False, "duration_ms": now - step.started_at}, now)],
        ))  # fmt: skip
        ctx.history[step.key] = step
        raise error
    delay_s = ctx.owner.poll_s
    if deadline is not None:
        delay_s = min(delay_s, (deadline - now) / 1000)
    await _park(ctx, asyncio.sleep(delay_s))
    _boundary(ctx)


async def _open_wait(ctx: ExecutionContext, key: str, seq: int, line: int | None, name: str,
                     prior: StepRecord | None, start: dict[str, Any], event: dict[str, Any],
                     timeout_ms: int | None) -> StepRecord:  # fmt: skip
    if prior is not None and isinstance(prior.output, Mapping):
        return prior
    step = _new_step(ctx, key, name, "wait", seq, line, prior, output=start)
    start["deadline"] = step.started_at + timeout_ms if timeout_ms is not None else None
    await ctx.owner.commit_for(ctx, Batch(
        steps=[replace(step)],
        events=[_event(ctx, EventKind.WAIT, {"key": key, "line": line, **event, "deadline": start["deadline"]}, step.started_at)],
    ))  # fmt: skip
    return step


async def _close_wait(ctx: ExecutionContext, step: StepRecord, output: dict[str, Any]) -> None:
    now = now_ms()
    step.status, step.completed_at, step.output = "completed", now, output
    await ctx.owner.commit_for(ctx, Batch(
        steps=[step],
        events=[_event(ctx, EventKind.STEP_SUCCESS, {"key": step.key, "name": step.name, "kind": step.kind, "attempt": 1, "duration_ms": now - step.started_at}, now)],
    ))  # fmt: skip
    ctx.history[step.key] = step


async def pipe_wait_step(pipe: Pipe, match: Any, timeout: Any = None) -> Any:
    """Wait for a message on `pipe` sent after this step began (also while this process
    was down); returns its data. The starting sequence number (and the deadline, with
    `timeout`) is stored with the step; past the deadline the step raises TimeoutError."""
    timeout_ms = _timeout_ms(timeout, f"pipe {pipe.name!r} wait_for")
    ctx = current()
    key, seq = ctx.next_key(f"wait:{pipe.name}")
    line = _caller_line()
    _boundary(ctx)
    prior = _replayed(ctx, key, "wait", pipe.name)
    if prior is not None and prior.status == "completed" and isinstance(prior.output, Mapping):
        return pipe.view(prior.output.get("data"))
    prior = _current_attempt(ctx, prior)
    start: dict[str, Any] = {}
    if prior is None or not isinstance(prior.output, Mapping):
        start = {"after_seq": await ctx.queue.storage.last_message_seq(pipe.name), "match": describe_match(match)}
    step = await _open_wait(ctx, key, seq, line, pipe.name, prior, start, {"kind": "pipe", "pipe": pipe.name}, timeout_ms)
    after = int(step.output["after_seq"])
    deadline = step.output.get("deadline")
    ctx.record.current_step = key
    while True:
        for msg in await ctx.queue.storage.read_messages(pipe.name, after):
            after = msg.seq
            if deadline is not None and msg.at > deadline:
                continue  # sent too late for this wait
            if pipe.matches(match, msg.data):
                done = {"after_seq": step.output["after_seq"], "deadline": deadline, "seq": msg.seq, "data": msg.data}
                await _close_wait(ctx, step, done)
                return pipe.view(msg.data)
        await _wait_more(ctx, step, deadline, f"waiting on pipe {pipe.name!r}")


async def pipe_send_step(ctx: ExecutionContext, pipe: Pipe, stored: Any) -> None:
    """`pipe.send` inside a handler: the message and the step record commit together, once."""
    owner = ctx.owner
    key, seq = ctx.next_key(f"send:{pipe.name}")
    line = _caller_line()
    _boundary(ctx)
    prior = _replayed(ctx, key, "send", pipe.name)
    if prior is not None and prior.status == "completed":
        return
    step = _new_step(ctx, key, pipe.name, "send", seq, line, prior, output={"data": stored})
    now = step.started_at
    step.status, step.completed_at = "completed", now
    await owner.commit_for(ctx, Batch(
        steps=[step],
        messages=[PipeMessage(pipe.name, stored, now)],
        events=[
            _event(ctx, EventKind.STEP_START, {"key": key, "name": pipe.name, "kind": "send", "attempt": 1, "line": line}, now),
            _event(ctx, EventKind.STEP_SUCCESS, {"key": key, "name": pipe.name, "kind": "send", "attempt": 1, "duration_ms": 0}, now),
        ],
    ))  # fmt: skip
    ctx.history[key] = step
    owner.kick()
