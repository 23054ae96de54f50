"""Pipes: durable messages that jobs send, wait for, and are triggered by."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import context
from .event_schema import EventKind, PipeSend
from .ids import now_ms
from .matching import matches
from .serialize import check_schema, load_typed, plain_json, validate_in
from .storage.base import Batch, EventRecord, PipeMessage
from .waits import pipe_send_step, pipe_wait_step


class Pipe:
    def __init__(self, name: str, input: Any = None) -> None:
        self.name = name
        self.input = input

    def __repr__(self) -> str:
        return f"<Pipe {self.name!r}>"

    def into(self, fn: Callable[[Any], Any] | None = None) -> PipeTrigger:
        """A pipe derived from this one through `fn` (see `PipeTrigger`)."""
        return PipeTrigger(self, fn)

    @property
    def source(self) -> Pipe:
        """The pipe whose log holds the messages (itself, unless derived)."""
        return self

    def view(self, data: Any) -> Any:
        """What this pipe carries for the stored message `data` of its source's log."""
        return load_typed(self.input, data)

    def outgoing(self, data: Any) -> Any:
        """What `send(data)` stores in the source's log (before validation)."""
        return data

    def matches(self, match: Any, data: Any) -> bool:
        """Whether the stored message `data` matches `match` as this pipe carries it: a
        dict matches the JSON form (of the derived value, for `pipe.into(fn)`), a
        predicate the typed value."""
        if match is None:
            return True
        if self.source is self:
            return matches(match, data, load_typed(self.input, data) if callable(match) else data)
        value = self.view(data)
        try:
            json_form = plain_json(value, "the derived message")
        except TypeError:
            json_form = value
        return matches(match, json_form, value)

    async def send(self, data: Any) -> None:
        """Store the message before returning. Inside a handler, a durable step: sent
        once. Outside one, through the one started queue that holds the pipe."""
        source = self.source
        _typed, stored = validate_in(source.input, self.outgoing(data), f"message for pipe {source.name!r}")
        ctx = context.current_or_none()
        if ctx is not None:
            await pipe_send_step(ctx, source, stored)
            return
        queue = context.ambient_queue() or context.only_started_queue(
            lambda q: q.holds_pipe(source.name), f"pipe {source.name!r}", f"queue.pipes[{source.name!r}].send(...)"
        )
        await BoundPipe(source, queue).send(stored)

    async def wait_for(self, match: Any = None, *, timeout: Any = None) -> Any:
        """Inside a handler: the first message matching `match` sent after this step
        began; with `timeout` (a Duration), TimeoutError past that durable deadline."""
        return await pipe_wait_step(self, match, timeout)


class PipeTrigger(Pipe):
    """`pipe.into(fn)`: a pipe of its own over the source's log (the original design's
    "a new pipe that transforms the input data before sending it"). `send(x)` sends
    `fn(x)` into the source; as a trigger or with `wait_for` it carries `fn(m)` for
    each message `m` of the source (typed by the source's `input`)."""

    def __init__(self, pipe: Pipe, fn: Callable[[Any], Any] | None) -> None:
        super().__init__(pipe.name, None)
        self.pipe = pipe
        self.fn = fn

    def __repr__(self) -> str:
        return f"<Pipe {self.name!r} mapped>"

    @property
    def source(self) -> Pipe:
        return self.pipe.source

    def view(self, data: Any) -> Any:
        value = self.pipe.view(data)
        return self.fn(value) if self.fn is not None else value

    def outgoing(self, data: Any) -> Any:
        return self.pipe.outgoing(self.fn(data) if self.fn is not None else data)


class BoundPipe:
    """A pipe reached through its queue: `queue.pipes.name.send(...)`."""

    def __init__(self, pipe: Pipe, queue: Any) -> None:
        self.pipe = pipe
        self.queue = queue

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)

    async def send(self, data: Any) -> None:
        _typed, stored = validate_in(self.pipe.input, data, f"message for pipe {self.pipe.name!r}")
        runtime = await self.queue.started()
        now = now_ms()
        sent: PipeSend = {"pipe": self.pipe.name, "data": stored}
        await runtime.committer.commit(Batch(
            messages=[PipeMessage(self.pipe.name, stored, now)],
            events=[EventRecord(None, None, EventKind.PIPE_SEND, dict(sent), now)],
        ))  # fmt: skip
        runtime.kick()


def create_pipe(name: str | None = None, *, input: Any = None) -> Pipe:
    if not name or not isinstance(name, str):
        raise ValueError("create_pipe: a pipe needs a name (name=...)")
    if input is not None:
        check_schema(input, "input")
    return Pipe(name, input)
