"""What the parts of the in-process state owner share: its state, and the calls
they make on one another.

`runtime.Runtime` is assembled from parts, one concept per module: creation.py
(storing new executions and starting them), dispatch.py (the claim loop and one
attempt's run on the owner's side), endings.py (an attempt's fenced writes and
how it ends, suspends or is given back) and leases.py (lease renewal and
recovery). Each part is a class over `RuntimeState`; the Runtime inherits them
all and holds the one copy of the state. They are parts of one object, not
objects of their own, so a call between them costs what a method call costs on
the hot path, and a method reads the same `self.` attributes wherever it lives.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import StorageLostError
from .ids import now_ms
from .transitions import LOST

if TYPE_CHECKING:

    from .committer import Committer
    from .context import ExecutionContext
    from .events import EventBus, Hooks
    from .flow import FlowControl
    from .job import Job
    from .queue import Queue
    from .results import Results
    from .retention import Housekeeping
    from .scheduler import Cron, Timer
    from .sources import SourceVersions
    from .storage.base import ExecutionRecord, Storage
    from .transitions import Control, EndStatus
    from .triggers import Triggers

if TYPE_CHECKING:
    # The parts pass the Runtime (`self`) as the executor's StateOwner.
    from .seam import StateOwner as _Owner
else:
    _Owner = object

log = logging.getLogger("dq")

#: Retry delays after a storage error: first, and the cap (at least the poll interval).
_BACKOFF_S = (0.05, 2.0)
T = TypeVar("T")


class RuntimeState(_Owner):
    """The state owner's state (set in `Runtime.__init__`) and what every part calls."""

    queue: Queue
    storage: Storage
    worker_id: str
    lease_ms: int
    poll_s: float
    max_active: int
    short_sleep_ms: int
    flow: FlowControl
    triggers: Triggers
    cron: Cron
    housekeeping: Housekeeping
    #: The executions this process holds, by id.
    contexts: dict[str, ExecutionContext]
    paused_jobs: set[str]
    #: Moves as this process pauses or resumes a job (before and after the write).
    paused_version: int
    closing: bool
    bus: EventBus
    hooks: Hooks
    committer: Committer
    sources: SourceVersions
    results: Results
    _wake: asyncio.Event
    _room_wanted: bool
    _timer: Timer | None
    _side_tasks: list[asyncio.Task[None]]
    _tasks: set[asyncio.Task[None]]
    #: Executions given back to storage after it was unreachable (see `_release`).
    _releases: set[asyncio.Task[None]]
    #: Storage clock minus local clock, ms: leases this process writes itself
    #: (executions created already claimed) are on the storage clock too.
    clock_offset_ms: int
    #: Set once storage lost dq's data (StorageLostError): nothing runs any more.
    fatal_error: StorageLostError | None

    def _worker_info(self, state: str) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "state": state, "kind": "in-process"}

    async def _measure_clock(self) -> None:
        self.clock_offset_ms = await self.storage.now() - now_ms()

    def check_usable(self) -> None:
        """Raise the storage loss (a fresh exception each time) once one was detected."""
        if self.fatal_error is not None:
            raise StorageLostError(*self.fatal_error.args) from self.fatal_error

    def lose_storage(self, exc: StorageLostError) -> None:
        """Storage lost dq's data (e.g. Redis FLUSHALL): carrying on would run an empty
        queue. Stop dispatching and every running execution, and hand the error to
        whoever waits for a result; later calls on the queue raise it too."""
        if self.fatal_error is not None:
            return
        self.fatal_error = exc
        self.closing = True
        log.error("dq: %s. This queue stopped: no execution runs until it is restarted.", exc)
        current = asyncio.current_task()
        for task in self._side_tasks:
            if task is not current:
                task.cancel()
        for ctx in list(self.contexts.values()):
            ctx.control = LOST
            if ctx.task is not None and ctx.task is not current and ctx.started:
                ctx.task.cancel()
        self.results.fail_all(exc)

    def kick(self) -> None:
        self._wake.set()
        self.triggers.kick()

    @property
    def timer(self) -> Timer | None:
        return self._timer

    if TYPE_CHECKING:
        # Calls between the parts that are not on the seam, defined by the part named.

        # creation.py
        async def _create_debounced(self, job: Job, rec: ExecutionRecord) -> str: ...

        # dispatch.py
        def _context(self, job: Job, rec: ExecutionRecord, history: dict[str, Any]) -> ExecutionContext: ...
        def _spawn(self, ctx: ExecutionContext, *, load_history: bool) -> None: ...
        def _release_early(self, ctx: ExecutionContext) -> None: ...
        async def _load_paused(self) -> None: ...

        # endings.py
        def interrupt(self, ctx: ExecutionContext, control: Control) -> None: ...
        def _release_later(self, ctx: ExecutionContext) -> None: ...
        async def _finish(
            self,
            ctx: ExecutionContext,
            status: EndStatus,
            typed_input: Any,
            *,
            output: Any = None,
            error: BaseException | None = None,
            reason: str | None = None,
        ) -> None: ...
        async def settled_hooks(
            self, job: Job, rec: ExecutionRecord, typed_input: Any, error: BaseException | None, reason: str | None
        ) -> None: ...
