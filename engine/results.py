"""Waiting for results: futures for whoever awaits an execution's end.

This process resolves them as it ends executions (`resolve`); those that end in
another process are found by polling storage (`watch`), only for ids someone awaits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Container

from .errors import LeaseLostError, StorageLostError
from .storage.base import TERMINAL, ExecutionQuery, ExecutionRecord, Storage

log = logging.getLogger("dq")


class Results:
    def __init__(self, storage: Storage, running_here: Container[str], poll_s: float) -> None:
        self._storage = storage
        #: Ids this process runs: it resolves them itself, no polling needed.
        self._running_here = running_here
        self._poll_s = poll_s
        self._waiters: dict[str, list[asyncio.Future[ExecutionRecord]]] = {}

    def resolve(self, rec: ExecutionRecord) -> None:
        for fut in self._waiters.pop(rec.id, ()):
            if not fut.done():
                fut.set_result(rec)

    async def settled(self, execution_ids: list[str]) -> list[asyncio.Future[ExecutionRecord]]:
        """Futures resolved when each execution ends (cheaper than one task per result())."""
        futs = []
        loop = asyncio.get_running_loop()
        for eid in execution_ids:
            fut: asyncio.Future[ExecutionRecord] = loop.create_future()
            self._waiters.setdefault(eid, []).append(fut)
            futs.append(fut)
        # Those that ended before we registered are resolved from storage.
        others = [i for i in execution_ids if i not in self._running_here]
        for start in range(0, len(others), 500):
            query = ExecutionQuery(ids=others[start : start + 500], statuses=sorted(TERMINAL))
            for rec in await self._storage.query(query):
                self.resolve(rec)
        return futs

    async def wait_terminal(self, execution_id: str) -> ExecutionRecord:
        """The execution's record once it is completed, failed or cancelled (here or elsewhere)."""
        fut: asyncio.Future[ExecutionRecord] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(execution_id, []).append(fut)
        try:
            rec = await self._storage.get_execution(execution_id)
            if rec is None:
                raise LeaseLostError(f"execution {execution_id!r} does not exist")
            if rec.status in TERMINAL:
                return rec
            return await fut
        finally:
            futs = self._waiters.get(execution_id)
            if futs is not None and fut in futs:
                futs.remove(fut)
                if not futs:
                    del self._waiters[execution_id]

    async def watch(self) -> None:
        """Resolve waiters of executions that finish in other processes."""
        while True:
            await asyncio.sleep(self._poll_s)
            ids = [i for i in self._waiters if i not in self._running_here]
            if not ids:
                continue
            try:
                for start in range(0, len(ids), 500):
                    chunk = ids[start : start + 500]
                    for rec in await self._storage.query(ExecutionQuery(ids=chunk, statuses=sorted(TERMINAL))):
                        self.resolve(rec)
            except Exception as exc:
                log.warning("dq: watching results failed: %s", exc)

    def fail_all(self, exc: StorageLostError) -> None:
        """Storage lost its data: every waiter gets the error."""
        for futs in self._waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_exception(StorageLostError(*exc.args))

    def cancel_all(self) -> None:
        for futs in self._waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.cancel()
