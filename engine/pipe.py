"""Pipes: durable messages that jobs send, wait for, and are triggered by."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import context
from .errors import DqError
from .ids import now_ms
from .serialize import check_schema, load_typed, validate_in
from .storage.base import Batch, EventRecord, PipeMessage


class PipeTrigger:
    """`pipe.into(fn)`: each message mapped by `fn` starts the listing job."""

    def __init__(self, pipe: Pipe, fn: Callable[[Any], Any] | None) -> None:
        self.pipe = pipe
        self.fn = fn

    @property
    def name(self) -> str:
        return self.pipe.name


class Pipe:
    def __init__(self, name: str, input: Any = None) -> None:
        self.name = name
        self.input = input

    def __repr__(self) -> str:
        return f"<Pipe {self.name!r}>"

    def into(self, fn: Callable[[Any], Any] | None = None) -> PipeTrigger:
        return PipeTrigger(self, fn)

    async def send(self, data: Any) -> None:
        """Store the message before returning. Inside a handler, a durable step: sent once."""
        from .waits import pipe_send_step

        _typed, stored = validate_in(self.input, data, f"message for pipe {self.name!r}")
        ctx = context.current_or_none()
        if ctx is not None:
            await pipe_send_step(ctx, self, stored)
            return
        queue = context.ambient_queue()
        if queue is None:
            raise DqError(
                f"pipe {self.name!r}.send() outside a handler: use queue.pipes[{self.name!r}].send(...)"
            )
        await queue.pipes[self.name].send(data)

    async def wait_for(self, match: Any = None) -> Any:
        from .waits import pipe_wait_step

        return await pipe_wait_step(self, match)


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
        await runtime.committer.commit(Batch(
            messages=[PipeMessage(self.pipe.name, stored, now)],
            events=[EventRecord(None, None, "pipe_send", {"pipe": self.pipe.name, "data": stored}, now)],
        ))  # fmt: skip
        runtime.kick()


def create_pipe(name: str | None = None, *, input: Any = None) -> Pipe:
    if not name or not isinstance(name, str):
        raise ValueError("create_pipe: a pipe needs a name (name=...)")
    if input is not None:
        check_schema(input, "input")
    return Pipe(name, input)


def message_matches(pipe: Pipe, match: Any, data: Any) -> bool:
    from .waits import matches

    if match is None:
        return True
    return matches(match, data, load_typed(pipe.input, data) if callable(match) else data)


__all__ = ["BoundPipe", "Pipe", "PipeTrigger", "create_pipe", "message_matches"]
