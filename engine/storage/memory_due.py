"""The memory adapter's claim order: claimable executions by priority, then due time, then id.

A claim (and `next_due`) used to look at every claimable execution: with a backlog
of N stored beyond a queue's `concurrency`, each of the N/limit claims that drain
it cost O(N). Here one heap per priority level, of (run_at, id), is kept as records
become claimable or change while claimable; an entry is only trusted if the record
is still claimable with that due time and priority (older entries are dropped as
they surface), so no write has to find and remove one.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable

from .base import ExecutionRecord


class DueIndex:
    def __init__(self, records: dict[str, ExecutionRecord], claimable: set[str]) -> None:
        self._records, self._claimable = records, claimable
        #: priority -> heap of (run_at, id)
        self._levels: dict[int, list[tuple[int, str]]] = {}
        #: The levels' priorities, ascending (walked from the end: highest first).
        self._order: list[int] = []
        self._entries = 0

    def add(self, rec: ExecutionRecord) -> None:
        """`rec` is claimable (newly, or with a due time or priority that may have changed)."""
        heap = self._levels.get(rec.priority)
        if heap is None:
            heap = self._levels[rec.priority] = []
            bisect.insort(self._order, rec.priority)
        heapq.heappush(heap, (rec.run_at, rec.id))
        self._entries += 1
        if self._entries > 2 * len(self._claimable) + 1024:
            self._rebuild()

    def _valid(self, priority: int, run_at: int, eid: str) -> ExecutionRecord | None:
        if eid not in self._claimable:
            return None
        rec = self._records.get(eid)
        if rec is None or rec.run_at != run_at or rec.priority != priority:
            return None
        return rec

    def take(self, now: int, limit: int, wanted: Callable[[ExecutionRecord], bool]) -> list[ExecutionRecord]:
        """Up to `limit` claimable records due by `now` that `wanted` accepts, in claim
        order (higher priority, then earlier due, then id), taken out of the index:
        the caller makes them non-claimable."""
        out: list[ExecutionRecord] = []
        for priority in reversed(self._order):
            heap = self._levels[priority]
            skipped: list[tuple[int, str]] = []
            while heap and len(out) < limit and heap[0][0] <= now:
                entry = heapq.heappop(heap)
                self._entries -= 1
                rec = self._valid(priority, *entry)
                if rec is None:
                    continue
                if not wanted(rec):  # e.g. a paused job: stays in line
                    skipped.append(entry)
                    continue
                out.append(rec)
                self._claimable.discard(rec.id)  # a duplicate entry is no longer valid
            for entry in skipped:
                heapq.heappush(heap, entry)
                self._entries += 1
            if len(out) >= limit:
                break
        return out

    def earliest(self, wanted: Callable[[ExecutionRecord], bool]) -> int | None:
        """The earliest due time of a claimable record `wanted` accepts."""
        best: int | None = None
        for priority in self._order:
            heap = self._levels[priority]
            while heap and self._valid(priority, *heap[0]) is None:
                heapq.heappop(heap)
                self._entries -= 1
            if not heap:
                continue
            rec = self._records[heap[0][1]]
            if wanted(rec):
                at = heap[0][0]
            else:  # the head is filtered out (a paused job): look at the whole level
                times = [at for at, e in heap if (r := self._valid(priority, at, e)) is not None and wanted(r)]
                if not times:
                    continue
                at = min(times)
            best = at if best is None else min(best, at)
        return best

    def _rebuild(self) -> None:
        """Drop the entries no longer valid (written over many times while claimable)."""
        self._levels, self._order = {}, []
        self._entries = 0
        claimable = list(self._claimable)
        for eid in claimable:
            rec = self._records.get(eid)
            if rec is not None:
                self._levels.setdefault(rec.priority, []).append((rec.run_at, rec.id))
                self._entries += 1
        for heap in self._levels.values():
            heapq.heapify(heap)
        self._order = sorted(self._levels)
