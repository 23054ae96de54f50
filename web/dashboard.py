"""The dashboard's state: the queue it shows, its settings and its live hub."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.exceptions import PermissionDeniedException
from litestar.utils.scope.state import ScopeState

from dq.engine.ids import now_ms
from dq.engine.storage.base import Storage

from .counters import Metrics
from .hub import Hub
from .settings import Settings
from .source import Source, job_source, short_path

STATE_KEY = "dq_dashboard"
__all__ = ["STATE_KEY", "Dashboard", "dashboard_of", "short_path"]


class Dashboard:
    def __init__(self, queue: Any, settings: Settings, *, label: str | None = None) -> None:
        self.queue = queue
        self.settings = settings
        self.label = label or getattr(queue.storage, "kind", "storage")
        self.metrics = Metrics()
        self.hub = Hub(self)

    @property
    def storage(self) -> Storage:
        storage: Storage = self.queue.storage
        return storage

    @property
    def jobs(self) -> dict[str, Any]:
        return dict(self.queue.jobs.definitions)

    def job(self, name: str) -> Any | None:
        return self.jobs.get(name)

    def require_writable(self) -> None:
        """Every state-changing route starts here: `--read-only` refuses it (403)."""
        if self.settings.read_only:
            raise PermissionDeniedException("The dashboard is read-only: actions are disabled.")

    def source(self, job_name: str) -> Source | None:
        job = self.job(job_name)
        return job_source(getattr(job, "handler", None)) if job is not None else None

    def context(self, request: Request[Any, Any, Any] | None, nav: str = "", stream_url: str | None = None) -> dict[str, Any]:
        """What every full page needs (layout, CSRF token, clock)."""
        csrf = ""
        if request is not None:
            token = ScopeState.from_scope(request.scope).csrf_token
            csrf = token if isinstance(token, str) else ""
        return {
            "now": now_ms(),
            "csrf": csrf,
            "read_only": self.settings.read_only,
            "storage_label": self.label,
            "nav": nav,
            "stream_url": stream_url,
            "oob": False,
        }


def dashboard_of(request: Request[Any, Any, Any]) -> Dashboard:
    dash: Dashboard = request.app.state[STATE_KEY]
    return dash
