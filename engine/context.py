"""The ambient execution and queue, behind guarded ContextVars."""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import DqError
from .transitions import Control, Holder

if TYPE_CHECKING:
    from .job import Job
    from .queue import Queue
    from .seam import StateOwner
    from .storage.base import ExecutionRecord, StepRecord

_execution: ContextVar[ExecutionContext | None] = ContextVar("dq_execution", default=None)
_queue: ContextVar[Queue | None] = ContextVar("dq_queue", default=None)


@dataclass(eq=False)
class ExecutionContext:
    """Replay state of one running attempt of one execution."""

    queue: Queue
    job: Job
    record: ExecutionRecord
    history: dict[str, StepRecord]
    #: Where the attempt's state changes go (the seam): steps never reach the Runtime.
    owner: StateOwner
    #: Key counters: name -> how many times it was called in this run.
    counts: dict[str, int] = field(default_factory=dict)
    calls: int = 0
    #: Why the attempt should stop (a lifecycle request, shutdown, lost lease...).
    control: Control | None = None
    task: asyncio.Task[Any] | None = None
    #: The task entered `_execute`: before that, cancelling it would drop the
    #: coroutine without running any of its handlers (nothing ends the execution).
    started: bool = False
    #: Steps currently parked at an interruptible await (sleep, child wait).
    parked: int = 0
    #: The final write is under way: lifecycle requests no longer apply.
    finishing: bool = False
    #: When the watchdog times this attempt out (loop time), for long timeouts.
    deadline: float | None = None
    #: This attempt holds a concurrency slot of its job (given back when it stops running).
    holds_slot: bool = False

    def __post_init__(self) -> None:
        self.id: str = self.record.id  # read on every step: an attribute, not a property
        #: This process's claim on the execution (its token is fixed for the attempt):
        #: what its writes are fenced by. Built once: every step's writes use it.
        self.holder = Holder(self.id, self.job.name, self.record.token)

    @property
    def attempt(self) -> int:
        return self.record.retry_count

    def next_key(self, name: str) -> tuple[str, int]:
        """`name`, then `name#2`, `name#3`... in call order; and the call index."""
        self.calls += 1
        n = self.counts.get(name, 0) + 1
        self.counts[name] = n
        return (name if n == 1 else f"{name}#{n}"), self.calls


def current() -> ExecutionContext:
    ctx = _execution.get()
    if ctx is None:
        raise DqError(
            "steps (run, sleep, thread, pipe.wait_for, job.wait_for) can only be "
            "called inside a job handler"
        )
    return ctx


def current_or_none() -> ExecutionContext | None:
    return _execution.get()


def ambient_queue() -> Queue | None:
    return _queue.get()


def set_execution(ctx: ExecutionContext | None) -> Any:
    return _execution.set(ctx)


def reset_execution(token: Any) -> None:
    _execution.reset(token)


def set_queue(queue: Queue | None) -> Any:
    return _queue.set(queue)


def reset_queue(token: Any) -> None:
    _queue.reset(token)
