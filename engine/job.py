"""Job definitions: `create_job`, options checked at definition time, hooks, and the Job handle."""

from __future__ import annotations

import asyncio
import inspect
import sys
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, overload

from . import context
from .backoff import backoff_attempts, make_backoff, make_retry
from .cron import CronSchedule, parse_cron
from .durations import parse_duration
from .errors import allow_error_module
from .event_schema import JOB_EVENTS
from .limits import check_concurrency, check_debounce, check_throttle
from .serialize import check_schema, validate_in
from .waits import wait_for_job

if TYPE_CHECKING:
    from .execution import Execution
    from .queue import Queue

HOOK_OPTIONS = (
    "on_trigger", "on_start", "on_success", "on_failure", "on_error", "on_cancel", "on_settled",
)  # fmt: skip
DEFAULT_TIMEOUT = "1 day"
DEFAULT_IDEMPOTENCY_TTL = "1 day"


@dataclass
class JobOptions:
    """The options as given (the dashboard shows them); normalised forms live on the Job."""

    input: Any = None
    output: Any = None
    retry: Any = None
    backoff: Any = None
    timeout: Any = DEFAULT_TIMEOUT
    concurrency: Any = None
    throttle: Any = None
    debounce: Any = None
    priority: int = 0
    idempotency_ttl: Any = DEFAULT_IDEMPOTENCY_TTL
    cron: str | dict[str, str] | None = None
    trigger: list[Any] = field(default_factory=list)
    on_trigger: Callable[..., Any] | None = None
    on_start: Callable[..., Any] | None = None
    on_success: Callable[..., Any] | None = None
    on_failure: Callable[..., Any] | None = None
    on_error: Callable[..., Any] | None = None
    on_cancel: Callable[..., Any] | None = None
    on_settled: Callable[..., Any] | None = None


_OPTION_NAMES = {f.name for f in fields(JobOptions)}


class JobTrigger:
    """`job.into(fn)`: each output of `source` mapped by `fn` starts the listing job."""

    def __init__(self, source: Job, fn: Callable[[Any], Any] | None) -> None:
        self.source = source
        self.fn = fn


class Job:
    def __init__(self, handler: Callable[..., Any], name: str, options: JobOptions) -> None:
        self.handler = handler
        # Errors raised by the job's code may come back from storage as their own class.
        allow_error_module(getattr(handler, "__module__", None) or "__main__")
        self.name = name
        self.options = options
        #: How input and output are named in validation errors (built once, not per execution).
        self.input_what = f"input of job {name!r}"
        self.output_what = f"output of job {name!r}"
        self.retry_for = make_retry(options.retry, attempts=backoff_attempts(options.backoff))
        self.backoff_for = make_backoff(options.backoff)
        self.timeout_ms = parse_duration(options.timeout, "timeout")
        self.idempotency_ttl_ms = parse_duration(options.idempotency_ttl, "idempotency_ttl")
        self.cron: CronSchedule | None = parse_cron(options.cron) if options.cron is not None else None
        self.is_async = inspect.iscoroutinefunction(handler)
        self.takes_input = _takes_argument(handler)
        self.listeners: dict[str, list[Callable[..., Any]]] = {}
        self.hook_options = frozenset(h for h in HOOK_OPTIONS if getattr(options, h) is not None)

    def __repr__(self) -> str:
        return f"<Job {self.name!r}>"

    # -- introspection (the dashboard) ---------------------------------------
    def describe(self) -> dict[str, str]:
        o = self.options
        out: dict[str, str] = {}
        for name in ("input", "output"):
            value = getattr(o, name)
            if value is not None:
                out[name] = getattr(value, "__name__", repr(value))
        out["retry"] = _show(o.retry) if o.retry is not None else "3 (default)"
        out["backoff"] = _show(o.backoff) if o.backoff is not None else "exponential from 1s, x2, jitter"
        out["timeout"] = _show(o.timeout)
        for name in ("concurrency", "throttle", "debounce"):
            value = getattr(o, name)
            if value is not None:
                out[name] = _show(value)
        if self.cron is not None:
            out["cron"] = self.cron.describe()
        if o.priority:
            out["priority"] = str(o.priority)
        if o.trigger:
            out["trigger"] = ", ".join(_show_trigger(t) for t in o.trigger)
        hooks = [h for h in HOOK_OPTIONS if getattr(o, h) is not None]
        if hooks:
            out["hooks"] = ", ".join(hooks)
        return out

    # -- listeners -------------------------------------------------------------
    def on(self, event: str, fn: Callable[..., Any]) -> Callable[[], None]:
        """Listen to `event` of this job; returns a function that removes the listener."""
        if event not in JOB_EVENTS:
            raise ValueError(f"job.on: unknown event {event!r}; expected one of {list(JOB_EVENTS)}")
        if not callable(fn):
            raise TypeError(f"job.on({event!r}, ...): the listener must be callable")
        self.listeners.setdefault(event, []).append(fn)
        return lambda: self.listeners.get(event, []).remove(fn)

    def into(self, fn: Callable[[Any], Any] | None = None) -> JobTrigger:
        return JobTrigger(self, fn)

    # -- running ---------------------------------------------------------------
    def _queue(self, method: str) -> Queue:
        """The handler's queue; outside handlers, the one started queue holding this job."""
        queue = context.ambient_queue()
        if queue is not None:
            return queue
        return context.only_started_queue(
            lambda q: q.definitions.get(self.name) is self,
            f"{self.name}.{method}()", f"queue.jobs[{self.name!r}].{method}(...)",
        )  # fmt: skip

    # run/start are plain functions returning a coroutine so that the call site's line
    # is known even when the coroutine runs in another task (asyncio.gather).
    def run(self, input: Any = None, *, idempotency_key: str | None = None) -> Coroutine[Any, Any, Any]:
        return self._queue("run").runtime.run_job(self, input, _call_line(), idempotency_key)

    def start(self, input: Any = None, *, idempotency_key: str | None = None) -> Coroutine[Any, Any, Execution]:
        return self._queue("start").runtime.start_job(self, input, _call_line(), idempotency_key)

    async def cancel(self, input: Any = None, reason: str | None = None) -> int:
        return await self._queue("cancel").lifecycle.cancel_job(self, input, reason)

    async def pause(self, *, by: str = "api") -> None:
        await self._queue("pause").lifecycle.pause_job(self, by=by)

    async def resume(self, *, by: str = "api") -> None:
        await self._queue("resume").lifecycle.resume_job(self, by=by)

    async def wait_for(self, match: Any, *, timeout: Any = None) -> Any:
        return await wait_for_job(self, match, timeout)


