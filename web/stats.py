"""Figures the overview and the job pages show: counts, throughput, failure groups, percentiles.

Each function costs one storage query (failure groups add one per newly
failed execution, to find its failed step; cached afterwards).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from dq.engine.storage.base import (
    STATUSES,
    Aggregate,
    ExecutionQuery,
    ExecutionRecord,
    Storage,
    TimeBuckets,
)

from .format import error_type
from .source import job_source
from .sparkline import sparkline

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


async def status_counts(storage: Storage, query: ExecutionQuery | None = None) -> dict[str, int]:
    found = await storage.count(query or ExecutionQuery())
    return {s: int(found.get(s, 0)) for s in STATUSES}


@dataclass(slots=True)
class Throughput:
    completed: list[int]
    failed: list[int]
    svg: Any
    total_completed: int
    total_failed: int
    per_minute: float


def _windows(field: Literal["created_at", "completed_at"], now: int, width_ms: int, n: int) -> TimeBuckets:
    """`n` windows of `width_ms` ending at `now` (the last one holds `now`)."""
    return TimeBuckets(field, now + 1 - width_ms * n, width_ms, n)


def _total(agg: Aggregate, status: str, n: int) -> list[int]:
    out = [0] * n
    for (_job, st), row in agg.counts.items():
        if st == status:
            out = [a + b for a, b in zip(out, row, strict=True)]
    return out


async def throughput(storage: Storage, now: int, *, minutes: int = 60) -> Throughput:
    """Completions and failures per minute: one aggregating query, no records loaded."""
    windows = _windows("completed_at", now, 60_000, minutes)
    agg = await storage.aggregate(ExecutionQuery(statuses=("completed", "failed")), windows)
    ok_b, bad_b = _total(agg, "completed", minutes), _total(agg, "failed", minutes)
    done, bad = sum(ok_b), sum(bad_b)
    label = f"{done} completed and {bad} failed in the last {minutes} minutes"
    return Throughput(
        completed=ok_b,
        failed=bad_b,
        svg=sparkline(ok_b, bad_b, width=600, height=70, label=label),
        total_completed=done,
        total_failed=bad,
        per_minute=done / max(1, minutes),
    )


@dataclass(slots=True)
class FailureGroup:
    job_name: str
    error_type: str
    step: str
    line: int | None
    count: int
    last_at: int
    message: str
    example_id: str


#: (execution id, completed_at) -> (failed step key, its line). A failed execution's steps
#: never change until it is retried (which changes completed_at), so each costs one read.
_FAILED_STEPS: OrderedDict[tuple[str, int | None], tuple[str, int | None]] = OrderedDict()


async def _failed_step(storage: Storage, rec: ExecutionRecord) -> tuple[str, int | None]:
    key = (rec.id, rec.completed_at)
    found = _FAILED_STEPS.get(key)
    if found is None:
        steps = await storage.get_steps(rec.id)
        bad = [s for s in steps if s.status == "failed"] or [s for s in steps if s.status != "completed"]
        step = bad[-1] if bad else None
        found = (step.key, step.line) if step is not None else (rec.current_step or "", None)
        _FAILED_STEPS[key] = found
        while len(_FAILED_STEPS) > 5000:
            _FAILED_STEPS.popitem(last=False)
    return found


def _line_in_handler(rec: ExecutionRecord, file: str | None) -> int | None:
    tb = str((rec.error or {}).get("traceback") or "")
    line = None
    for path, no in _FRAME.findall(tb):
        if file and path == file:
            line = int(no)
    return line


async def failure_groups(
    storage: Storage, jobs: Mapping[str, Any], now: int, *, window_ms: int = DAY_MS, top: int = 8
) -> list[FailureGroup]:
    """Failed executions of the window grouped by job, error type, step and source line."""
    recs = await storage.query(
        ExecutionQuery(statuses=("failed",), completed_after=now - window_ms, limit=2000)
    )
    groups: dict[tuple[str, str, str, int | None], FailureGroup] = {}
    for rec in recs:
        job = jobs.get(rec.job_name)
        src = job_source(getattr(job, "handler", None)) if job is not None else None
        step, step_line = await _failed_step(storage, rec)
        line = step_line or _line_in_handler(rec, src.file if src else None)
        if line is None and src is not None and step:
            line = src.line_of(step)
        key = (rec.job_name, error_type(rec.error), step.split("#", 1)[0], line)
        grp = groups.get(key)
        at = rec.completed_at or rec.created_at
        if grp is None:
            groups[key] = FailureGroup(
                job_name=rec.job_name, error_type=key[1] or "Error", step=key[2], line=line,
                count=1, last_at=at, message=_message(rec), example_id=rec.id,
            )  # fmt: skip
        else:
            grp.count += 1
            if at > grp.last_at:
                grp.last_at, grp.message, grp.example_id = at, _message(rec), rec.id
    return sorted(groups.values(), key=lambda g: (-g.count, -g.last_at))[:top]


def _message(rec: ExecutionRecord) -> str:
    return " ".join(str((rec.error or {}).get("message") or "").split())[:200]


def _pct(sorted_values: list[int], p: float) -> int | None:
    if not sorted_values:
        return None
    idx = min(len(sorted_values) - 1, max(0, round(p * (len(sorted_values) - 1))))
    return sorted_values[idx]


@dataclass(slots=True)
class JobStats:
    runs: int = 0
    completed: int = 0
    failed: int = 0
    active: int = 0
    durations: list[int] = field(default_factory=list)
    hourly: list[int] = field(default_factory=list)
    spark: Any = None

    @property
    def failure_rate(self) -> float | None:
        settled = self.completed + self.failed
        return self.failed / settled if settled else None

    @property
    def p50(self) -> int | None:
        return _pct(self.durations, 0.5)

    @property
    def p95(self) -> int | None:
        return _pct(self.durations, 0.95)


async def job_stats(
    storage: Storage, names: list[str], now: int, *, window_ms: int = DAY_MS
) -> dict[str, JobStats]:
    """Runs, failure rate, p50/p95 duration and an hourly sparkline per job, over the
    window: one aggregating query (counts per hour, run times), no records loaded."""
    hours = max(1, window_ms // HOUR_MS)
    agg = await storage.aggregate(
        ExecutionQuery(job_names=names or None), _windows("created_at", now, HOUR_MS, hours), durations=True
    )  # fmt: skip
    stats = {n: JobStats(hourly=[0] * hours) for n in names}
    for (job_name, status), row in agg.counts.items():
        st = stats.setdefault(job_name, JobStats(hourly=[0] * hours))
        runs = sum(row)
        st.runs += runs
        st.hourly = [a + b for a, b in zip(st.hourly, row, strict=True)]
        if status == "completed":
            st.completed += runs
        elif status == "failed":
            st.failed += runs
        elif status != "cancelled":
            st.active += runs
    for name, st in stats.items():
        st.durations = agg.durations.get(name, [])
        st.spark = sparkline(st.hourly, width=120, height=22, css="spark spark-mini",
                             label=f"{st.runs} runs in 24 h")  # fmt: skip
    return stats
