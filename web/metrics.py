"""`GET /metrics`: the queue in Prometheus' text exposition format (version 0.0.4).

Two sources, neither a scan of the executions:
- gauges from aggregate storage queries at scrape time: executions by job and
  status (one grouped count per job), and per job the age of its oldest
  pending execution (one indexed `LIMIT 1` read per job with pending work);
- counters and histograms fed by the event stream the dashboard already
  follows (`Metrics.observe`): attempts, failed attempts, step and execution
  durations. They count what this server saw since it started, as
  Prometheus counters do; `rate()` and `histogram_quantile()` handle resets.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from litestar import Request, get
from litestar.response import Response

from dq.engine.ids import now_ms
from dq.engine.storage.base import STATUSES, ExecutionQuery

from .counters import escape, num
from .dashboard import dashboard_of

if TYPE_CHECKING:
    from .dashboard import Dashboard

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _family(name: str, kind: str, help_text: str, samples: Iterable[str]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]


async def exposition(dash: Dashboard) -> str:
    """The whole exposition, from aggregates and counters."""
    dash.hub.absorb()  # the events still waiting for the hub's next tick count too
    storage, metrics, now = dash.storage, dash.metrics, now_ms()
    jobs = sorted(dash.jobs)
    by_status: list[str] = []
    depth: list[str] = []
    oldest: list[str] = []
    for job in jobs:
        counts = await storage.count(ExecutionQuery(job_names=[job]))
        lab = escape(job)
        for status in STATUSES:
            by_status.append(f'dq_executions{{job="{lab}",status="{status}"}} {int(counts.get(status, 0))}')
        pending = int(counts.get("pending", 0))
        depth.append(f'dq_queue_depth{{job="{lab}"}} {pending}')
        age = 0.0
        if pending:
            first = await storage.query(ExecutionQuery(statuses=("pending",), job_names=[job], order="oldest", limit=1))
            if first:
                age = max(0, now - first[0].created_at) / 1000
        oldest.append(f'dq_oldest_pending_age_seconds{{job="{lab}"}} {num(age)}')
    names = sorted(set(jobs) | set(metrics.attempts) | set(metrics.failed_attempts))
    lines = [
        *_family("dq_executions", "gauge", "Executions stored, by job and status.", by_status),
        *_family("dq_queue_depth", "gauge", "Pending executions per job.", depth),
        *_family("dq_oldest_pending_age_seconds", "gauge", "Age of the oldest pending execution per job (0: none).", oldest),
        *_family("dq_attempts_total", "counter", "Attempts started (resumptions after a sleep or wait count once more).",
                 (f'dq_attempts_total{{job="{escape(n)}"}} {metrics.attempts.get(n, 0)}' for n in names)),
        *_family("dq_failed_attempts_total", "counter", "Attempts that raised (retried or not).",
                 (f'dq_failed_attempts_total{{job="{escape(n)}"}} {metrics.failed_attempts.get(n, 0)}' for n in names)),
        *_family("dq_executions_finished_total", "counter", "Executions that ended, by job and final status.",
                 (f'dq_executions_finished_total{{job="{escape(j)}",status="{s}"}} {n}'
                  for (j, s), n in sorted(metrics.finished.items()))),
        *_family("dq_log_lines_total", "counter", "Lines handlers wrote with log().",
                 (f'dq_log_lines_total{{job="{escape(j)}"}} {n}' for j, n in sorted(metrics.logs.items()))),
        *_family("dq_step_duration_seconds", "histogram", "Duration of step attempts.",
                 metrics.step_seconds.lines("dq_step_duration_seconds", "job")),
        *_family("dq_execution_duration_seconds", "histogram", "From first start to the end of completed and failed executions.",
                 metrics.execution_seconds.lines("dq_execution_duration_seconds", "job")),
        *_family("dq_sse_clients", "gauge", "Browsers following live updates.", [f"dq_sse_clients {len(dash.hub.clients)}"]),
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


@get("/metrics", name="metrics")
async def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[str]:
    body = await exposition(dashboard_of(request))
    return Response(content=body, media_type=CONTENT_TYPE)
