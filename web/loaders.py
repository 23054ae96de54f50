"""One loader per page: what the full page renders, what an SSE resync re-sends and what
the hub's tick refreshes are read by the same functions, so the three cannot drift.

A list of executions always gets the live step of its active rows (`Hub.fill`):
storage writes `current_step` only when an execution suspends or ends.

The Schedules, Pipes and Workers pages are read once per request (`schedules`,
`pipes`, `workers`). Who waits on a pipe: running executions whose open step is
a wait on it. The hub knows each execution's current step from the events it
followed; those it has not seen (they began waiting before this server started)
are read from their steps, at most `_STEP_READS` of them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dq.engine.event_schema import EventKind
from dq.engine.replay import reused_steps
from dq.engine.scheduler import next_fires, schedule_paused_key
from dq.engine.storage.base import (
    TERMINAL,
    EventRecord,
    ExecutionQuery,
    ExecutionRecord,
    PipeMessage,
    StepRecord,
    Storage,
)
from dq.engine.why import explain

from .cron_words import describe
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
#: Messages shown per pipe.
RECENT_MESSAGES = 20
_STEP_READS = 200


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


# --- Schedules, Workers, Pipes -------------------------------------------------


@dataclass(slots=True)
class Schedule:
    job: str
    expr: str
    tz: str
    words: str
    next_fires: list[int]
    last: ExecutionRecord | None
    paused: bool


def cron_of(job: Any) -> tuple[str, str] | None:
    """(expression, time zone) of a cron job: a string, or {"expr", "tz"}."""
    cron = getattr(getattr(job, "options", None), "cron", None)
    if not cron:
        return None
    if isinstance(cron, Mapping):
        return str(cron.get("expr")), str(cron.get("tz") or "UTC")
    return str(cron), "UTC"


async def schedules(dash: Dashboard, now: int) -> list[Schedule]:
    """The Schedules page: each cron job's expression in words, next fires, last run."""
    out = []
    jobs = dash.jobs
    cron_jobs = [(name, cron_of(job)) for name, job in sorted(jobs.items())]
    keys = [schedule_paused_key(name) for name, cron in cron_jobs if cron]
    paused = await dash.storage.get_state(keys) if keys else {}
    for name, cron in cron_jobs:
        if cron is None:
            continue
        expr, tz = cron
        schedule = getattr(jobs[name], "cron", None)  # parsed when the job was defined
        fires = next_fires(schedule, now, 5) if schedule is not None else []
        last = await dash.storage.query(ExecutionQuery(job_names=[name], limit=1))
        out.append(Schedule(name, expr, tz, describe(expr), fires, last[0] if last else None,
                            bool(paused.get(schedule_paused_key(name)))))  # fmt: skip
    return out


@dataclass(slots=True)
class PipeView:
    name: str
    schema: str
    messages: list[PipeMessage] = field(default_factory=list)
    waiting: list[ExecutionRecord] = field(default_factory=list)
    form: str = "{}"
    error: str | None = None


async def recent_messages(storage: Storage, pipe: str, n: int = RECENT_MESSAGES) -> list[PipeMessage]:
    """The last `n` messages, newest first, reading back in growing windows of sequence
    numbers (they are shared by all pipes) instead of from the start."""
    last = await storage.last_message_seq(pipe)
    window = n * 4
    while True:
        after = max(0, last - window)
        found = await storage.read_messages(pipe, after, limit=100_000)
        if len(found) >= n or after == 0:
            return list(reversed(found[-n:]))
        window *= 8


async def waiting_on(dash: Dashboard) -> dict[str, list[ExecutionRecord]]:
    """pipe name -> running executions whose open step waits on it."""
    storage = dash.storage
    running = await storage.query(ExecutionQuery(statuses=("running",), limit=2000))
    out: dict[str, list[ExecutionRecord]] = {}
    reads = 0
    for rec in running:
        key = dash.hub.current.get(rec.id)
        name: str | None = None
        if key is not None:
            name = key[5:].split("#", 1)[0] if key.startswith("wait:") else None
        elif reads < _STEP_READS:
            reads += 1
            open_waits = [s for s in await storage.get_steps(rec.id) if s.kind == "wait" and s.status == "running"]
            if open_waits and isinstance(open_waits[-1].output, dict) and "after_seq" in open_waits[-1].output:
                name = open_waits[-1].name
        if name is not None:
            out.setdefault(name, []).append(rec)
    return out


def pipe_schema(pipe: Any) -> tuple[str, str]:
    model = getattr(pipe, "input", None)
    fields = getattr(model, "model_fields", None)
    if model is None or not fields:
        return (getattr(model, "__name__", "any JSON value") if model is not None else "any JSON value"), "{}"
    hint = ", ".join(f"{n}: {getattr(f.annotation, '__name__', str(f.annotation))}" for n, f in fields.items())
    return f"{model.__name__} {{{hint}}}", json.dumps({n: "" for n in fields}, indent=2)


async def pipes(dash: Dashboard) -> list[PipeView]:
    """The Pipes page: each pipe's schema, recent messages and who waits on it."""
    pipes = dash.queue.pipes
    waiting = await waiting_on(dash)
    views = []
    for name in sorted(pipes):
        pipe = pipes[name]
        schema, skeleton = pipe_schema(pipe.pipe)
        views.append(PipeView(pipe.name, schema, await recent_messages(dash.storage, pipe.name),
                              waiting.get(pipe.name, []), skeleton))  # fmt: skip
    return views


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
