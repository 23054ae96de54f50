"""Counters and histograms the dashboard keeps from the event stream it follows.

Each committed event is counted once (`Metrics.observe_many`: a tick's events at a
time); nothing here reads storage. The figures cover what this server saw since it
started, as Prometheus counters do (`rate()` and `histogram_quantile()` handle the
reset on restart).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Mapping, Sequence

from dq.engine.event_schema import ENDINGS, EventKind
from dq.engine.storage.base import EventRecord

#: Bucket bounds in seconds: from a fast step (5 ms) to a long job (1 h).
BUCKETS_S: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
#: Start times kept for execution durations (the oldest are forgotten first).
_STARTS_KEPT = 100_000
#: The status each ending leaves an execution in.
_FINAL: dict[str, str] = {EventKind.SUCCESS: "completed", EventKind.FAILURE: "failed", EventKind.CANCEL: "cancelled"}
_STEP_ENDS = frozenset({EventKind.STEP_SUCCESS, EventKind.STEP_FAILURE})
# Plain names: an enum member looked up on its class costs more than the comparison.
_START, _ERROR, _LOG, _CANCEL = EventKind.START, EventKind.ERROR, EventKind.LOG, EventKind.CANCEL


class Histogram:
    """Cumulative buckets per label value, as Prometheus exposes them."""

    def __init__(self, bounds: Sequence[float] = BUCKETS_S) -> None:
        self.bounds = tuple(bounds)
        self.counts: dict[str, list[int]] = defaultdict(lambda: [0] * (len(self.bounds) + 1))
        self.sums: dict[str, float] = defaultdict(float)

    def observe(self, label: str, seconds: float) -> None:
        # the first bound >= seconds; past the last: the +Inf slot
        self.counts[label][bisect_left(self.bounds, seconds)] += 1
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
        self.observe_many((ev,))

    def observe_many(self, events: Iterable[EventRecord]) -> None:
        """Count `events` in; one pass, the branch of each kind the dashboard sees most first."""
        attempts, started, steps = self.attempts, self._started, self.step_seconds
        for ev in events:
            kind = ev.type
            if kind in _STEP_ENDS:
                data = ev.data
                # `type() is dict` first: the ABC check costs more than the rest (once per event)
                ms = data.get("duration_ms") if type(data) is dict or isinstance(data, Mapping) else None
                if isinstance(ms, int | float) and not isinstance(ms, bool):
                    steps.observe(ev.job_name or "", ms / 1000)
            elif kind == _START:
                attempts[ev.job_name or ""] += 1
                if ev.execution_id and ev.execution_id not in started:
                    started[ev.execution_id] = ev.at
                    if len(started) > _STARTS_KEPT:
                        started.popitem(last=False)
            elif kind in ENDINGS:
                job = ev.job_name or ""
                self.finished[(job, _FINAL[kind])] += 1
                at = started.pop(ev.execution_id, None) if ev.execution_id else None
                if at is not None and kind != _CANCEL:
                    self.execution_seconds.observe(job, max(0, ev.at - at) / 1000)
            elif kind == _ERROR:
                self.failed_attempts[ev.job_name or ""] += 1
            elif kind == _LOG:
                self.logs[ev.job_name or ""] += 1


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if float(value).is_integer() else repr(float(value))
