"""Bulk lifecycle operations over a query: cancel, pause, resume, retry and replay all matches.

Memory stays bounded whatever the filter matches: executions are read one
page (`PAGE`) at a time by keyset over their ids, and each page is acted on
with at most `PARALLEL` operations in flight. Each operation is the ordinary
one-execution lifecycle call (same conditions, hooks, cascades and events),
so a bulk action means exactly what the same calls one by one would; the
committer groups their concurrent writes into few transactions.

The walk goes from the newest match to the oldest: executions created while
it runs (a replay_all's replays, new triggers) have greater ids than its
cursor and are never visited, so a bulk call ends even when its own effects
match its filter. With `order="oldest"` it walks the other way and stops at
the newest id that existed when it began.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from .errors import DqError
from .storage.base import ACTIVE, TERMINAL, ExecutionQuery, ExecutionRecord

if TYPE_CHECKING:
    from .queue import Queue

PAGE = 500
PARALLEL = 32

Act = Callable[[ExecutionRecord], Awaitable[bool]]
Progress = Callable[[int, int], None]

#: Which statuses each bulk action can change (a status filter is narrowed to these).
APPLIES_TO: dict[str, tuple[str, ...]] = {
    "cancel": tuple(sorted(ACTIVE)),
    "pause": ("pending", "running", "waiting"),
    "resume": ("paused", "running"),
    "retry": ("failed",),
    "replay": tuple(sorted(TERMINAL)),
}
#: A status filter may widen these defaults: retry also takes cancelled executions.
_ALLOWED = {**APPLIES_TO, "retry": ("cancelled", "failed")}


def scope(action: str, query: ExecutionQuery) -> ExecutionQuery | None:
    """`query` narrowed to the statuses `action` can change; None when none remain."""
    if query.statuses is None:
        statuses = list(APPLIES_TO[action])
    else:
        statuses = [s for s in dict.fromkeys(query.statuses) if s in _ALLOWED[action]]
    return replace(query, statuses=statuses) if statuses else None


class Bulk:
    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    async def run(
        self, action: str, query: ExecutionQuery, act: Act, progress: Progress | None = None
    ) -> int:
        """Apply `act` to every execution `query` matches within `action`'s statuses;
        the number for which it returned True. `progress(seen, done)` after each page."""
        scoped = scope(action, query)
        if scoped is None:
            return 0
        storage = self.queue.storage
        newest = scoped.order == "newest"
        stop: str | None = None
        if not newest:
            latest = await storage.query(replace(scoped, order="newest", limit=1, offset=0, cursor=None))
            if not latest:
                return 0
            stop = latest[0].id
        cap, skip = scoped.limit, scoped.offset
        page_query = replace(scoped, limit=PAGE, offset=0)
        gate = asyncio.Semaphore(PARALLEL)
        seen = done = 0

        async def one(rec: ExecutionRecord) -> bool:
            async with gate:
                return await act(rec)

        while cap is None or seen < cap:
            page = await storage.query(page_query)
            if not page:
                break
            page_query.cursor = page[-1].id
            if stop is not None:
                page = [r for r in page if r.id <= stop]
            if skip:
                page, skip = page[skip:], max(0, skip - len(page))
            if cap is not None:
                page = page[: cap - seen]
            seen += len(page)
            done += sum(await asyncio.gather(*(one(r) for r in page)))
            if progress is not None:
                progress(seen, done)
            if stop is not None and page_query.cursor >= stop:
                break
        return done

    # -- the operations -------------------------------------------------------------------
    async def cancel_all(self, query: ExecutionQuery, reason: str | None = None, *,
                         by: str = "bulk", progress: Progress | None = None) -> int:  # fmt: skip
        lifecycle = self.queue.lifecycle
        return await self.run("cancel", query, lambda r: lifecycle.cancel(r.id, reason, by=by), progress)

    async def pause_all(self, query: ExecutionQuery, *, by: str = "bulk", progress: Progress | None = None) -> int:
        lifecycle = self.queue.lifecycle
        return await self.run("pause", query, lambda r: lifecycle.pause(r.id, by=by), progress)

    async def resume_all(self, query: ExecutionQuery, *, by: str = "bulk", progress: Progress | None = None) -> int:
        lifecycle = self.queue.lifecycle
        return await self.run("resume", query, lambda r: lifecycle.resume(r.id, by=by), progress)

    async def retry_all(self, query: ExecutionQuery, *, by: str = "bulk", progress: Progress | None = None) -> int:
        lifecycle = self.queue.lifecycle
        return await self.run("retry", query, lambda r: lifecycle.retry(r.id, by=by), progress)

    async def replay_all(self, query: ExecutionQuery, from_step: str | None = None, *,
                         by: str = "bulk", progress: Progress | None = None) -> int:  # fmt: skip
        """Replay each match; with `from_step`, those that did not record that step are
        left out (and not counted)."""
        replayer = self.queue.replayer
        steps_of = self.queue.storage.get_steps

        async def replay(rec: ExecutionRecord) -> bool:
            if from_step is not None and not any(s.key == from_step for s in await steps_of(rec.id)):
                return False
            try:
                await replayer.replay(rec.id, from_step, by=by)
            except DqError:  # it was retried or deleted since the page was read
                return False
            return True

        return await self.run("replay", query, replay, progress)
