"""The ambient execution and queue, behind guarded ContextVars."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
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
#: The running execution's variable itself, for the handler's call to set and reset
#: without a call of ours in between (on every execution).
EXECUTION = _execution
#: The ambient queue outside handlers (hooks); inside one it is the execution's.
_queue: ContextVar[Queue | None] = ContextVar("dq_queue", default=None)
#: Queues started and not closed in this process: a job or pipe called directly
#: outside a handler runs on the one that holds it.
_started: weakref.WeakSet[Queue] = weakref.WeakSet()


@dataclass(eq=False, slots=True)
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
    #: The execution's id (`record.id`), read on every step: an attribute, not a property.
    id: str = field(init=False)
    #: This process's claim on the execution (its token is fixed for the attempt):
    #: what its writes are fenced by. Built once: every step's writes use it.
    holder: Holder = field(init=False)

    def __post_init__(self) -> None:
        rec = self.record
        self.id = rec.id
        self.holder = Holder(rec.id, self.job.name, rec.token)

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
    ctx = _execution.get()
    return ctx.queue if ctx is not None else _queue.get()


def set_execution(ctx: ExecutionContext | None) -> Any:
    return _execution.set(ctx)


def reset_execution(token: Any) -> None:
    _execution.reset(token)


def set_queue(queue: Queue | None) -> Any:
    return _queue.set(queue)


def reset_queue(token: Any) -> None:
    _queue.reset(token)


def queue_started(queue: Queue) -> None:
    _started.add(queue)


def queue_closed(queue: Queue) -> None:
    _started.discard(queue)


def only_started_queue(holds: Callable[[Queue], bool], what: str, instead: str) -> Queue:
    """The one started queue for which `holds(queue)`; DqError naming the situation
    (none, or several) and what to call instead."""
    holders = [q for q in list(_started) if holds(q)]
    if len(holders) == 1:
        return holders[0]
    if not holders:
        raise DqError(
            f"{what} called outside a handler, and no started queue holds it: start a queue "
            f"with it first (async with create_queue(...)), or call {instead}"
        )
    raise DqError(
        f"{what} called outside a handler, and {len(holders)} started queues hold it "
        f"({', '.join(map(repr, holders))}): call {instead} on the queue you mean"
    )
