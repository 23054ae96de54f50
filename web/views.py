"""Template contexts for an execution, shared by the pages and the live hub.

Both build them from the same records (execution, steps, events), so a page
and the fragment that later replaces part of it always agree.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dq.engine.event_schema import EventKind
from dq.engine.storage.base import (
    TERMINAL,
    EventRecord,
    ExecutionQuery,
    ExecutionRecord,
    StepRecord,
    Storage,
)

from .source import short_path
from .waterfall import build_waterfall, step_attempts

if TYPE_CHECKING:
    from .dashboard import Dashboard

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def dom_id(key: str) -> str:
    """A step key as an HTML id fragment: `fetch#2` -> `fetch_23_2`."""
    return _UNSAFE.sub(lambda m: f"_{ord(m.group()):x}_", key)


def panel_id(key: str | None) -> str:
    return "panel-" + dom_id(key) if key else "panel--job"


async def read_all_events(
    storage: Storage, execution_id: str, *, upto: int | None = None, limit: int = 5000
) -> list[EventRecord]:
    """The execution's events in seq order (at most `limit`; only seq <= `upto` when given)."""
    out: list[EventRecord] = []
    after = 0
    while len(out) < limit:
        page = await storage.read_events(after, limit=1000, execution_id=execution_id)
        out.extend(e for e in page if upto is None or e.seq <= upto)
        if len(page) < 1000 or (upto is not None and page[-1].seq >= upto):
            break
        after = page[-1].seq
    return out[:limit]


async def children_of(storage: Storage, execution_id: str) -> list[ExecutionRecord]:
    return await storage.query(ExecutionQuery(parent_id=execution_id, order="oldest", limit=200))


def panel_context(
    dash: Dashboard,
    rec: ExecutionRecord,
    steps: Sequence[StepRecord],
    events: Sequence[EventRecord],
    key: str | None,
) -> dict[str, Any]:
    step = next((s for s in steps if s.key == key), None) if key else None
    src = dash.source(rec.job_name)
    highlight = step.line if step is not None else None
    if highlight is None and src is not None and key:
        highlight = src.line_of(step.name if step is not None else key)
    return {
        "rec": rec,
        "step": step,
        "step_key": key,
        "panel_id": panel_id(key),
        "attempts": step_attempts(key, events) if step is not None and key else [],
        "logs": [e for e in events if e.type == EventKind.LOG and key and e.data.get("key") == key],
        "source": src,
        "source_file_short": short_path(src.file) if src else "",
        "highlight": highlight,
        "job_missing": dash.job(rec.job_name) is None,
    }


def needs_live_step(rec: ExecutionRecord) -> bool:
    """Whether the step an active execution is in must come from its steps or events:
    storage writes `current_step` when an execution suspends or ends, not at every
    step, so a running one's stored value may be older."""
    return rec.status == "running" or (rec.current_step is None and rec.status not in TERMINAL)


def execution_context(
    dash: Dashboard,
    rec: ExecutionRecord,
    steps: Sequence[StepRecord],
    events: Sequence[EventRecord],
    children: Sequence[ExecutionRecord],
    now: int,
    *,
    key: str | None = None,
    tab: str = "trace",
) -> dict[str, Any]:
    if steps and needs_live_step(rec):
        open_steps = [s for s in steps if s.status != "completed"]
        rec.current_step = (open_steps or list(steps))[-1].key
    ctx = panel_context(dash, rec, steps, events, key)
    ctx.update(
        rec=rec,
        wf=build_waterfall(rec, steps, events, now),
        events=events,
        event_count=len(events),
        origin=events[0].at if events else rec.created_at,
        children=list(children),
        tab=tab,
        nested=False,
        read_only=dash.settings.read_only,
        now=now,
    )
    return ctx
