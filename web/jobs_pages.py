"""Jobs: the list, one job's page (options, steps, annotated source, figures) and its start form."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from litestar import Request, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.response import Response

from dq import ValidationError
from dq.engine.ids import now_ms
from dq.engine.storage.base import ExecutionQuery

from . import json_input, loaders, params, prefix, render
from .dashboard import Dashboard, dashboard_of, short_path
from .format import to_json
from .pages import html
from .stats import job_stats

Req = Request[Any, Any, Any]

_DEFAULTS = ("(default)", "exponential from 1s", "1 day")


@dataclass(slots=True)
class JobRow:
    name: str
    #: The options that differ from the defaults, as (name, human-readable value).
    options: list[tuple[str, str]]


def options_of(job: Any) -> list[tuple[str, str]]:
    describe = getattr(job, "describe", None)
    return list(describe().items()) if callable(describe) else []


def _chips(job: Any) -> list[tuple[str, str]]:
    return [(k, v) for k, v in options_of(job) if not any(d in v for d in _DEFAULTS)]


def input_hint(job: Any) -> str:
    model = getattr(getattr(job, "options", None), "input", None)
    fields = getattr(model, "model_fields", None)
    if not fields or model is None:
        return getattr(model, "__name__", "") if model is not None else ""
    parts = [f"{n}: {getattr(f.annotation, '__name__', str(f.annotation))}" for n, f in fields.items()]
    return f"{model.__name__} {{{', '.join(parts)}}}"


def input_skeleton(job: Any) -> str:
    model = getattr(getattr(job, "options", None), "input", None)
    fields = getattr(model, "model_fields", None)
    if not fields:
        return "{}" if model is not None else "null"
    return json.dumps({n: "" for n in fields}, indent=2)


@get("/jobs", name="jobs")
async def jobs_page(request: Req) -> Response[str]:
    dash = dashboard_of(request)
    jobs = [dash.jobs[n] for n in sorted(dash.jobs)]
    stats = await job_stats(dash.storage, [j.name for j in jobs], now_ms())
    ctx = dash.context(request, "jobs")
    ctx.update(jobs=[JobRow(j.name, _chips(j)) for j in jobs], stats=stats)
    return html(render.page("jobs.html", **ctx))


async def _job_context(dash: Dashboard, request: Req, name: FromPath[str]) -> dict[str, Any]:
    job = dash.job(name)
    if job is None:
        raise NotFoundException(f"This queue has no job named {name!r}.")
    now = now_ms()
    stats = await job_stats(dash.storage, [name], now)
    recent = await dash.storage.query(ExecutionQuery(job_names=[name], limit=15))
    src = dash.source(name)
    line = params.last(params.query_lists(request.scope), "line")
    last_input = next((r.input for r in recent if r.input is not None), None)
    ctx = dash.context(request, "jobs")
    ctx.update(
        job=job, st=stats[name], recent=recent, source=src,
        source_file_short=short_path(src.file) if src else "",
        highlight=params.integer(line, "line", low=1, high=10**7) if line else None,
        calls=src.calls if src else [], options=options_of(job), input_hint=input_hint(job),
        start_input=to_json(last_input, indent=2) if last_input is not None else input_skeleton(job),
        start_error=None,
    )  # fmt: skip
    ctx.update(
        job_paused=await loaders.job_paused(dash, name),
        job_name=name, cancel_input="{}", cancel_error=None, cancelled=None,
    )  # fmt: skip
    return ctx


@get("/jobs/{name:str}", name="job")
async def job_page(request: Req, name: FromPath[str]) -> Response[str]:
    dash = dashboard_of(request)
    ctx = await _job_context(dash, request, name)
    return html(render.page("job.html", **ctx))


@post("/jobs/{name:str}/start", name="start")
async def start_execution(request: Req, name: FromPath[str]) -> Response[str]:
    """Validate the JSON server-side, start, and send the browser to the new execution."""
    dash = dashboard_of(request)
    dash.require_writable()
    ctx = await _job_context(dash, request, name)
    form = await request.form()
    text = str(form.get("input") or "").strip() or "null"
    ctx["start_input"] = text
    try:
        value = json_input.loads(text)
    except json_input.JsonInputError as exc:
        ctx["start_error"] = str(exc)
        return _form(request, ctx)
    try:
        execution = await dash.queue.jobs[name].start(value)
    except ValidationError as exc:
        ctx["start_error"] = f"Invalid input: {exc}"
        return _form(request, ctx)
    url = prefix.url(f"/executions/{execution.id}")
    if request.headers.get("hx-request"):
        return Response(content="", status_code=200, headers={"HX-Redirect": url})
    return Response(content="", status_code=303, headers={"Location": url})


def _form(request: Req, ctx: dict[str, Any]) -> Response[str]:
    if request.headers.get("hx-request"):
        return html(render.block("job.html", "start_form", **ctx), status_code=200)
    return html(render.page("job.html", **ctx), status_code=422)
