"""Acting on what the dashboard shows: the replay dialog, bulk actions, job controls.

Every action is a call of the public lifecycle API (`Execution.replay`,
`queue.jobs.cancel_all` ..., `job.pause`), recorded in each execution's event
log with `by="dashboard"` (or `"dashboard (bulk)"`); every POST is
CSRF-checked by the app and refused in read-only mode.

A bulk action runs as a background task of this process: the confirm step
counts the matches, the POST starts the task and answers with a progress
fragment that polls `/bulk/{id}` until it is done. Tasks are kept in memory
(the last `_KEEP` of them): a restarted dashboard forgets its progress bars,
never the executions' state.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from litestar import Request, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.response import Response

from dq import DqError, ValidationError
from dq.engine.ids import new_id, now_ms
from dq.engine.storage.base import ExecutionQuery, ExecutionRecord

from . import loaders, prefix, render
from .dashboard import Dashboard, dashboard_of
from .filters import Filters, parse_filters
from .pages import html

Req = Request[Any, Any, Any]

BULK_ACTIONS = ("cancel", "pause", "resume", "retry", "replay")
_KEEP = 50
_MAX_SELECTED = 500


def _redirect(request: Req, path: str) -> Response[str]:
    url = prefix.url(path)
    if request.headers.get("hx-request"):
        return Response(content="", status_code=200, headers={"HX-Redirect": url})
    return Response(content="", status_code=303, headers={"Location": url})


# --- the replay dialog -------------------------------------------------------------------


def code_changed(dash: Dashboard, rec: ExecutionRecord) -> bool:
    """Whether the job's source file was modified after the execution was created."""
    src = dash.source(rec.job_name)
    try:
        return src is not None and os.path.getmtime(src.file) * 1000 > rec.created_at
    except OSError:
        return False


async def _replay_context(dash: Dashboard, rec: ExecutionRecord, from_step: str, input_text: str | None) -> dict[str, Any]:
    plan = await loaders.replay_plan(dash, rec, from_step)
    return {
        "rec": rec,
        "rows": plan.rows,
        "from_step": plan.from_step,
        "input_text": input_text if input_text is not None else json.dumps(rec.input, indent=2, ensure_ascii=False),
        "code_changed": code_changed(dash, rec),
        "job_missing": dash.job(rec.job_name) is None,
        "error": None,
    }


async def _ended(dash: Dashboard, execution_id: str) -> ExecutionRecord:
    rec = await dash.storage.get_execution(execution_id)
    if rec is None:
        raise NotFoundException(f"No execution has the id {execution_id!r}.")
    return rec


@get("/executions/{execution_id:str}/replay", name="replay_dialog")
async def replay_dialog(request: Req, execution_id: FromPath[str]) -> Response[str]:
    dash = dashboard_of(request)
    dash.require_writable()
    rec = await _ended(dash, execution_id)
    qp = request.query_params
    ctx = await _replay_context(dash, rec, qp.get("from_step") or "", qp.get("input"))
    return html(render.block("operate.html", "replay_dialog", **ctx))


