"""The dashboard: Litestar route handlers, Jinja2 pages and htmx fragments, SSE live updates.

`web` imports `engine`, never `app`. `dq.app.create_app(queue)` composes these
pieces into a Litestar application.
"""

from __future__ import annotations

from litestar import get
from litestar.handlers import BaseRouteHandler

from .actions import cancel, pause, resume, retry
from .auth import TokenAuth
from .dashboard import STATE_KEY, Dashboard
from .errors import http_error
from .execution_pages import (
    execution_page,
    payload_download,
    source_diff,
    step_output_download,
    step_panel,
    waterfall_fragment,
)
from .gate import ALLOWED_HOSTS_ENV, Gate, HostPolicy, parse_allowed, split_host
from .jobs_pages import job_page, jobs_page, start_execution
from .metrics import metrics_endpoint
from .operate import (
    bulk_action,
    bulk_progress,
    job_cancel,
    job_pause,
    job_resume,
    replay,
    replay_dialog,
)
from .pages import executions, go, overview
from .pipes_pages import pipes_page, send_message
from .prefix import WithBase, check_base
from .render import STATIC_DIR
from .schedules_pages import pause_schedule, resume_schedule, schedules_page, trigger_now
from .settings import Settings
from .sse import LIVE_PATH, live_stream
from .static_files import static_file
from .workers_page import STREAM_URL as WORKERS_STREAM_URL
from .workers_page import workers_page, workers_stream


@get("/healthz", name="healthz", media_type="text/plain")
async def healthz() -> str:
    return "ok"


ROUTES: list[BaseRouteHandler] = [
    overview, executions, go, execution_page, waterfall_fragment, step_panel, payload_download,
    step_output_download, jobs_page, job_page, start_execution, pause, resume, cancel, retry,
    live_stream, healthz, static_file, workers_page, workers_stream,
    replay_dialog, replay, bulk_action, bulk_progress, job_pause, job_resume, job_cancel,
    metrics_endpoint, schedules_page, trigger_now, pause_schedule, resume_schedule,
    pipes_page, send_message, source_diff,
]  # fmt: skip

#: Paths answered for GET only: the gate does not turn a HEAD into a GET for them.
GET_ONLY = (LIVE_PATH, WORKERS_STREAM_URL)

__all__ = [
    "ALLOWED_HOSTS_ENV", "GET_ONLY", "ROUTES", "STATE_KEY", "STATIC_DIR", "Dashboard", "Gate", "HostPolicy",
    "Settings", "TokenAuth", "WithBase", "check_base", "http_error", "parse_allowed", "split_host",
]  # fmt: skip
