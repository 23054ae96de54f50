"""A remote worker: the queue's own runtime, with the orchestration node as its storage.

The worker holds the job code and no storage credentials. Its runtime claims
executions (a long poll on the node), runs the handlers with full replay
semantics and reports each step through `RemoteStorage`, group-committed, so
its reports travel in batches. Next to that it sends a heartbeat every
`interval` (the node's setting): the answer says whether the node had marked
it lost, and each beat also renews its leases, which brings back any pause or
cancel requested meanwhile and drops the executions it no longer holds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from ..errors import DqError
from . import wire
from .fingerprint import fingerprints
from .remote import RemoteStorage

if TYPE_CHECKING:
    from ..queue import Queue

log = logging.getLogger("dq.worker")

DEFAULT_CAPACITY = 100


class Worker:
    def __init__(
        self,
        queue: Queue,
        orchestrator: str,
        token: str | None = None,
        *,
        concurrency: int | None = None,
        url: str | None = None,
    ) -> None:
        capacity = concurrency if concurrency is not None else (queue.concurrency or DEFAULT_CAPACITY)
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"worker concurrency must be an int >= 1, got {concurrency!r}")
        self.capacity = capacity
        self.remote = RemoteStorage(orchestrator, token)
        self.queue = queue.with_storage(self.remote)
        runtime = self.queue.runtime
        self.queue.max_active = runtime.max_active = capacity
        self.id = runtime.worker_id
        self.remote.registration = wire.Register(
            worker_id=self.id, protocol=wire.PROTOCOL, host=socket.gethostname(), pid=os.getpid(),
            version=wire.dq_version(), capacity=capacity, jobs=fingerprints(queue.definitions), url=url,
        )  # fmt: skip
        self._beat: asyncio.Task[None] | None = None
        self.stopping = False

    @property
    def refused_jobs(self) -> dict[str, str]:
        return dict(self.remote.registered.refused) if self.remote.registered else {}

    async def start(self) -> None:
        try:
            await self.queue.start()
        except BaseException:
            await self.queue.close()
            raise
        registered = self.remote.registered
        assert registered is not None
        if not registered.accepted:
            await self.queue.close()
            raise DqError(f"the node refuses every job of this worker: {registered.refused}")
        self._beat = asyncio.create_task(self._beats(registered.interval_ms / 1000), name="dq-worker-heartbeat")

    async def wake(self) -> None:
        """Look for work and for interrupts now (the node's call to the worker's endpoint)."""
        self.queue.runtime.kick()
        await self.queue.runtime.renew_leases()

    async def _beats(self, interval_s: float) -> None:
        runtime = self.queue.runtime
        while True:
            await asyncio.sleep(interval_s)
            try:
                info: dict[str, Any] = {
                    "state": "stopping" if self.stopping else "running",
                    "running": len(runtime.contexts), "executions": sorted(runtime.contexts)[:20],
                }  # fmt: skip
                reply = await self.remote.beat(self.id, info)
                if reply.lost:
                    log.warning("dq: the node had marked this worker lost; dropping the executions it gave to others")
                # Renewing at each beat brings pauses and cancels within one interval,
                # and interrupts (as lost) the executions that were handed to others.
                await runtime.renew_leases()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("dq: heartbeat to the node failed: %s", exc)

    async def close(self) -> None:
        """Stop taking work; running handlers reach a step boundary (up to the queue's
        shutdown_grace) and what is left is handed back to the node."""
        self.stopping = True
        if self._beat is not None:
            self._beat.cancel()
            await asyncio.gather(self._beat, return_exceptions=True)
        await self.queue.close()
