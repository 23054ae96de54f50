"""The dashboard's URL prefix: one mechanism for every URL it writes.

A dashboard may be served under a path (`monitoring={"endpoint": "/monitoring"}`,
`create_app(queue, settings=Settings(base="/monitoring"))`): its routes are
registered under that path, and every URL it hands out (links, form actions,
hx-* and SSE URLs, redirects, static assets) starts with it. Templates write
`{{ base }}/executions`; Python writes `url("/executions")`.

The prefix is a context variable rather than an argument threaded through
every render call: `WithBase` sets it for each request (the pages, fragments,
actions, redirects and SSE streams it serves) and the live hub sets it in its
own tasks, so the Jinja environment stays one per process and the macros in
_ui.html (rendered without the caller's context) see it too.
"""

from __future__ import annotations

from contextvars import ContextVar

from litestar.types import ASGIApp, Receive, Scope, Send

from dq.engine.distributed.monitoring import check_prefix

BASE: ContextVar[str] = ContextVar("dq_web_base", default="")


def check_base(base: str) -> str:
    """'' (served at /) or '/a/b', without a trailing slash; raises ValueError otherwise."""
    return check_prefix(base, "dashboard prefix (Settings.base)")


def url(path: str) -> str:
    """`path` (starting with '/') under the dashboard's prefix."""
    return BASE.get() + path


class Base:
    """The Jinja global `base`: the current prefix wherever it is rendered."""

    def __str__(self) -> str:
        return BASE.get()

    def __html__(self) -> str:
        return BASE.get()  # check_base admits no character HTML would need escaped


class WithBase:
    """ASGI wrapper: the requests it passes on are served under `base`."""

    def __init__(self, app: ASGIApp, base: str) -> None:
        self.app = app
        self.base = base

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = BASE.set(self.base)
        try:
            await self.app(scope, receive, send)
        finally:
            BASE.reset(token)
