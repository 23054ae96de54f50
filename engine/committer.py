"""Group commit: concurrent executions' writes share one storage transaction.

Writers append a Batch and await its future; a single flusher takes everything
queued while the previous transaction ran and commits it as one. No timer is
added to the latency: under load the batches grow by themselves.

On a storage with `commit_pipeline` > 1 (PostgreSQL), the next group goes while
the previous one is still in flight, on another connection, when each of its
batches touches only executions it fences and none that a group in flight
touches: the server runs one transaction while this process builds the next,
instead of each waiting for the other. Anything else (a compare-and-set, a pipe
message, an update of another execution) waits until nothing is in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from .commit_groups import Item, extend, merge, take_beside, take_group, touched
from .storage.base import Batch, CommitResult, EventRecord, Storage

log = logging.getLogger("dq.commit")
#: Loop turns a lane lets pass after a commit before it takes the next group.
_SETTLE_TURNS = 2


class Committer:
    def __init__(self, storage: Storage, on_events: Callable[[list[EventRecord]], None]) -> None:
        self._storage = storage
        # Adapters that write nothing to disk commit synchronously: no batching needed.
        self._now: Callable[[Batch], CommitResult] | None = storage.commit_now if storage.synchronous_commit else None
        #: `commit_now` may be called instead of awaiting `commit` (an attribute: read on every step).
        self.synchronous = self._now is not None
        self._on_events = on_events
        self._main = _Lane(self._commit_group, "dq-committer", storage.commit_pipeline)
        # New executions and their events only: on a storage that allows it, they
        # commit beside the main lane instead of waiting behind its transaction,
        # and concurrent start() calls share one commit.
        self._inserts = _Lane(self._commit_group, "dq-committer-inserts") if storage.concurrent_inserts else None
        # Synchronous adapters: fire-and-forget batches wait here, merged into the
        # first one as they come, for the next commit (or the end of this loop
        # iteration) and share its call.
        self._pending: Batch | None = None
        self._sends_scheduled = False
        #: `queued` for a fire-and-forget write, on any adapter: on the others the send
        #: waiting last in the main lane when the holder's writes may join it (what `send`
        #: would merge them into, without a Batch made for them first). None: make one
        #: and `send` it. (Bound once: read on every execution and step.)
        self.queued_send: Callable[[str, int], Batch | None] = (
            self.queued if self._now is not None else self._main.tail_send
        )

    def start(self) -> None:
        self._main.start()
        if self._inserts is not None:
            self._inserts.start()

    async def commit(self, batch: Batch) -> CommitResult:
        """Write `batch` (in a shared transaction); returns once it is committed."""
        if self._now is not None:
            return self.commit_now(batch)
        return await self.submit(batch)

    def commit_now(self, batch: Batch) -> CommitResult:
        """A synchronous adapter's commit of `batch` (only when `synchronous`), with the
        sends queued before it: one call, and no nested ones but the adapter's (every
        step's commit comes here, without a coroutine of its own)."""
        pending = self._pending
        if pending is not None:
            self._pending = None
            # A compare-and-set's conflict must not drop the sends, nor may a stale and
            # a fresh holder of one execution share a commit: the sends go first then.
            if batch.expect or not extend(pending, batch):
                self._apply_sends(pending)
            else:
                result = self._apply_now(pending)
                n = len(batch.updates)
                if n != len(result.applied):  # only `batch`'s updates are the caller's
                    result.applied = result.applied[len(result.applied) - n :] if n else []
                return result
        return self._apply_now(batch)

    def submit(self, batch: Batch, *, beside: bool = True) -> asyncio.Future[CommitResult]:
        """Queue `batch` now (in order with what was queued before it); the future
        resolves once it is committed. A batch of new executions only commits beside
        the main lane unless `beside` is False: the slot ledger's writes, which later
        writes (a hand-over to a waiter that batch creates) must follow."""
        fut: asyncio.Future[CommitResult] = asyncio.get_running_loop().create_future()
        if self._now is not None:
            try:
                fut.set_result(self.commit_now(batch))
            except Exception as exc:
                fut.set_exception(exc)
            return fut
        lane = self._inserts if beside and self._inserts is not None and batch.creates_only() else self._main
        lane.put(batch, fut)
        return fut

    def send(self, batch: Batch) -> None:
        """Queue `batch` without waiting (informational events). It commits in order
        with what follows, so a later awaited commit implies this one too. The batch
        is handed over: later ones may be merged into it."""
        if self._now is not None:
            pending = self._pending
            if pending is None:
                self._queue_pending(batch)
            elif not extend(pending, batch):  # a stale and a fresh holder: one after the other
                self._pending = batch
                self._apply_sends(pending)
            return
        self._main.send(batch)

    def queued(self, execution_id: str, token: int) -> Batch | None:
        """On a synchronous adapter, the batch of the writes queued for the next commit,
        fenced for `execution_id`'s holder: the caller appends its records to it in
        place (no Batch of its own: an event, a step's start and its end share one
        per execution). None on other adapters: `send` or `commit` a Batch there."""
        if self._now is None:
            return None
        pending = self._pending
        if pending is not None:
            known = pending.fences.get(execution_id)
            if known == token:
                return pending
            if known is None:
                pending.fences[execution_id] = token
                return pending
            self._pending = None  # a stale and a fresh holder: the queued writes go first
            self._apply_sends(pending)
        pending = Batch(fences={execution_id: token})
        self._queue_pending(pending)
        return pending

    def commit_queued(self) -> CommitResult:
        """Commit what `queued` returned (and what joined it since), now."""
        pending = self._pending
        assert pending is not None
        self._pending = None
        return self._apply_now(pending)

    def _queue_pending(self, batch: Batch) -> None:
        """`batch` waits for the next commit, or for the end of this loop iteration."""
        self._pending = batch
        if not self._sends_scheduled:
            self._sends_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_sends)

    def _flush_sends(self) -> None:
        self._sends_scheduled = False
        pending = self._pending
        if pending is not None:
            self._pending = None
            self._apply_sends(pending)

    def _apply_sends(self, batch: Batch) -> None:
        try:
            self._apply_now(batch)
        except Exception as exc:  # nobody awaits a send: logged
            _fail(None, exc)

    def _apply_now(self, batch: Batch) -> CommitResult:
        assert self._now is not None
        result = self._now(batch)
        if result.events:
            self._on_events(result.events)
        return result

    async def flush(self) -> None:
        self._flush_sends()
        await self._main.flush()
        if self._inserts is not None:
            await self._inserts.flush()

    async def aclose(self) -> None:
        await self.flush()
        await self._main.aclose()
        if self._inserts is not None:
            await self._inserts.aclose()

    async def _commit_group(
        self, items: list[Item]
    ) -> None:
        merged = merge([b for b, _ in items]) if len(items) > 1 else items[0][0]
        try:
            result = await self._storage.commit(merged)
        except Exception as exc:
            if len(items) == 1:
                _fail(items[0][1], exc)
                return
            # One bad batch must not fail its neighbours: retry them one by one.
            for item in items:
                await self._commit_group([item])
            return
        if result.conflict and len(items) > 1:
            # A compare-and-set that lost must not undo its neighbours: nothing was
            # written, so each goes again on its own (rare: another process wrote first).
            for item in items:
                await self._commit_group([item])
            return
        offset = 0
        for batch, fut in items:
            n = len(batch.updates)
            if fut is not None and not fut.done():
                fut.set_result(
                    CommitResult(
                        applied=result.applied[offset : offset + n],
                        refused=result.refused,
                        controls=result.controls,
                        conflict=result.conflict,
                    )
                )
            offset += n
        if result.events:
            self._on_events(result.events)



