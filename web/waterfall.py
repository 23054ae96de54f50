"""The execution waterfall, computed server-side: one row per step, one segment per attempt.

Positions are percentages of the execution's time span, so the template only
writes `left`/`width` styles. Attempts come from the event log (a step record
keeps only its latest attempt); the step records fill in what events lack.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dq.engine.event_schema import EventKind
from dq.engine.storage.base import TERMINAL, EventRecord, ExecutionRecord, StepRecord

from .format import duration

_MIN_WIDTH = 0.35  # percent: a 1 ms step stays visible


@dataclass(slots=True)
class Segment:
    left: float
    width: float
    status: str  # completed | failed | retrying | running | waiting | paused | cancelled | backoff
    title: str
    attempt: int = 1

    @property
    def style(self) -> str:
        return f"left:{self.left:.3f}%;width:{self.width:.3f}%"


@dataclass(slots=True)
class Row:
    key: str
    name: str
    kind: str
    status: str
    segments: list[Segment] = field(default_factory=list)
    attempts: int = 1
    line: int | None = None
    duration_ms: int | None = None
    #: Epoch ms the open attempt started (the template shows a live clock).
    running_since: int | None = None
    #: Epoch ms a sleep wakes (the template shows a countdown).
    until: int | None = None
    child_id: str | None = None


@dataclass(slots=True)
class Waterfall:
    start: int
    end: int
    job: Row
    rows: list[Row]
    ticks: list[tuple[float, str]]

    @property
    def span_ms(self) -> int:
        return self.end - self.start


@dataclass(slots=True)
class _Open:
    at: int
    attempt: int
    by: str = "step_start"


def _span(rec: ExecutionRecord, steps: Sequence[StepRecord], events: Sequence[EventRecord], now: int) -> tuple[int, int]:
    times = [rec.created_at] if rec.created_at else []
    times += [e.at for e in events if e.at]
    times += [s.started_at for s in steps if s.started_at]
    start = min(times) if times else now
    if rec.status in TERMINAL and rec.completed_at:
        end = max(rec.completed_at, max((e.at for e in events), default=rec.completed_at))
    else:
        end = max(now, max((e.at for e in events), default=now))
    return start, max(end, start + 1)


class _Scale:
    def __init__(self, start: int, end: int) -> None:
        self.start, self.span = start, max(1, end - start)

    def seg(self, t0: int, t1: int, status: str, title: str, attempt: int = 1) -> Segment:
        left = (t0 - self.start) / self.span * 100
        width = max(_MIN_WIDTH, (t1 - t0) / self.span * 100)
        left = min(max(left, 0.0), 100 - _MIN_WIDTH)
        width = min(width, 100 - left)
        return Segment(left=left, width=width, status=status, title=title, attempt=attempt)


def _open_status(rec: ExecutionRecord, kind: str) -> str:
    if rec.status == "running":
        return "waiting" if kind in ("sleep", "child", "wait") else "running"
    if rec.status in ("waiting", "paused", "pending"):
        return "waiting" if kind in ("sleep", "child", "wait") else rec.status
    return "cancelled"


def _step_row(
    step: StepRecord | None, key: str, evs: list[EventRecord], rec: ExecutionRecord, sc: _Scale, now: int
) -> Row:
    first = evs[0].data if evs else {}
    kind = step.kind if step else str(first.get("kind") or "run")
    row = Row(
        key=key,
        name=step.name if step else str(first.get("name") or key),
        kind=kind,
        status=step.status if step else "running",
        line=step.line if step else first.get("line"),
        attempts=step.attempt if step else 1,
    )
    opened: _Open | None = None
    last_fail: int | None = None
    first_at: int | None = None
    last_end: int | None = None
    for ev in evs:
        d = ev.data
        attempt = int(d.get("attempt") or 1)
        if ev.type in (EventKind.SLEEP, EventKind.WAIT):
            if ev.type == EventKind.SLEEP and d.get("until"):
                row.until = int(d["until"])
            if ev.type == EventKind.WAIT and d.get("child_id"):
                row.child_id = str(d["child_id"])
        if ev.type == EventKind.STEP_START or (ev.type in (EventKind.SLEEP, EventKind.WAIT) and opened is None):
            if opened is not None:  # interrupted (crash or replay): close it where the next began
                row.segments.append(sc.seg(opened.at, ev.at, "cancelled", "interrupted", opened.attempt))
            if last_fail is not None:
                row.segments.append(sc.seg(last_fail, ev.at, "backoff", "backoff"))
                last_fail = None
            opened = _Open(ev.at, attempt, ev.type)
            first_at = ev.at if first_at is None else first_at
            row.attempts = max(row.attempts, attempt)
        elif ev.type in (EventKind.STEP_SUCCESS, EventKind.STEP_FAILURE) or (
            ev.type == EventKind.WAKE and opened is not None and opened.by != EventKind.STEP_START
        ):
            at = opened.at if opened else ev.at
            att = opened.attempt if opened else attempt
            if ev.type == EventKind.STEP_FAILURE:
                retry = bool(d.get("will_retry"))
                err = d.get("error") or {}
                title = f"attempt {att} failed: {err.get('type', 'Error')}: {err.get('message', '')}"
                row.segments.append(sc.seg(at, ev.at, "retrying" if retry else "failed", title, att))
                last_fail = ev.at if retry else None
            else:
                label = f"attempt {att}: {duration(ev.at - at)}" if row.attempts > 1 else duration(ev.at - at)
                row.segments.append(sc.seg(at, ev.at, "completed", label, att))
            first_at = at if first_at is None else first_at
            last_end = ev.at
            opened = None
    if step is not None and not evs and step.started_at:  # no events: use the record alone
        end = step.completed_at or now
        status = step.status if step.completed_at else _open_status(rec, step.kind)
        row.segments.append(sc.seg(step.started_at, end, status, step.status, step.attempt))
        first_at, last_end = step.started_at, step.completed_at
        if not step.completed_at:
            row.running_since = step.started_at
    if opened is not None:
        terminal = rec.status in TERMINAL
        end = (rec.completed_at or now) if terminal else now
        status = "cancelled" if terminal else _open_status(rec, kind)
        row.segments.append(sc.seg(opened.at, end, status, status, opened.attempt))
        if not terminal:
            row.running_since = opened.at
            row.status = status
    elif last_fail is not None and rec.status not in TERMINAL:
        row.segments.append(sc.seg(last_fail, now, "backoff", "waiting to retry"))
    tries = sum(1 for s in row.segments if s.status != "backoff")
    row.attempts = max(row.attempts, tries)
    if first_at is not None and last_end is not None and row.running_since is None:
        row.duration_ms = last_end - first_at
    if row.child_id is None and step is not None and isinstance(step.output, dict):
        child = step.output.get("child_id") or step.output.get("execution_id") or step.output.get("id")
        row.child_id = str(child) if child else None
    return row


#: How an attempt's bar ends, by the event that closes it.
_ATTEMPT_ENDS: dict[str, str] = {EventKind.ERROR: "retrying", EventKind.SUCCESS: "completed", EventKind.FAILURE: "failed"}


def _job_row(rec: ExecutionRecord, events: Sequence[EventRecord], sc: _Scale, now: int) -> Row:
    row = Row(key="", name=rec.job_name, kind="job", status=rec.status, attempts=rec.retry_count + 1)
    opened: _Open | None = None
    for ev in events:
        d = ev.data
        if ev.type == EventKind.START:
            if opened is None:
                opened = _Open(ev.at, int(d.get("attempt") or 1))
        elif ev.type in (EventKind.ERROR, EventKind.SUCCESS, EventKind.FAILURE, EventKind.CANCEL) and opened is not None:
            status = _ATTEMPT_ENDS.get(ev.type, "cancelled")
            row.segments.append(sc.seg(opened.at, ev.at, status, f"attempt {opened.attempt}", opened.attempt))
            opened = None
        if ev.type == EventKind.RETRY and d.get("run_at"):
            row.segments.append(sc.seg(ev.at, int(d["run_at"]), "backoff", f"retry in {duration(d.get('delay_ms'))}"))
    if opened is not None:
        end = rec.completed_at or now
        row.segments.append(sc.seg(opened.at, end, rec.status, rec.status, opened.attempt))
    if not row.segments and rec.started_at:
        row.segments.append(sc.seg(rec.started_at, rec.completed_at or now, rec.status, rec.status))
    if rec.started_at:
        if rec.completed_at:
            row.duration_ms = rec.completed_at - rec.started_at
        elif rec.status not in TERMINAL:
            row.running_since = rec.started_at
    return row


def _ticks(span_ms: int, n: int = 4) -> list[tuple[float, str]]:
    return [(i * 100 / n, "0" if i == 0 else "+" + duration(span_ms * i / n)) for i in range(n + 1)][:-1]


def build_waterfall(
    rec: ExecutionRecord,
    steps: Sequence[StepRecord],
    events: Sequence[EventRecord],
    now: int,
) -> Waterfall:
    events = sorted(events, key=lambda e: e.seq)
    start, end = _span(rec, steps, events, now)
    sc = _Scale(start, end)
    by_key: dict[str, list[EventRecord]] = {}
    order: list[str] = []
    for ev in events:
        key = ev.data.get("key") if isinstance(ev.data, dict) else None
        if ev.type in (EventKind.STEP_START, EventKind.STEP_SUCCESS, EventKind.STEP_FAILURE, EventKind.SLEEP, EventKind.WAIT, EventKind.WAKE) and key:
            if key not in by_key:
                by_key[key] = []
                order.append(key)
            by_key[key].append(ev)
        elif ev.type == EventKind.WAKE:  # a wake without a key closes the most recent open sleep
            for k in reversed(order):
                if by_key[k][-1].type == EventKind.SLEEP:
                    by_key[k].append(ev)
                    break
    records = {s.key: s for s in steps}
    keys = [s.key for s in sorted(steps, key=lambda s: s.seq)]
    keys += [k for k in order if k not in records]
    rows = [_step_row(records.get(k), k, by_key.get(k, []), rec, sc, now) for k in keys]
    return Waterfall(start=start, end=end, job=_job_row(rec, events, sc, now), rows=rows, ticks=_ticks(end - start))


def step_attempts(key: str, events: Sequence[EventRecord]) -> list[dict[str, Any]]:
    """Per attempt of one step: number, start, end, duration, outcome and error (for the step panel)."""
    out: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for ev in sorted(events, key=lambda e: e.seq):
        if not isinstance(ev.data, dict) or ev.data.get("key") != key:
            continue
        if ev.type in (EventKind.STEP_START, EventKind.SLEEP, EventKind.WAIT) and (cur is None or ev.type == EventKind.STEP_START):
            if cur is not None:
                cur["outcome"] = "interrupted"
                out.append(cur)
            cur = {"attempt": int(ev.data.get("attempt") or 1), "start": ev.at, "end": None,
                   "outcome": "running", "error": None}  # fmt: skip
        elif ev.type in (EventKind.STEP_SUCCESS, EventKind.STEP_FAILURE) and cur is not None:
            cur["end"] = ev.at
            cur["outcome"] = "completed" if ev.type == EventKind.STEP_SUCCESS else (
                "retrying" if ev.data.get("will_retry") else "failed")  # fmt: skip
            cur["error"] = ev.data.get("error")
            out.append(cur)
            cur = None
    if cur is not None:
        out.append(cur)
    return out
