"""The in-process state owner: `Runtime`, the `seam.StateOwner` that executors talk to.

It holds the state (`runtime_state.RuntimeState`) and is assembled from its parts:
creation.py, dispatch.py, endings.py, leases.py. What is left here is the wiring:
start and stop, the seam calls that only pass on to a collaborator, and waiting
for results.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from . import attempt
from .committer import Committer
from .creation import Creation
from .dispatch import Dispatch
from .endings import Endings
from .errors import StorageLostError
from .event_schema import EventKind
from .events import EventBus, Hooks
from .flow import FlowControl
from .idempotency import holder
from .ids import new_id, now_ms
from .leases import Leases
from .results import Results
from .retention import Housekeeping
from .runtime_state import log
from .scheduler import Cron, Timer
from .sources import SourceVersions
from .storage.base import Batch, EventRecord, ExecutionRecord
from .transitions import SHUTDOWN
from .triggers import Triggers

if TYPE_CHECKING:
    from .context import ExecutionContext
    from .job import Job
    from .limits import Limit
    from .queue import Queue


class Runtime(Creation, Dispatch, Endings, Leases):
    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.storage = queue.storage
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{new_id()[-6:]}"
        self.lease_ms = queue.lease_ms
        self.poll_s = queue.poll_interval_s
        self.max_active = queue.max_active
        self.short_sleep_ms = queue.short_sleep_ms
        self.flow = FlowControl(self)
        self.triggers = Triggers(self)
        self.cron = Cron(self)
        self.housekeeping = Housekeeping(
            self.storage, queue.retention_ms, list(queue.definitions), lambda b: self.committer.commit(b), queue.logger
        )
        self.contexts: dict[str, ExecutionContext] = {}
        self.paused_jobs: set[str] = set()
        self.paused_version = 0
        self.closing = False
        self.bus = EventBus(self.storage)
        self.hooks = Hooks(self._record_event, queue)
        self.committer: Committer = None  # type: ignore[assignment]  # set in start()
        self.sources = SourceVersions(lambda batch: self.committer.send(batch))
        # The seam's `record` and `source_fingerprint` are the collaborators' own
        # methods (one call less per step, per execution); `record` is rebound to the
        # committer's once start() made it.
        self.record: Callable[[Batch], None] = lambda batch: self.committer.send(batch)
        self.source_fingerprint: Callable[[Job], str | None] = self.sources.fingerprint
        self.results = Results(self.storage, self.contexts, self.poll_s, self.flow.parked)
        self._wake = asyncio.Event()
        #: The dispatcher stopped claiming for want of room (max_active): an ending
        #: execution kicks it. Otherwise an ending frees nothing it waits for.
        self._room_wanted = False
        self._timer: Timer | None = None
        self._side_tasks: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        #: Executions given back to storage after it was unreachable (see `_release`).
        self._releases: set[asyncio.Task[None]] = set()
        #: Storage clock minus local clock, ms: leases this process writes itself
        #: (executions created already claimed) are on the storage clock too.
        self.clock_offset_ms = 0
        #: Set once storage lost dq's data (StorageLostError): nothing runs any more.
        self.fatal_error: StorageLostError | None = None

    # -- start / stop ------------------------------------------------------------------------
    async def start(self) -> None:
        await self.storage.open()
        await self._measure_clock()
        self.committer = Committer(self.storage, self.bus.notify)
        self.record = self.committer.send
        self.committer.start()
        self._timer = Timer(self.kick)
        await self.storage.heartbeat(self.worker_id, self._worker_info("running"))
        await self.flow.peers.count()  # whether this process may keep its limits in memory from the first start
        await self.recover()
        await self._load_paused()
        self.storage.on_wakeup(self.kick)
        self.storage.on_wakeup(self.flow.ledger.on_wakeup)
        for name, coro in (
            ("dispatch", self._dispatch_loop()),
            ("leases", self._lease_loop()),
            ("watch", self.results.watch()),
            ("watchdog", attempt.watchdog(self.contexts.values)),
            ("triggers", self.triggers.run()),
            ("cron", self.cron.run()),
            *([("housekeeping", self.housekeeping.run())] if self.storage.housekeeping else []),
        ):
            task = asyncio.create_task(coro, name=f"dq-{name}")
            task.add_done_callback(self._side_task_done)
            self._side_tasks.append(task)
        self.kick()

    def _side_task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("dq: background task %s died: %r", task.get_name(), task.exception())

    async def close(self, grace_s: float) -> None:
        self.closing = True
        await _cancel_until_done([*self._side_tasks, *self._releases])
        for ctx in list(self.contexts.values()):
            self.interrupt(ctx, SHUTDOWN)
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            for task in pending:
                task.cancel()
            # Cancelled handlers still write their release: give them time, then insist.
            if pending:
                _done, pending = await asyncio.wait(pending, timeout=max(grace_s, 1.0))
            await _cancel_until_done(pending)
        if self._timer is not None:
            self._timer.close()
        await self.flow.close()
        await self.committer.aclose()
        await self.storage.remove_worker(self.worker_id)
        await self.bus.aclose()
        self.results.cancel_all()
        await self.storage.aclose()

    # -- the seam: calls passed on to a collaborator (seam.StateOwner) -----------------------
    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        return await self.storage.get_execution(execution_id)

    async def idempotency_holder(self, job_name: str, key: str) -> tuple[Any, ExecutionRecord | None]:
        return await holder(self.storage, job_name, key)

    async def cancel(self, execution_id: str, reason: str | None = None) -> bool:
        return await self.queue.lifecycle.cancel(execution_id, reason)

    async def acquire_slot(self, limit: Limit, holder: str, priority: int) -> None:
        await self.flow.acquire_step(limit, holder, priority)

    async def give_back_slot(self, limit: Limit, holder: str) -> None:
        await self.flow.give_back(limit, holder)

    def give_back_slot_nowait(self, limit: Limit, holder: str) -> None:
        self.flow.give_back_nowait(limit, holder)

    def send(self, ctx: ExecutionContext, type: EventKind, data: dict[str, Any]) -> None:
        ev = EventRecord(ctx.id, ctx.job.name, type, data, now_ms())
        batch = self.committer.queued_send(ctx.id, ctx.record.token)  # most often: no Batch of its own
        if batch is not None:
            batch.events.append(ev)
        else:
            self.committer.send(Batch(events=[ev], fences={ctx.id: ctx.record.token}))

    def _record_event(self, type: EventKind, execution_id: str | None, job_name: str | None, data: dict[str, Any]) -> None:
        self.committer.send(Batch(events=[EventRecord(execution_id, job_name, type, data, now_ms())]))

    # -- waiting for results (results.py) ----------------------------------------------------
    async def settled(self, execution_ids: list[str]) -> list[asyncio.Future[ExecutionRecord]]:
        """Futures resolved when each execution ends (cheaper than one task per result())."""
        self.check_usable()
        return await self.results.settled(execution_ids)

    async def all_settled(self, execution_ids: list[str]) -> list[ExecutionRecord]:
        """Each execution's final record once all of them ended (`settled`, gathered, with
        one future in all instead of one per execution)."""
        self.check_usable()
        return await self.results.all_settled(execution_ids)

    def resolve(self, rec: ExecutionRecord) -> None:
        self.results.resolve(rec)

    async def wait_terminal(self, execution_id: str) -> ExecutionRecord:
        """The execution's record once it is completed, failed or cancelled (here or elsewhere)."""
        self.check_usable()
        return await self.results.wait_terminal(execution_id)


async def _cancel_until_done(tasks: Collection[asyncio.Task[None]]) -> None:
    """Cancel `tasks` and wait for them, cancelling again what is still running: a
    cancellation that lands as a driver call completes can be swallowed (redis-py's
    use of asyncio.wait_for on Python 3.11), and the task would run on for good."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=0.1)
    await asyncio.gather(*tasks, return_exceptions=True)
