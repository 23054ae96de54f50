"""One loader per page: what the full page renders, what an SSE resync re-sends and what
the hub's tick refreshes are read by the same functions, so the three cannot drift.

A list of executions always gets the live step of its active rows (`Hub.fill`):
storage writes `current_step` only when an execution suspends or ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dq.engine.replay import reused_steps
from dq.engine.storage.base import ExecutionQuery, ExecutionRecord, StepRecord

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
class RetentionShown:
    #: The queue's retention policy as given (status -> how long to keep).
    policy: dict[str, Any]
    #: Executions this process's housekeeping deleted (None: no started runtime here).
    removed: int | None


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


def retention(dash: Dashboard) -> RetentionShown:
    """The overview's retention policy and how many executions it removed so far."""
    policy = dict(getattr(dash.queue, "retention", None) or {})
    housekeeping = getattr(getattr(dash.queue, "runtime", None), "housekeeping", None)
    return RetentionShown(policy, housekeeping.removed if housekeeping is not None else None)


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


#: The replays an execution page lists.
REPLAYS = 50


async def replays(dash: Dashboard, execution_id: str) -> list[ExecutionRecord]:
    """The executions that replay `execution_id` (its page links to them), newest first."""
    return await dash.storage.query(ExecutionQuery(replay_of=execution_id, limit=REPLAYS))


@dataclass(slots=True)
class ReplayRow:
    step: StepRecord
    #: Copied into the replay with its stored output, not run again.
    reused: bool


@dataclass(slots=True)
class ReplayPlan:
    rows: list[ReplayRow]
    #: The step the replay starts from ("" when `from_step` is none of the execution's).
    from_step: str


async def replay_plan(dash: Dashboard, rec: ExecutionRecord, from_step: str) -> ReplayPlan:
    """The replay dialog: each recorded step of `rec`, reused or run again from `from_step`."""
    steps = await dash.storage.get_steps(rec.id)
    chosen = from_step if any(s.key == from_step for s in steps) else ""
    reused = {s.key for s in reused_steps(steps, chosen or None, rec.id)}
    return ReplayPlan([ReplayRow(s, s.key in reused) for s in steps], chosen)


async def job_paused(dash: Dashboard, name: str) -> bool:
    """Whether `job.pause()` holds back new executions of the job (the job page's controls)."""
    return bool(await dash.storage.get_state([f"job_paused:{name}"]))
