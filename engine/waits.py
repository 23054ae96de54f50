"""Durable waits and sends: `job.wait_for`, `pipe.wait_for`, `pipe.send` inside handlers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .context import ExecutionContext, current
from .event_schema import EventKind
from .ids import now_ms
from .serialize import load_typed
from .steps import _boundary, _caller_line, _event, _new_step, _park, _replayed
from .storage.base import Batch, ExecutionQuery, PipeMessage, StepRecord

if TYPE_CHECKING:
    from .job import Job
    from .pipe import Pipe


def matches(match: Any, value: Any, typed: Any) -> bool:
    """A dict matches when each of its keys is present with an equal value (recursively);
    a callable is a predicate over the typed value."""
    if callable(match):
        return bool(match(typed))
    if isinstance(match, Mapping):
        return isinstance(value, Mapping) and all(
            k in value and matches(v, value[k], value[k]) for k, v in match.items()
        )
    return bool(match == value)


def describe_match(match: Any) -> Any:
    """The match as stored with a wait step, for the dashboard's "why is it waiting":
    a dict as JSON, a predicate by its name."""
    if match is None or callable(match):
        return None if match is None else f"<{getattr(match, '__qualname__', 'predicate')}>"
    try:
        return json.loads(json.dumps(match))
    except (TypeError, ValueError):
        return repr(match)


async def wait_for_job(job: Job, match: Any) -> Any:
    """Wait until an execution of `job` whose input matches completes after this step
    began; returns its output. Durable: the start time is stored with the step."""
    ctx = current()
    owner = ctx.owner
    owner.check_registered(job)
    key, seq = ctx.next_key(f"wait:{job.name}")
    line = _caller_line()
    _boundary(ctx)
    prior = _replayed(ctx, key, "wait", job.name)
    if prior is not None and prior.status == "completed" and isinstance(prior.output, Mapping):
        return load_typed(job.options.output, prior.output.get("output"))
    if prior is not None and isinstance(prior.output, Mapping):
        step, since = prior, int(prior.output["since"])
    else:
        step = _new_step(ctx, key, job.name, "wait", seq, line, prior)
        since = step.started_at
        step.output = {"since": since, "match": describe_match(match)}
        await owner.commit_for(ctx, Batch(
            steps=[replace(step)],
            events=[_event(ctx, EventKind.WAIT, {"key": key, "kind": "job", "job": job.name, "line": line}, since)],
        ))  # fmt: skip
    ctx.record.current_step = key
    seen: set[str] = set()
    while True:
        found = await ctx.queue.storage.query(ExecutionQuery(
            job_names=[job.name], statuses=["completed"], completed_after=since - 1, order="oldest",
        ))  # fmt: skip
        for rec in found:
            if rec.id in seen:
                continue
            seen.add(rec.id)
            if matches(match, rec.input, load_typed(job.options.input, rec.input)):
                now = now_ms()
                step.status, step.completed_at = "completed", now
                step.output = {"since": since, "execution_id": rec.id, "output": rec.output}
                await owner.commit_for(ctx, Batch(
                    steps=[step],
                    events=[_event(ctx, EventKind.STEP_SUCCESS, {"key": key, "name": job.name, "kind": "wait", "attempt": 1, "duration_ms": now - step.started_at}, now)],
                ))  # fmt: skip
                ctx.history[key] = step
                return load_typed(job.options.output, rec.output)
        await _park(ctx, asyncio.sleep(owner.poll_s))
        _boundary(ctx)


async def _open_wait(ctx: ExecutionContext, key: str, seq: int, line: int | None, name: str,
                     prior: StepRecord | None, start: dict[str, Any], event: dict[str, Any]) -> StepRecord:  # fmt: skip
    if prior is not None and isinstance(prior.output, Mapping):
        return prior
    step = _new_step(ctx, key, name, "wait", seq, line, prior, output=start)
    await ctx.owner.commit_for(ctx, Batch(
        steps=[replace(step)], events=[_event(ctx, EventKind.WAIT, {"key": key, "line": line, **event}, step.started_at)],
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


async def pipe_wait_step(pipe: Pipe, match: Any) -> Any:
    """Wait for a message on `pipe` sent after this step began (also while this process
    was down); returns its data. The starting sequence number is stored with the step."""
    from .pipe import message_matches

    ctx = current()
    owner = ctx.owner
    key, seq = ctx.next_key(f"wait:{pipe.name}")
    line = _caller_line()
    _boundary(ctx)
    prior = _replayed(ctx, key, "wait", pipe.name)
    if prior is not None and prior.status == "completed" and isinstance(prior.output, Mapping):
        return load_typed(pipe.input, prior.output.get("data"))
    start: dict[str, Any] = {}
    if prior is None or not isinstance(prior.output, Mapping):
        start = {"after_seq": await ctx.queue.storage.last_message_seq(pipe.name), "match": describe_match(match)}
    step = await _open_wait(ctx, key, seq, line, pipe.name, prior, start, {"kind": "pipe", "pipe": pipe.name})
    after = int(step.output["after_seq"])
    ctx.record.current_step = key
    while True:
        for msg in await ctx.queue.storage.read_messages(pipe.name, after):
            after = msg.seq
            if message_matches(pipe, match, msg.data):
                await _close_wait(ctx, step, {"after_seq": step.output["after_seq"], "seq": msg.seq, "data": msg.data})
                return load_typed(pipe.input, msg.data)
        await _park(ctx, asyncio.sleep(owner.poll_s))
        _boundary(ctx)


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
