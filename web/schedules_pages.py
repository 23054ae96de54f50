"""Schedules: every cron job, its expression in words, time zone, next fires and last run;
trigger now, pause and resume a schedule."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from litestar import Request, get, post
from litestar.exceptions import NotFoundException, PermissionDeniedException
from litestar.params import FromPath
from litestar.response import Redirect, Response

from dq.engine.ids import now_ms
from dq.engine.scheduler import next_fires, schedule_paused_key, set_schedule_paused
from dq.engine.storage.base import ExecutionQuery, ExecutionRecord

from . import render
from .cron_words import describe
from .dashboard import Dashboard, dashboard_of
from .pages import html

Req = Request[Any, Any, Any]


@dataclass(slots=True)
class Schedule:
    job: str
    expr: str
    tz: str
    words: str
    next_fires: list[int]
    last: ExecutionRecord | None
    paused: bool


def cron_of(job: Any) -> tuple[str, str] | None:
    """(expression, time zone) of a cron job: a string, or {"expr", "tz"}."""
    cron = getattr(getattr(job, "options", None), "cron", None)
    if not cron:
        return None
    if isinstance(cron, Mapping):
        return str(cron.get("expr")), str(cron.get("tz") or "UTC")
    return str(cron), "UTC"


async def schedules(dash: Dashboard, now: int) -> list[Schedule]:
    out = []
    cron_jobs = [(name, cron_of(job)) for name, job in sorted(dash.jobs.items())]
    keys = [schedule_paused_key(name) for name, cron in cron_jobs if cron]
    paused = await dash.storage.get_state(keys) if keys else {}
    for name, cron in cron_jobs:
        if cron is None:
            continue
        expr, tz = cron
        try:
            fires = next_fires(expr, now, 5)
        except Exception:  # the scheduler refuses it the same way: shown, not fatal
            fires = []
        last = await dash.storage.query(ExecutionQuery(job_names=[name], limit=1))
        out.append(Schedule(name, expr, tz, describe(expr), fires, last[0] if last else None,
                            bool(paused.get(schedule_paused_key(name)))))  # fmt: skip
    return out


@get("/schedules", name="schedules")
async def schedules_page(request: Req) -> Response[str]:
    dash = dashboard_of(request)
    now = now_ms()
    ctx = dash.context(request, "schedules")
    ctx.update(schedules=await schedules(dash, now), now=now)
    return html(render.page("schedules.html", **ctx))


def _cron_job(dash: Dashboard, name: str) -> Any:
    if dash.settings.read_only:
        raise PermissionDeniedException("The dashboard is read-only.")
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
    return Redirect(f"/executions/{execution.id}")


@post("/schedules/{name:str}/pause", name="schedule_pause")
async def pause_schedule(request: Req, name: FromPath[str]) -> Redirect:
    dash = dashboard_of(request)
    _cron_job(dash, name)
    await set_schedule_paused(dash.storage, name, True)
    return Redirect("/schedules")


@post("/schedules/{name:str}/resume", name="schedule_resume")
async def resume_schedule(request: Req, name: FromPath[str]) -> Redirect:
    dash = dashboard_of(request)
    _cron_job(dash, name)
    await set_schedule_paused(dash.storage, name, False)
    return Redirect("/schedules")
