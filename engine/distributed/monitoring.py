"""`queue.monitoring`: the dashboard under `monitoring={"endpoint": ...}`, on the node's server.

The engine does not import the dashboard (arrows: app -> web -> engine). The
app layer registers a factory here when it is imported (`register_dashboard`,
called at the end of app/__init__.py); `start()` asks for it, and if no one
imported the app yet, imports it by name once — `dashboard_factory()` below is
the one deliberate place where the engine names the layer above it, so that
`await queue.monitoring.start()` works without an extra import in user code.

The dashboard shares the server of `queue.orchestration` (the node's worker API
under its endpoint, the dashboard under this one): started in either order,
both are served on the orchestration host and port.
"""

from __future__ import annotations

import asyncio
import importlib
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import DqError

if TYPE_CHECKING:
    from ..queue import Queue

_KEYS = {"endpoint", "read_only"}
DEFAULT_ENDPOINT = "/monitoring"

#: (queue, options, token, bound host) -> the dashboard as an ASGI app serving everything under options.endpoint.
DashboardFactory = Callable[["Queue", "MonitoringOptions", "str | None", str], Any]
_factory: DashboardFactory | None = None


def register_dashboard(factory: DashboardFactory) -> None:
    """Called by the app layer (dq.app) when it is imported."""
    global _factory
    _factory = factory


def dashboard_factory() -> DashboardFactory:
    if _factory is None:
        try:
            importlib.import_module("dq.app")  # registers itself; see the module docstring
        except ImportError as exc:
            raise DqError(f"queue.monitoring needs the dashboard (dq.app), which failed to import: {exc}") from exc
    if _factory is None:
        raise DqError("queue.monitoring: dq.app did not register a dashboard")
    return _factory


_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)*")


def check_prefix(prefix: object, what: str) -> str:
    """A path to serve the dashboard under: '' (at /) or '/a/b' (a trailing slash is
    dropped); raises ValueError naming `what` otherwise. The dashboard writes it into
    every URL, so it holds nothing HTML or a URL would need escaped."""
    if not isinstance(prefix, str) or (not prefix.startswith("/") and prefix != ""):
        raise ValueError(f"{what} must be a path starting with '/', like '/monitoring', got {prefix!r}")
    prefix = prefix.rstrip("/")
    if not _PATH.fullmatch(prefix):
        raise ValueError(f"{what} {prefix!r} must be a path like '/monitoring' "
                         "(letters, digits, '.', '_', '~', '-' between slashes)")  # fmt: skip
    return prefix


class MonitoringOptions:
    def __init__(self, options: Mapping[str, Any] | None) -> None:
        opts = dict(options or {})
        unknown = set(opts) - _KEYS
        if unknown:
            raise ValueError(f"monitoring: unknown option(s) {sorted(unknown)}; expected some of {sorted(_KEYS)}")
        #: '' serves the dashboard at '/'.
        self.endpoint = check_prefix(opts.get("endpoint", DEFAULT_ENDPOINT), "monitoring: endpoint")
        read_only = opts.get("read_only", False)
        if not isinstance(read_only, bool):
            raise ValueError(f"monitoring: read_only must be True or False, got {read_only!r}")
        self.read_only = read_only


class Lifespan:
    """Drives an ASGI app's lifespan (startup, then shutdown) for an app mounted on a
    server that is already running, whose own lifespan went elsewhere."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        await self.app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, self._inbox.get, self._outbox.put)

    async def _step(self, kind: str) -> None:
        await self._inbox.put({"type": f"lifespan.{kind}"})
        reply = await self._outbox.get()
        if reply["type"].endswith(".failed"):
            raise DqError(f"the dashboard failed to {kind}: {reply.get('message', '')}")

    async def startup(self) -> None:
        self._task = asyncio.create_task(self._run(), name="dq-dashboard-lifespan")
        await self._step("startup")

    async def shutdown(self) -> None:
        if self._task is None:
            return
        await self._step("shutdown")
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None


class Monitoring:
    """`queue.monitoring`: `await start()` serves the dashboard under the endpoint."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.options = MonitoringOptions(queue.monitoring_options)
        self._lifespan: Lifespan | None = None

    @property
    def url(self) -> str:
        """Where the dashboard answers (on the orchestration host and port)."""
        return self.queue.orchestration.options.base_url + (self.options.endpoint or "/")

    async def start(self) -> None:
        if self._lifespan is not None:
            return
        orchestration = self.queue.orchestration
        await self.queue.started()
        token = orchestration.options.token
        app = dashboard_factory()(self.queue, self.options, token, orchestration.options.host)
        lifespan = Lifespan(app)
        await lifespan.startup()
        try:
            await orchestration.site.add(self.options.endpoint, app)
        except BaseException:
            await lifespan.shutdown()
            raise
        self._lifespan = lifespan

    async def stop(self) -> None:
        if self._lifespan is None:
            return
        await self.queue.orchestration.site.remove(self.options.endpoint)
        await self._lifespan.shutdown()
        self._lifespan = None
