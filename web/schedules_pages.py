"""Schedules: every cron job, its expression in words, time zone, next fires and last run;
trigger now, pause and resume a schedule."""

from __future__ import annotations

from typing import Any

from litestar import Request, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.response import Redirect, Response

from dq.engine.ids import now_ms
from dq.engine.scheduler import set_schedule_paused

from . import loaders, prefix, render
from .dashboard import Dashboard, dashboard_of
from .loaders import cron_of
from .pages import html

Req = Request[Any, Any, Any]


@get("/schedules", name="schedules")
async def schedules_page(request: Req) -> Response[str]:
    dash = dashboard_of(request)
    now = now_ms()
    ctx = dash.context(request, "schedules")
    ctx.update(schedules=await loaders.schedules(dash, now), now=now)
    return html(render.page("schedules.html", **ctx))


def _cron_job(dash: Dashboard, name: str) -> Any:
    dash.require_writable()
    job = dash.job(name)
    if job is None or cron_of(job) is None:
        raise NotFoundException(f"This queue has no cron job named {name!r}.")
    return job


@post("/schedules/{name:str}/trigger", name="schedule_trigger")
async def trigger_now(request: Req, name: FromPath[str]) -> Redirect:
    """Start the job now, as its schedule would (no input); the schedule is unchanged."""
    dash = dashboard_of(request)
    _cron_job(dash, name)
    execution = await dash.queue.jobs[name].start(None)
    return Redirect(prefix.url(f"/executions/{execution.id}"))


@post("/schedules/{name:str}/pause", name="schedule_pause")
async def pause_schedule(request: Req, name: FromPath[str]) -> Redirect:
    dash = dashboard_of(request)
    _cron_job(dash, name)
    await set_schedule_paused(dash.storage, name, True)
    return Redirect(prefix.url("/schedules"))


@post("/schedules/{name:str}/resume", name="schedule_resume")
async def resume_schedule(request: Req, name: FromPath[str]) -> Redirect:
    dash = dashboard_of(request)
    _cron_job(dash, name)
    await set_schedule_paused(dash.storage, name, False)
    return Redirect(prefix.url("/schedules"))
