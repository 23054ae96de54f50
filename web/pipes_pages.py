"""Pipes: each pipe's recent messages and the executions waiting on it (read by
`loaders.pipes`); a form to send one."""

from __future__ import annotations

import json
from typing import Any

from litestar import Request, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.response import Response

from dq import ValidationError
from dq.engine.ids import now_ms

from . import loaders, prefix, render
from .dashboard import Dashboard, dashboard_of
from .loaders import PipeView
from .pages import html

Req = Request[Any, Any, Any]


def _page(request: Req, dash: Dashboard, views: list[PipeView], status_code: int = 200) -> Response[str]:
    now = now_ms()
    ctx = dash.context(request, "pipes")
    ctx.update(pipes=views, now=now)
    return html(render.page("pipes.html", **ctx), status_code=status_code)


@get("/pipes", name="pipes")
async def pipes_page(request: Req) -> Response[str]:
    dash = dashboard_of(request)
    return _page(request, dash, await loaders.pipes(dash))


@post("/pipes/{name:str}/send", name="pipe_send")
async def send_message(request: Req, name: FromPath[str]) -> Response[str]:
    """Parse and validate the message on the server (the pipe's input model); errors inline."""
    dash = dashboard_of(request)
    dash.require_writable()
    try:
        pipe = dash.queue.pipes[name]
    except KeyError:
        raise NotFoundException(f"This queue has no pipe named {name!r}.") from None
    form = await request.form()
    text = str(form.get("message") or "").strip() or "null"
    error: str | None = None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        error = f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
    else:
        try:
            await pipe.send(value)
        except ValidationError as exc:
            error = f"Invalid message: {exc}"
    if error is None:
        return Response(content="", status_code=303, headers={"Location": prefix.url(f"/pipes#pipe-{name}")})
    views = await loaders.pipes(dash)
    for view in views:
        if view.name == name:
            view.form, view.error = text, error
    return _page(request, dash, views, status_code=422)
