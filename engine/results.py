"""Waiting for results: futures for whoever awaits an execution's end.

This process resolves them as it ends executions (`resolve`); those that end in
another process are found by polling storage (`watch`), only for ids someone awaits
that do not run here. Ids just registered are first looked up once (`_ended_before`:
they may have ended before anyone waited), and polled only after that. The last few
thousand that completed are remembered (`_completed`): a waiter that comes after the
end (`start()` then `result()` of a fast job, `start_many` then `all_settled`) is
answered without a read. Only completed ones: a completed execution never changes
again (`retry` takes failed and cancelled ones), so the record kept is the stored one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Container

from .errors import LeaseLostError, StorageLostError
from .storage.base import TERMINAL, ExecutionQuery, ExecutionRecord, Storage

log = logging.getLogger("dq")

#: Completed records remembered per generation; two generations are kept (between one
#: and two of these in all), so forgetting the oldest costs no scan.
REMEMBERED = 4096


class _AllSettled:
    """One waiter for many executions (`Results.all_settled`): a single future for the
    whole list, resolved when the last of them ends, instead of a future per execution
    (and the caller's `gather` over them). It stands in the waiter lists as a future
    does: `done`, `set_result` (one record), `set_exception`, `cancel`."""

    __slots__ = ("_found", "_ids", "_left", "future")

    def __init__(self, loop: asyncio.AbstractEventLoop, ids: list[str], unique: int) -> None:
        self._ids = ids
        self._found: dict[str, ExecutionRecord] = {}
        self._left = unique
        self.future: asyncio.Future[list[ExecutionRecord]] = loop.create_future()
        if not unique:
            self.future.set_result([])

    def done(self) -> bool:
        return self.future.done()

    def set_result(self, rec: ExecutionRecord) -> None:
        found = self._found
        if rec.id not in found:
            found[rec.id] = rec
            self._left -= 1
            if not self._left:
                self.future.set_result([found[i] for i in self._ids])

    def set_exception(self, exc: BaseException) -> None:
        self.future.set_exception(exc)

    def cancel(self) -> None:
        self.future.cancel()


class Results:
    def __init__(
        self, storage: Storage, running_here: Container[str], poll_s: float, parked_here: Container[str] = ()
    ) -> None:
        self._storage = storage
        #: Ids this process runs: it resolves them itself, no polling needed.
        self._running_here = running_here
        #: Ids waiting in this process's line for a slot: not ended, so not looked up when
        #: registered (a burst under a limit would read back each of its waiters); `watch`
        #: polls them as any other, in case another process runs them after all.
        self._parked_here = parked_here
        self._poll_s = poll_s
        self._waiters: dict[str, list[asyncio.Future[ExecutionRecord] | _AllSettled]] = {}
        #: Ids `_ended_before` is still to look up: `watch` leaves them to it. (A burst's
        #: thousands of waiters take it many queries, a poll interval or more, and the
        #: two would otherwise fetch the same ended records.)
        self._checking: set[str] = set()
        #: Completed lately (here, or read back for a waiter), newest generation first.
        self._completed: dict[str, ExecutionRecord] = {}
        self._completed_before: dict[str, ExecutionRecord] = {}

    def resolve(self, rec: ExecutionRecord) -> None:
        if rec.status == "completed":
            completed = self._completed
            completed[rec.id] = rec
            if len(completed) >= REMEMBERED:
                self._completed_before, self._completed = completed, {}
        self._wake(rec)

    def _wake(self, rec: ExecutionRecord) -> None:
        for fut in self._waiters.pop(rec.id, ()):
            if not fut.done():
                fut.set_result(rec)

    def completed_lately(self, execution_id: str) -> ExecutionRecord | None:
        """The record of `execution_id` if it completed lately (no read), else None."""
        rec = self._completed.get(execution_id)
        return rec if rec is not None else self._completed_before.get(execution_id)

    async def settled(self, execution_ids: list[str]) -> list[asyncio.Future[ExecutionRecord]]:
        """Futures resolved when each execution ends (cheaper than one task per result())."""
        futs = []
        loop = asyncio.get_running_loop()
        for eid in execution_ids:
            fut: asyncio.Future[ExecutionRecord] = loop.create_future()
            self._waiters.setdefault(eid, []).append(fut)
            futs.append(fut)
        await self._ended_before(execution_ids)
        return futs

    async def all_settled(self, execution_ids: list[str]) -> list[ExecutionRecord]:
        """Each execution's record once all of them ended, in the order given: `settled`
        gathered, at the cost of one future in all."""
        unique = dict.fromkeys(execution_ids)
        waiter = _AllSettled(asyncio.get_running_loop(), execution_ids, len(unique))
        waiters = self._waiters
        for eid in unique:
            if eid in waiters:
                waiters[eid].append(waiter)
            else:
                waiters[eid] = [waiter]
        await self._ended_before(list(unique))
        return await waiter.future

    async def _ended_before(self, execution_ids: list[str]) -> None:
        """Resolve from storage those that ended before their waiters were registered."""
        running, parked, waiters, checking = self._running_here, self._parked_here, self._waiters, self._checking
        others = [i for i in execution_ids if i not in running and i not in parked]
        if others and (self._completed or self._completed_before):
            lately, others = others, []
            for eid in lately:
                if (rec := self.completed_lately(eid)) is not None:
                    self._wake(rec)
                else:
                    others.append(eid)
        checking.update(others)
        try:
            for start in range(0, len(others), 500):
                chunk = others[start : start + 500]
                # Those that ended here, or began to run here, since: no need to ask.
                if ask := [i for i in chunk if i in waiters and i not in running]:
                    for rec in await self._storage.query(ExecutionQuery(ids=ask, statuses=sorted(TERMINAL))):
                        self.resolve(rec)
                checking.difference_update(chunk)
        except BaseException:  # what it did not look up goes back to `watch`
            checking.difference_update(others)
            raise

    async def wait_terminal(self, execution_id: str) -> ExecutionRecord:
        """The execution's record once it is completed, failed or cancelled (here or elsewhere)."""
        if (done := self.completed_lately(execution_id)) is not None:
            return done
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
            running, checking = self._running_here, self._checking
            ids = [i for i in self._waiters if i not in running and i not in checking]
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
        self._completed, self._completed_before = {}, {}
        for futs in self._waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_exception(StorageLostError(*exc.args))

    def cancel_all(self) -> None:
        for futs in self._waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.cancel()