class _Lane:
    """A queue of batches and the one task that commits them, a group at a time (up
    to `depth` groups at a time, see the module's docstring)."""

    def __init__(self, commit_group: Callable[[list[Item]], Coroutine[Any, Any, None]], name: str, depth: int = 1) -> None:
        self._commit_group = commit_group
        self._name = name
        self._depth = depth
        self._queue: list[Item] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        #: Groups in flight (depth > 1), each with the executions it touches (None: it
        #: may touch anything, so nothing goes beside it).
        self._flying: dict[asyncio.Task[None], set[str] | None] = {}
        #: A queue this long is scanned again for a group to go beside those in flight
        #: (doubled after each scan that found none; reset when a group lands): the
        #: scans of a queue that grows while a commit runs cost O(its length) in all.
        self._rescan_at = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    def put(self, batch: Batch, fut: asyncio.Future[CommitResult] | None) -> None:
        self._queue.append((batch, fut))
        self._kick()

    def send(self, batch: Batch) -> None:
        """`put(batch, None)`, or `batch` appended to the queue's last batch when that one
        is a send too (handed over: nobody reads it again) and they can share it. The
        order of writes is the same; far fewer batches wait at once (a burst of jobs on
        PostgreSQL queues thousands while a commit runs: the garbage collector scanned
        every one and its lists), and the group is taken and merged in fewer steps."""
        last = self._open_send()
        if last is not None and not (batch.state or batch.expect) and extend(last, batch):
            return
        self.put(batch, None)

    def tail_send(self, execution_id: str, token: int) -> Batch | None:
        """The queue's last batch if it is a send the holder's writes may join (as
        `send` would merge them), fenced for that holder; else None."""
        last = self._open_send()
        if last is None:
            return None
        known = last.fences.setdefault(execution_id, token)
        return last if known == token else None

    def _open_send(self) -> Batch | None:
        """The queue's last batch if it is a send later sends may join: nobody awaits it,
        and it has no state or expectations (a batch's compare-and-set keys must stay
        its own, see take_group)."""
        if not self._queue:
            return None
        last, fut = self._queue[-1]
        return last if fut is None and not (last.state or last.expect) else None

    def _kick(self) -> None:
        self._idle.clear()
        self._wake.set()

    async def flush(self) -> None:
        while self._queue or not self._idle.is_set():
            self._kick()
            await self._idle.wait()

    async def aclose(self) -> None:
        tasks = [t for t in (self._task, *self._flying) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                if self._depth == 1:
                    items, self._queue = take_group(self._queue)
                    await self._commit_group(items)
                elif not self._launch():
                    break  # a group in flight is in the way: its end wakes this loop
                # What that commit woke queues its next write within two loop turns (a
                # writer resumes in the first; a slot handed on in it starts its holder in
                # the second): let it join the next group rather than wait for the one
                # after (a step slot's chains would otherwise alternate out of phase).
                for _ in range(_SETTLE_TURNS):
                    await asyncio.sleep(0)
            if not self._queue and not self._flying:
                self._idle.set()

    def _launch(self) -> bool:
        """Start committing the next group beside those in flight, if one may go now."""
        flying = self._flying
        if len(flying) >= self._depth:
            return False
        if not flying:
            items, self._queue = take_group(self._queue)
            ids = touched(items)
        else:
            if len(self._queue) < self._rescan_at:
                return False
            groups = [g for g in flying.values() if g is not None]
            if len(groups) < len(flying):  # one may touch anything: nothing goes beside it
                return False
            # One group in flight (depth 2): its own set, not a copy (take_beside copies before it adds).
            busy = groups[0] if len(groups) == 1 else set().union(*groups)
            items, self._queue, ids = take_beside(self._queue, busy)
            if not items:
                self._rescan_at = 2 * len(self._queue)
                return False
        self._rescan_at = 0
        task = asyncio.create_task(self._commit_group(items), name=self._name)
        flying[task] = ids
        task.add_done_callback(self._landed)
        return True

    def _landed(self, task: asyncio.Task[None]) -> None:
        del self._flying[task]
        self._rescan_at = 0
        if not task.cancelled() and task.exception() is not None:  # _commit_group fails its futures itself
            log.error("dq: a group commit failed: %s", task.exception())
        self._wake.set()


def _fail(fut: asyncio.Future[CommitResult] | None, exc: Exception) -> None:
    if fut is None:
        log.error("dq: a background write failed: %s", exc)
    elif not fut.done():
        fut.set_exception(exc)
