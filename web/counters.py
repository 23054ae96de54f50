"""Counters and histograms the dashboard keeps from the event stream it follows.

One `Metrics.observe` call per committed event; nothing here reads storage. The
figures cover what this server saw since it started, as Prometheus counters do
(`rate()` and `histogram_quantile()` handle the reset on restart).
"""

from __future__ import annotations

import math
from collections import OrderedDict, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from dq.engine.event_schema import ENDINGS, EventKind
from dq.engine.storage.base import EventRecord

#: Bucket bounds in seconds: from a fast step (5 ms) to a long job (1 h).
BUCKETS_S: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
#: Start times kept for execution durations (the oldest are forgotten first).
_STARTS_KEPT = 100_000
#: The status each ending leaves an execution in.
_FINAL = {EventKind.SUCCESS: "completed", EventKind.FAILURE: "failed", EventKind.CANCEL: "cancelled"}


class Histogram:
    """Cumulative buckets per label value, as Prometheus exposes them."""

    def __init__(self, bounds: Sequence[float] = BUCKETS_S) -> None:
        self.bounds = tuple(bounds)
        self.counts: dict[str, list[int]] = defaultdict(lambda: [0] * (len(self.bounds) + 1))
        self.sums: dict[str, float] = defaultdict(float)

    def observe(self, label: str, seconds: float) -> None:
        counts = self.counts[label]
        for i, bound in enumerate(self.bounds):
            if seconds <= bound:
                counts[i] += 1
                break
        else:
            counts[-1] += 1
        self.sums[label] += seconds

    def lines(self, name: str, label_name: str) -> list[str]:
        out = []
        for label in sorted(self.counts):
            running = 0
            lab = f'{label_name}="{escape(label)}"'
            for bound, n in zip(self.bounds, self.counts[label], strict=False):
                running += n
                out.append(f'{name}_bucket{{{lab},le="{num(bound)}"}} {running}')
            running += self.counts[label][-1]
            out.append(f'{name}_bucket{{{lab},le="+Inf"}} {running}')
            out.append(f"{name}_sum{{{lab}}} {num(self.sums[label])}")
            out.append(f"{name}_count{{{lab}}} {running}")
        return out


class Metrics:
    """Counters fed by committed events, one `observe` call per event."""

    def __init__(self) -> None:
        self.attempts: dict[str, int] = defaultdict(int)
        self.failed_attempts: dict[str, int] = defaultdict(int)
        self.finished: dict[tuple[str, str], int] = defaultdict(int)
        self.logs: dict[str, int] = defaultdict(int)
        self.step_seconds = Histogram()
        self.execution_seconds = Histogram()
        self._started: OrderedDict[str, int] = OrderedDict()

    def observe(self, ev: EventRecord) -> None:
        job = ev.job_name or ""
        # `type() is dict` first: the ABC check costs more than the rest of the call (once per event)
        data: Mapping[str, Any] = ev.data if type(ev.data) is dict or isinstance(ev.data, Mapping) else {}
        if ev.type == EventKind.START:
            self.attempts[job] += 1
            if ev.execution_id and ev.execution_id not in self._started:
                self._started[ev.execution_id] = ev.at
                if len(self._started) > _STARTS_KEPT:
                    self._started.popitem(last=False)
        elif ev.type == EventKind.ERROR:
            self.failed_attempts[job] += 1
        elif ev.type in (EventKind.STEP_SUCCESS, EventKind.STEP_FAILURE):
            ms = data.get("duration_ms")
            if isinstance(ms, int | float) and not isinstance(ms, bool):
                self.step_seconds.observe(job, ms / 1000)
        elif ev.type == EventKind.LOG:
            self.logs[job] += 1
        elif ev.type in ENDINGS:
            status = _FINAL[EventKind(ev.type)]
            self.finished[(job, status)] += 1
            started = self._started.pop(ev.execution_id, None) if ev.execution_id else None
            if started is not None and ev.type != EventKind.CANCEL:
                self.execution_seconds.observe(job, max(0, ev.at - started) / 1000)


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if float(value).is_integer() else repr(float(value))
