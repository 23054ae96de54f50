"""Composition: `create_app(queue)` is the dashboard as a Litestar ASGI application."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from litestar import Litestar, Router
from litestar.config.csrf import CSRFConfig
from litestar.datastructures import State
from litestar.middleware import DefineMiddleware

from dq.engine.distributed.monitoring import MonitoringOptions, register_dashboard
from dq.web import (
    GET_ONLY,
    ROUTES,
    STATE_KEY,
    Dashboard,
    Gate,
    HostPolicy,
    Settings,
    TokenAuth,
    WithBase,
    check_base,
    http_error,
)


def create_app(
    queue: Any,
    *,
    settings: Settings | None = None,
    token: str | None = None,
    read_only: bool = False,
    manage_queue: bool = True,
    label: str | None = None,
    background: Sequence[Callable[[], Awaitable[None]]] = (),
) -> Litestar:
    """The dashboard for `queue`.

    With `manage_queue` the app starts the queue (if not started yet) and
    closes it on shutdown. `background` coroutines (the demo's trickle) run
    while the app serves. Requests must name a loopback host, `settings.bound_host`
    or one of `settings.allowed_hosts` (see web/gate.py). With `settings.base`
    (e.g. "/monitoring") every route and every URL it writes is under that path
    (see web/prefix.py).
    """
    settings = settings or Settings(token=token, read_only=read_only)
    base = check_base(settings.base)
    dash = Dashboard(queue, settings, label=label)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        if manage_queue:
            await queue.start()
        await dash.hub.start()
        tasks: list[asyncio.Task[None]] = [
            asyncio.create_task(_run(fn), name="dq-ui-background") for fn in background
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await dash.hub.aclose()
            if manage_queue:
                await queue.close()

    middleware = [DefineMiddleware(TokenAuth, token=settings.token, cookie=settings.token_cookie)] if settings.token else []
    app = Litestar(
        route_handlers=[Router(path=base, route_handlers=ROUTES)] if base else ROUTES,
        lifespan=[lifespan],
        middleware=middleware,
        csrf_config=CSRFConfig(secret=settings.csrf_secret, cookie_name=settings.csrf_cookie, cookie_httponly=True),
        exception_handlers={Exception: http_error},
        state=State({STATE_KEY: dash}),
        debug=False,
    )
    # In front of the router, so that 404s, 405s and static files pass the gate too.
    policy = HostPolicy(bound=settings.bound_host, allowed=settings.allowed_hosts)
    app.asgi_handler = Gate(WithBase(app.asgi_handler, base), policy, get_only=[base + p for p in GET_ONLY])
    return app


async def _run(fn: Callable[[], Awaitable[None]]) -> None:
    await fn()


def _monitoring_dashboard(queue: Any, options: MonitoringOptions, token: str | None, host: str) -> Litestar:
    """`queue.monitoring.start()`'s dashboard: under the monitoring endpoint, with the
    orchestration token; the queue is the node's (started and closed by its owner)."""
    settings = Settings(token=token, read_only=options.read_only, bound_host=host, base=options.endpoint)
    return create_app(queue, settings=settings, manage_queue=False)


# The engine finds the dashboard through this hook (engine/distributed/monitoring.py).
register_dashboard(_monitoring_dashboard)


__all__ = ["create_app"]
