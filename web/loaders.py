"""One loader per page: what the full page renders, what an SSE resync re-sends and what
the hub's tick refreshes are read by the same functions, so the three cannot drift.

A list of executions always gets the live step of its active rows (`Hub.fill`):
storage writes `current_step` only when an execution suspends or ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dq.engine.storage.base import ExecutionQuery, ExecutionRecord

from .filters import Filters
from .live import ExecCache
from .stats import FailureGroup, Throughput, failure_groups, status_counts, throughput
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


async def execution(dash: Dashboard, execution_id: str, *, upto: int | None = None) -> ExecCache | None:
    """One execution with its steps, events (up to seq `upto`) and children."""
    storage = dash.storage
    rec = await storage.get_execution(execution_id)
    if rec is None:
        return None
    return ExecCache(
        rec=rec,
        steps=await storage.get_steps(execution_id),
        events=await read_all_events(storage, execution_id, upto=upto),
        children=await children_of(storage, execution_id),
        loaded=True,
    )