@post("/executions/{execution_id:str}/replay", name="replay")
async def replay(request: Req, execution_id: FromPath[str]) -> Response[str]:
    """Validate the JSON and the step server-side, replay, go to the new execution."""
    dash = dashboard_of(request)
    dash.require_writable()
    rec = await _ended(dash, execution_id)
    form = await request.form()
    from_step = str(form.get("from_step") or "")
    text = str(form.get("input") or "").strip() or "null"
    ctx = await _replay_context(dash, rec, from_step, text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        ctx["error"] = f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        return _dialog(request, ctx)
    execution = await dash.queue.jobs.get(execution_id)
    if execution is None:  # pragma: no cover - deleted in between
        raise NotFoundException(f"No execution has the id {execution_id!r}.")
    try:
        new = await execution.replay(from_step=from_step or None, input=value, by="dashboard")
    except ValidationError as exc:
        ctx["error"] = f"Invalid input: {exc}"
        return _dialog(request, ctx)
    except (ValueError, DqError) as exc:
        ctx["error"] = str(exc)
        return _dialog(request, ctx)
    return _redirect(request, f"/executions/{new.id}")


def _dialog(request: Req, ctx: dict[str, Any]) -> Response[str]:
    return html(render.block("operate.html", "replay_dialog", **ctx), status_code=200 if request.headers.get("hx-request") else 422)


# --- bulk actions ---------------------------------------------------------------------------


@dataclass(slots=True)
class BulkTask:
    id: str
    action: str
    total: int
    describe: str
    seen: int = 0
    done: int = 0
    finished: bool = False
    error: str | None = None
    started_at: int = field(default_factory=now_ms)


_tasks: OrderedDict[str, BulkTask] = OrderedDict()
#: The running tasks themselves (the event loop keeps only weak references).
_running: set[asyncio.Task[None]] = set()


def describe_filters(f: Filters) -> str:
    parts = []
    if f.statuses:
        parts.append("status " + " or ".join(f.statuses))
    if f.jobs:
        parts.append("job " + " or ".join(f.jobs))
    if f.q:
        parts.append(f"search “{f.q}”")
    parts += [f"{k.replace('_', ' ')} {v}" for k, v in {**f.times, **f.ints}.items()]
    return ", ".join(parts) or "no filter: every execution"


def _selection(form: Any, dash: Dashboard) -> tuple[ExecutionQuery, str, Filters | None]:
    """The executions a bulk form names: the ticked ids, or everything matching its filter."""
    if form.get("scope") == "selected":
        ids = [str(i) for i in form.getall("ids", [])][:_MAX_SELECTED]
        return ExecutionQuery(ids=ids), f"{len(ids)} selected execution{'s' if len(ids) != 1 else ''}", None
    params: dict[str, list[str]] = {}
    for key in ("status", "job", "q", "started_after", "started_before", "completed_after",
                "completed_before", "retry", "retry_lt", "retry_gt"):  # fmt: skip
        values = [str(v) for v in form.getall(key, [])]
        if values:
            params[key] = values
    f = parse_filters(params, list(dash.jobs))
    return f.query(), describe_filters(f), f


def _start(dash: Dashboard, action: str, query: ExecutionQuery, from_step: str | None, total: int, describe: str) -> BulkTask:
    task = BulkTask(new_id(), action, total, describe)
    _tasks[task.id] = task
    while len(_tasks) > _KEEP:
        _tasks.popitem(last=False)

    def progress(seen: int, done: int) -> None:
        task.seen, task.done = seen, done

    async def work() -> None:
        bulk, by = dash.queue.bulk, "dashboard (bulk)"
        try:
            await dash.queue.started()
            if action == "cancel":
                task.done = await bulk.cancel_all(query, "cancelled from the dashboard", by=by, progress=progress)
            elif action == "replay":
                task.done = await bulk.replay_all(query, from_step, by=by, progress=progress)
            else:
                task.done = await getattr(bulk, f"{action}_all")(query, by=by, progress=progress)
        except Exception as exc:  # shown in the progress box; the executions keep their state
            task.error = f"{type(exc).__name__}: {exc}"
        finally:
            task.finished = True

    running = asyncio.get_running_loop().create_task(work(), name=f"dq:bulk:{task.id}")
    _running.add(running)
    running.add_done_callback(_running.discard)
    return task


@post("/bulk", name="bulk")
async def bulk_action(request: Req) -> Response[str]:
    """Without `confirm`: the confirm step (count and filter). With it: start, show progress."""
    dash = dashboard_of(request)
    dash.require_writable()
    form = await request.form()
    action = str(form.get("action") or "")
    if action not in BULK_ACTIONS:
        return html(f"<div class='form-error'>Unknown action {action!r}: expected one of {', '.join(BULK_ACTIONS)}.</div>", 400)
    from_step = str(form.get("from_step") or "") or None
    query, describe, f = _selection(form, dash)
    if f is not None and f.errors:
        return html(f"<div class='form-error'>{'; '.join(f.errors)}</div>", 400)
    total = sum((await dash.storage.count(query)).values())
    hidden = [(k, str(v)) for k, v in form.multi_items() if k not in ("confirm", "_csrf_token")]
    if not form.get("confirm"):
        ctx = {"action": action, "total": total, "describe": describe, "hidden": hidden, "from_step": from_step}
        return html(render.block("operate.html", "bulk_confirm", **ctx))
    task = _start(dash, action, query, from_step, total, describe)
    return html(render.block("operate.html", "bulk_progress", task=task))


@get("/bulk/{task_id:str}", name="bulk_progress")
async def bulk_progress(request: Req, task_id: FromPath[str]) -> Response[str]:
    task = _tasks.get(task_id)
    if task is None:
        raise NotFoundException(f"No bulk action {task_id!r} in this process.")
    return html(render.block("operate.html", "bulk_progress", task=task))


# --- job controls ---------------------------------------------------------------------------


@post("/jobs/{name:str}/pause", name="job_pause")
async def job_pause(request: Req, name: FromPath[str]) -> Response[str]:
    return await _job_control(request, name, "pause")


@post("/jobs/{name:str}/resume", name="job_resume")
async def job_resume(request: Req, name: FromPath[str]) -> Response[str]:
    return await _job_control(request, name, "resume")


async def _job_control(request: Req, name: str, action: str) -> Response[str]:
    dash = dashboard_of(request)
    dash.require_writable()
    if dash.job(name) is None:
        raise NotFoundException(f"This queue has no job named {name!r}.")
    job = dash.queue.jobs[name]
    await (job.pause(by="dashboard") if action == "pause" else job.resume(by="dashboard"))
    return _redirect(request, f"/jobs/{name}")


@post("/jobs/{name:str}/cancel", name="job_cancel")
async def job_cancel(request: Req, name: FromPath[str]) -> Response[str]:
    """Cancel the unfinished executions of a job whose input contains the given JSON object."""
    dash = dashboard_of(request)
    dash.require_writable()
    if dash.job(name) is None:
        raise NotFoundException(f"This queue has no job named {name!r}.")
    form = await request.form()
    text = str(form.get("input") or "").strip() or "{}"
    ctx: dict[str, Any] = {"job_name": name, "cancel_input": text, "cancel_error": None, "cancelled": None}
    try:
        subset = json.loads(text)
        if not isinstance(subset, dict):
            raise ValueError(f"expected a JSON object (a part of the input), got {text!r}")
        ctx["cancelled"] = await dash.queue.jobs.cancel_all(
            job_name=name, input=subset, reason="cancelled by input from the dashboard", by="dashboard"
        )
    except json.JSONDecodeError as exc:
        ctx["cancel_error"] = f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
    except ValueError as exc:
        ctx["cancel_error"] = str(exc)
    failed = ctx["cancel_error"] is not None and not request.headers.get("hx-request")
    return html(render.block("job.html", "cancel_by_input", **ctx), 422 if failed else 200)
