"""Pipes: each pipe's recent messages and the executions waiting on it; a form to send one.

Who waits on a pipe: running executions whose open step is a wait on it. The
hub knows each execution's current step from the events it followed; those it
has not seen (they began waiting before this server started) are read from
their steps, at most `_STEP_READS` of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from litestar import Request, get, post
from litestar.exceptions import NotFoundException, PermissionDeniedException
from litestar.params import FromPath
from litestar.response import Response

from dq import ValidationError
from dq.engine.ids import now_ms
from dq.engine.storage.base import ExecutionQuery, ExecutionRecord, PipeMessage, Storage

from . import render
from .dashboard import Dashboard, dashboard_of
from .pages import html

Req = Request[Any, Any, Any]
RECENT = 20
_STEP_READS = 200


@dataclass(slots=True)
class PipeView:
    name: str
    schema: str
    messages: list[PipeMessage] = field(default_factory=list)
    waiting: list[ExecutionRecord] = field(default_factory=list)
    form: str = "{}"
    error: str | None = None


async def recent_messages(storage: Storage, pipe: str, n: int = RECENT) -> list[PipeMessage]:
    """The last `n` messages, newest first, reading back in growing windows of sequence
    numbers (they are shared by all pipes) instead of from the start."""
    last = await storage.last_message_seq(pipe)
    window = n * 4
    while True:
        after = max(0, last - window)
        found = await storage.read_messages(pipe, after, limit=100_000)
        if len(found) >= n or after == 0:
            return list(reversed(found[-n:]))
        window *= 8


async def waiting_on(dash: Dashboard) -> dict[str, list[ExecutionRecord]]:
    """pipe name -> running executions whose open step waits on it."""
    storage = dash.storage
    running = await storage.query(ExecutionQuery(statuses=("running",), limit=2000))
    out: dict[str, list[ExecutionRecord]] = {}
    reads = 0
    for rec in running:
        key = dash.hub.current.get(rec.id)
        name: str | None = None
        if key is not None:
            name = key[5:].split("#", 1)[0] if key.startswith("wait:") else None
        elif reads < _STEP_READS:
            reads += 1
            open_waits = [s for s in await storage.get_steps(rec.id) if s.kind == "wait" and s.status == "running"]
            if open_waits and isinstance(open_waits[-1].output, dict) and "after_seq" in open_waits[-1].output:
                name = open_waits[-1].name
        if name is not None:
            out.setdefault(name, []).append(rec)
    return out


def _schema(pipe: Any) -> tuple[str, str]:
    model = getattr(pipe, "input", None)
    fields = getattr(model, "model_fields", None)
    if model is None or not fields:
        return (getattr(model, "__name__", "any JSON value") if model is not None else "any JSON value"), "{}"
    hint = ", ".join(f"{n}: {getattr(f.annotation, '__name__', str(f.annotation))}" for n, f in fields.items())
    return f"{model.__name__} {{{hint}}}", json.dumps({n: "" for n in fields}, indent=2)


async def _views(dash: Dashboard) -> list[PipeView]:
    pipes = dash.queue.pipes
    waiting = await waiting_on(dash)
    views = []
    for name in sorted(pipes):
        pipe = pipes[name]
        schema, skeleton = _schema(pipe.pipe)
        views.append(PipeView(pipe.name, schema, await recent_messages(dash.storage, pipe.name),
                              waiting.get(pipe.name, []), skeleton))  # fmt: skip
    return views


def _page(request: Req, dash: Dashboard, views: list[PipeView], status_code: int = 200) -> Response[str]:
    now = now_ms()
    ctx = dash.context(request, "pipes")
    ctx.update(pipes=views, now=now)
    return html(render.page("pipes.html", **ctx), status_code=status_code)


@get("/pipes", name="pipes")
async def pipes_page(request: Req) -> Response[str]:
    dash = dashboard_of(request)
    return _page(request, dash, await _views(dash))


@post("/pipes/{name:str}/send", name="pipe_send")
async def send_message(request: Req, name: FromPath[str]) -> Response[str]:
    """Parse and validate the message on the server (the pipe's input model); errors inline."""
    dash = dashboard_of(request)
    if dash.settings.read_only:
        raise PermissionDeniedException("The dashboard is read-only.")
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
        return Response(content="", status_code=303, headers={"Location": f"/pipes#pipe-{name}"})
    views = await _views(dash)
    for view in views:
        if view.name == name:
            view.form, view.error = text, error
    return _page(request, dash, views, status_code=422)
