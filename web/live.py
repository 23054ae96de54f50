"""What the live stream carries: ready HTML fragments, marked for htmx out-of-band swaps.

The hub renders each fragment once per tick and every connected page receives
the same string; the page keeps the fragments whose target it shows (see
`dq-live` in static/dq.js). Snapshot fragments (a row, a header, a waterfall)
replace their element and are idempotent; append fragments (event-log rows)
carry their own event seq so a resumed stream never repeats one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dq.engine.storage.base import EventRecord, ExecutionRecord, StepRecord
from dq.engine.why import WaitReason

from . import render

if TYPE_CHECKING:
    from .dashboard import Dashboard
from .filters import Filters
from .stats import FailureGroup, Throughput
from .tree import Node
from .views import execution_context, panel_context


@dataclass(slots=True)
class Message:
    topic: str
    seq: int
    html: str
    #: True for fragments appended to a list: delivered only when seq > what the client has.
    append: bool = False
    #: For a list row: the execution it shows (a page receives only the rows it lists).
    key: str = ""
    #: For "new" announcements: (event seq, created execution or None when not loaded),
    #: matched against each client's filters; one message per tick, whatever the count.
    created: list[tuple[int, ExecutionRecord | None]] = field(default_factory=list)


@dataclass(slots=True)
class ExecCache:
    """What the hub keeps for an execution some page is watching."""

    rec: ExecutionRecord | None = None
    steps: list[StepRecord] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)
    children: list[ExecutionRecord] = field(default_factory=list)
    loaded: bool = False
    #: The hub's head when the first page began watching: ring ticks before it lack this execution.
    since: int = 0
    #: Why it is not running (None: it runs or ended), from `dq.engine.why.explain`.
    why: WaitReason | None = None
    #: Its descendants with their steps and events (the nested waterfall), by id.
    tree: dict[str, Node] = field(default_factory=dict)
    #: The code it ran (a `RanSource`), once known.
    ran: Any = None


def template(parts: Iterable[str]) -> str:
    """Wrap each fragment in its own <template>.

    A template's first tag fixes how the rest of it parses: table rows must
    not share one with a section that holds a table (the parser would drop
    the nested table's tags), so every fragment gets its own.
    """
    return "".join(f"<template>{p}</template>" for p in parts if p)


def _ui() -> Any:
    return render.environment().globals["ui"]


def row_html(rec: ExecutionRecord, now: int) -> str:
    """One executions-list row (`row-<id>`), replaced in place."""
    return str(_ui().exec_row(rec, now, oob=True))


def minis_html(recs: Sequence[ExecutionRecord], now: int) -> str:
    """Compact rows (`mini-<id>`: an execution page's children), replaced in place."""
    ui = _ui()
    return "".join(str(ui.mini_row(r, now, oob=True)) for r in recs)


def overview_counts_html(counts: dict[str, int], recent: Sequence[ExecutionRecord], now: int) -> str:
    ctx = {"counts": counts, "recent": recent, "now": now, "oob": True}
    return render.block("overview.html", "counts", **ctx) + render.block("overview.html", "recent", **ctx)


def overview_scan_html(tp: Throughput, groups: Sequence[FailureGroup], now: int) -> str:
    ctx = {"tp": tp, "groups": groups, "now": now, "oob": True}
    return render.block("overview.html", "throughput", **ctx) + render.block("overview.html", "failures", **ctx)


def new_banner_html(f: Filters, count: int) -> str:
    return render.block("executions.html", "new_banner", f=f, new_count=count, oob=True)


def event_rows_html(events: Sequence[EventRecord], origin: int) -> str:
    rows = render.block("execution.html", "event_rows", events=events, origin=origin)
    return f'<tbody hx-swap-oob="beforeend:#event-rows">{rows}</tbody>'


def execution_html(
    dash: Dashboard,
    cache: ExecCache,
    now: int,
    *,
    keys: Iterable[str] = (),
    children: bool = False,
) -> str:
    """Header, waterfall, event count and the step panels of `keys` for one execution."""
    rec = cache.rec
    if rec is None:
        return ""
    ctx: dict[str, Any] = execution_context(
        dash, rec, cache.steps, cache.events, cache.children, now, tree=cache.tree, ran=cache.ran
    )
    ctx["oob"] = True
    ctx["why"] = cache.why
    parts = [
        render.block("execution.html", "header", **ctx),
        render.block("execution.html", "waterfall", **ctx),
        f'<span id="event-count" class="count" hx-swap-oob="true">{len(cache.events)}</span>',
    ]
    if children:
        parts.append(render.block("execution.html", "children", **ctx))
    for key in keys:
        pctx = panel_context(dash, rec, cache.steps, cache.events, key, cache.ran)
        pctx["oob"] = True
        parts.append(_panel_inner(pctx))
    return "".join(parts)


def _panel_inner(ctx: dict[str, Any]) -> str:
    """Only the inner, id-bearing div of the step panel (the aside stays in place)."""
    html = render.page("step_panel.html", **ctx)
    start = html.find("<div id=")
    end = html.rfind("</aside>")
    return html[start:end].strip() if start >= 0 and end > start else ""


def execution_rows_html(rows: Sequence[ExecutionRecord], now: int) -> str:
    """The whole executions table body (a client that missed too much is resynced with it)."""
    ui = _ui()
    body = "".join(str(ui.exec_row(r, now)) for r in rows)
    return f'<tbody id="exec-rows" hx-swap-oob="true">{body}</tbody>'
