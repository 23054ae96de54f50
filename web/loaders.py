"""One loader per page: what the full page renders, what an SSE resync re-sends and what
the hub's tick refreshes are read by the same functions, so the three cannot drift.

A list of executions always gets the live step of its active rows (`Hub.fill`):
storage writes `current_step` only when an execution suspends or ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dq.engine.event_schema import EventKind
from dq.engine.storage.base import TERMINAL, EventRecord, ExecutionQuery, ExecutionRecord
from dq.engine.why import explain

from .filters import Filters
from .live import ExecCache
from .ran_source import ran_source
from .stats import FailureGroup, Throughput, failure_groups, status_counts, throughput
from .tree import load_tree
from .views import children_of, read_all_events

if TYPE_CHECKING:
    from .dashboard import Dashboard

#: The overview's "recent executions" table.
RECENT = 12


@dataclass(slots=True)
class OverviewCounts:
    counts: dict[str, int]
    recent: list[ExecutionRecord]


@dataclass(slots=True)
class OverviewScan:
    tp: Throughput
    groups: list[FailureGroup]


@dataclass(slots=True)
class ExecutionsRows:
    rows: list[ExecutionRecord]
    #: More rows than the page shows lie beyond it (in its direction).
    more: bool


async def overview_counts(dash: Dashboard) -> OverviewCounts:
    """The overview's status counts and recent executions (refreshed every tick)."""
    counts = await status_counts(dash.storage)
    recent = await dash.storage.query(ExecutionQuery(limit=RECENT))
    return OverviewCounts(counts, dash.hub.filled(recent))


async def overview_scan(dash: Dashboard, now: int) -> OverviewScan:
    """The overview's throughput and failure groups (refreshed less often: they aggregate)."""
    tp = await throughput(dash.storage, now)
    groups = await failure_groups(dash.storage, dash.jobs, now)
    return OverviewScan(tp, list(groups))


async def executions_rows(dash: Dashboard, f: Filters) -> ExecutionsRows:
    """The rows of one page of the executions list, newest first."""
    rows = await dash.storage.query(f.page_query())
    more = len(rows) > f.limit
    rows = dash.hub.filled(rows[: f.limit])
    if f.before:
        rows.reverse()
    return ExecutionsRows(rows, more)


async def rows_by_id(dash: Dashboard, ids: Sequence[str]) -> list[ExecutionRecord]:
    """The rows of executions that changed (the hub replaces them in every list shown)."""
    if not ids:
        return []
    return dash.hub.filled(await dash.storage.query(ExecutionQuery(ids=list(ids), limit=len(ids))))


async def execution(dash: Dashboard, execution_id: str, now: int, *, upto: int | None = None) -> ExecCache | None:
    """One execution with its steps, events (up to seq `upto`), children, why it is not
    running, its descendants' trace and the code it ran."""
    storage = dash.storage
    rec = await storage.get_execution(execution_id)
    if rec is None:
        return None
    cache = ExecCache(
        rec=rec,
        steps=await storage.get_steps(execution_id),
        events=await read_all_events(storage, execution_id, upto=upto),
        children=await children_of(storage, execution_id),
        loaded=True,
    )
    await execution_extras(dash, cache, now)
    return cache


async def execution_extras(
    dash: Dashboard, cache: ExecCache, now: int, new_events: Sequence[EventRecord] | None = None
) -> None:
    """Fill what the execution page shows beyond its own records: `why` (not running),
    `tree` (its descendants, the nested waterfall) and `ran` (the code it ran). The hub
    passes the tick's `new_events`: descendants that ended are kept from the last
    tick, and the source is read again only when an attempt started."""
    rec = cache.rec
    if rec is None:
        return
    cache.why = await explain(dash.queue, rec, now) if rec.status not in TERMINAL else None
    if cache.children:
        cache.tree = await load_tree(dash.storage, rec, cache.tree)
    if new_events is None or cache.ran is None or any(e.type == EventKind.START for e in new_events):
        cache.ran = await ran_source(dash, rec, cache.events)