class BoundJob:
    """A job reached through its queue (`queue.jobs.name`): usable outside handlers."""

    def __init__(self, job: Job, queue: Queue) -> None:
        self.job = job
        self.queue = queue

    def __getattr__(self, name: str) -> Any:
        return getattr(self.job, name)

    def __repr__(self) -> str:
        return f"<Job {self.job.name!r} of {self.queue!r}>"

    def run(self, input: Any = None, *, idempotency_key: str | None = None) -> Coroutine[Any, Any, Any]:
        return self.queue.runtime.run_job(self.job, input, _call_line(), idempotency_key)

    def start(self, input: Any = None, *, idempotency_key: str | None = None) -> Coroutine[Any, Any, Execution]:
        return self.queue.runtime.start_job(self.job, input, _call_line(), idempotency_key)

    async def start_many(self, inputs: Iterable[Any]) -> list[Execution]:
        """Start one execution per input, stored in bulk (outside handlers)."""
        runtime = await self.queue.started()
        return await runtime.start_many(self.job, list(inputs))

    async def cancel(self, input: Any = None, reason: str | None = None) -> int:
        return await self.queue.lifecycle.cancel_job(self.job, input, reason)

    async def pause(self, *, by: str = "api") -> None:
        await self.queue.lifecycle.pause_job(self.job, by=by)

    async def resume(self, *, by: str = "api") -> None:
        await self.queue.lifecycle.resume_job(self.job, by=by)


def _call_line() -> int:
    return sys._getframe(2).f_lineno


def _takes_argument(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params
    )


def _show(value: Any) -> str:
    if callable(value):
        return f"fn {getattr(value, '__name__', 'callable')}(...)"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:g} ms" if isinstance(value, float) else str(value)
    return str(value)


def _show_trigger(t: Any) -> str:
    if isinstance(t, JobTrigger):
        return f"job {t.source.name}" + (" (mapped)" if t.fn else "")
    return f"pipe {getattr(t, 'name', t)}" + (" (mapped)" if getattr(t, "fn", None) else "")


@overload
def create_job(handler: Callable[..., Any], /, *, name: str | None = None, **options: Any) -> Job: ...
@overload
def create_job(
    handler: None = None, /, *, name: str | None = None, **options: Any
) -> Callable[[Callable[..., Any]], Job]: ...


def create_job(
    handler: Callable[..., Any] | None = None, /, *, name: str | None = None, **options: Any
) -> Job | Callable[[Callable[..., Any]], Job]:
    """Define a job; without a handler, a decorator. Every option is checked here."""
    unknown = set(options) - _OPTION_NAMES
    if unknown:
        raise TypeError(f"create_job: unknown option(s) {sorted(unknown)}")
    opts = JobOptions(**options)
    if opts.input is not None:
        check_schema(opts.input, "input")
    if opts.output is not None:
        check_schema(opts.output, "output")
    if isinstance(opts.priority, bool) or not isinstance(opts.priority, int):
        raise ValueError(f"priority: expected an int, got {opts.priority!r}")
    check_concurrency(opts.concurrency)
    check_throttle(opts.throttle)
    check_debounce(opts.debounce)
    if opts.cron is not None:
        parse_cron(opts.cron)
        if opts.input is not None:
            try:
                validate_in(opts.input, None, "input")
            except Exception:
                raise ValueError(
                    f"cron: jobs on a schedule are started with no input, but input={opts.input!r} rejects None"
                ) from None
    if not isinstance(opts.trigger, list | tuple):
        raise ValueError(f"trigger: expected a list of pipes or job.into(...), got {opts.trigger!r}")
    opts.trigger = list(opts.trigger)
    for hook in HOOK_OPTIONS:
        value = getattr(opts, hook)
        if value is not None and not callable(value):
            raise TypeError(f"{hook}: expected a function, got {value!r}")

    def define(fn: Callable[..., Any]) -> Job:
        if not callable(fn):
            raise TypeError(f"create_job: the handler must be a function, got {fn!r}")
        job_name = name if name is not None else getattr(fn, "__name__", None)
        if not job_name or not isinstance(job_name, str):
            raise ValueError("create_job: a job needs a name (name=...)")
        job = Job(fn, job_name, opts)
        if asyncio.iscoroutinefunction(fn) is False and inspect.isasyncgenfunction(fn):
            raise TypeError(f"job {job_name!r}: an async generator cannot be a handler")
        return job

    return define(handler) if handler is not None else define
