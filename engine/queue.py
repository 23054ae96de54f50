"""The queue: jobs and pipes bound to a storage and a runtime; queries over executions."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from . import context
from .bulk import Bulk
from .distributed.monitoring import Monitoring
from .distributed.service import Orchestration, WorkerService
from .durations import parse_duration
from .errors import DqError
from .execution import Execution
from .job import BoundJob, Job
from .lifecycle import Lifecycle
from .pipe import BoundPipe, Pipe
from .replay import Replayer
from .retention import parse_retention
from .runtime import Runtime
from .serialize import plain_json
from .storage.base import STATUSES, ExecutionQuery, Storage
from .storage.memory import MemoryStorage
from .storage.query import check_keys

_FILTERS = {
    "status", "job_name", "started_before", "started_after", "completed_before",
    "completed_after", "created_before", "created_after", "retry_count",
    "retry_count_less_than", "retry_count_greater_than", "limit", "offset", "order",
    "parent_id", "root_id", "id_contains", "cursor", "idempotency_key", "input", "replay_of",
}  # fmt: skip


def _ms(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{name}: expected a datetime or ISO date string, got {value!r}") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            from datetime import UTC

            value = value.replace(tzinfo=UTC)
        return int(value.timestamp() * 1000)
    raise ValueError(f"{name}: expected a datetime or ISO date string, got {value!r}")


def _names(value: Any, name: str) -> list[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(v, str) for v in items):
        raise ValueError(f"{name}: expected a string or a list of strings, got {value!r}")
    return items


def _input_subset(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"input: expected a dict (a subset of the input JSON), got {value!r}")
    try:
        subset = plain_json(value, "input")
        json.dumps(subset, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"input: {exc}") from None
    check_keys(subset)
    return cast(dict[str, Any], subset)


def build_query(filters: Mapping[str, Any]) -> ExecutionQuery:
    """The query filters of docs/queries.md as an ExecutionQuery; unknown or malformed filters are errors."""
    unknown = set(filters) - _FILTERS
    if unknown:
        raise TypeError(f"unknown query filter(s) {sorted(unknown)}; expected some of {sorted(_FILTERS)}")
    statuses = _names(filters.get("status"), "status")
    for s in statuses or ():
        if s not in STATUSES:
            raise ValueError(f"status: unknown status {s!r}; expected one of {list(STATUSES)}")
    order = filters.get("order", "newest")
    if order not in ("newest", "oldest"):
        raise ValueError(f"order: expected 'newest' or 'oldest', got {order!r}")
    ints = {}
    for key in ("retry_count", "retry_count_less_than", "retry_count_greater_than", "limit", "offset"):
        v = filters.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ValueError(f"{key}: expected a non-negative int, got {v!r}")
        ints[key] = v
    return ExecutionQuery(
        statuses=statuses,
        job_names=_names(filters.get("job_name"), "job_name"),
        parent_id=filters.get("parent_id"),
        root_id=filters.get("root_id"),
        replay_of=filters.get("replay_of"),
        id_contains=filters.get("id_contains"),
        idempotency_key=filters.get("idempotency_key"),
        cursor=filters.get("cursor"),
        created_before=_ms(filters.get("created_before"), "created_before"),
        created_after=_ms(filters.get("created_after"), "created_after"),
        started_before=_ms(filters.get("started_before"), "started_before"),
        started_after=_ms(filters.get("started_after"), "started_after"),
        completed_before=_ms(filters.get("completed_before"), "completed_before"),
        completed_after=_ms(filters.get("completed_after"), "completed_after"),
        retry_count=ints["retry_count"],
        retry_count_less_than=ints["retry_count_less_than"],
        retry_count_greater_than=ints["retry_count_greater_than"],
        limit=ints["limit"],
        offset=ints["offset"] or 0,
        order=order,
        input=_input_subset(filters.get("input")),
    )


class JobsRegistry:
    """`queue.jobs`: the jobs by attribute or name, and the queries."""

    def __init__(self, queue: Queue, by_key: dict[str, Job]) -> None:
        self._queue = queue
        self._by_key = by_key

    @property
    def definitions(self) -> dict[str, Job]:
        return self._queue.definitions

    def _find(self, name: str) -> Job | None:
        return self._by_key.get(name) or self._queue.definitions.get(name)

    def __getattr__(self, name: str) -> BoundJob:
        if name.startswith("_"):
            raise AttributeError(name)
        job = self._find(name)
        if job is None:
            raise AttributeError(f"unknown job {name!r}; this queue has {sorted(self._queue.definitions)}")
        return BoundJob(job, self._queue)

    def __getitem__(self, name: str) -> BoundJob:
        job = self._find(name)
        if job is None:
            raise KeyError(f"unknown job {name!r}; this queue has {sorted(self._queue.definitions)}")
        return BoundJob(job, self._queue)

    def __iter__(self) -> Iterator[str]:
        return iter(self._queue.definitions)

    def __len__(self) -> int:
        return len(self._queue.definitions)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._find(name) is not None

    async def get(self, execution_id: str) -> Execution | None:
        await self._queue.started()
        rec = await self._queue.storage.get_execution(execution_id)
        return Execution(self._queue, rec) if rec is not None else None

    async def get_all(self, **filters: Any) -> list[Execution]:
        query = build_query(filters)
        await self._queue.started()
        return [Execution(self._queue, r) for r in await self._queue.storage.query(query)]

    async def get_first(self, **filters: Any) -> Execution | None:
        filters["limit"] = 1
        found = await self.get_all(**filters)
        return found[0] if found else None

    # Bulk actions take get_all's filters and return how many executions they changed;
    # `by` is recorded in each one's event log as who asked.
    async def cancel_all(self, *, reason: str | None = None, by: str = "bulk", **filters: Any) -> int:
        """Cancel the unfinished matches (and their children)."""
        query = build_query(filters)
        await self._queue.started()
        return await self._queue.bulk.cancel_all(query, reason, by=by)

    async def pause_all(self, *, by: str = "bulk", **filters: Any) -> int:
        """Pause the pending, waiting and running matches (running ones at their next step)."""
        query = build_query(filters)
        await self._queue.started()
        return await self._queue.bulk.pause_all(query, by=by)

    async def resume_all(self, *, by: str = "bulk", **filters: Any) -> int:
        query = build_query(filters)
        await self._queue.started()
        return await self._queue.bulk.resume_all(query, by=by)

    async def retry_all(self, *, by: str = "bulk", **filters: Any) -> int:
        """Retry the failed matches (cancelled ones too when `status` names them)."""
        query = build_query(filters)
        await self._queue.started()
        return await self._queue.bulk.retry_all(query, by=by)

    async def replay_all(self, *, from_step: str | None = None, by: str = "bulk", **filters: Any) -> int:
        """Replay each ended match (`Execution.replay`); with `from_step`, those that
        did not record that step are left out."""
        query = build_query(filters)
        await self._queue.started()
        return await self._queue.bulk.replay_all(query, from_step, by=by)


class PipesRegistry:
    def __init__(self, queue: Queue, pipes: dict[str, Pipe]) -> None:
        self._queue = queue
        self._pipes = pipes

    def __getattr__(self, name: str) -> BoundPipe:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]

    def __getitem__(self, name: str) -> BoundPipe:
        pipe = self._pipes.get(name) or next((p for p in self._pipes.values() if p.name == name), None)
        if pipe is None:
            raise KeyError(f"unknown pipe {name!r}; this queue has {sorted(self._pipes)}")
        return BoundPipe(pipe, self._queue)

    def __iter__(self) -> Iterator[str]:
        return iter(self._pipes)

    def values(self) -> list[Pipe]:
        return list(self._pipes.values())


class Queue:
    def __init__(
        self,
        jobs: Mapping[str, Job] | Sequence[Job],
        pipes: Mapping[str, Pipe] | Sequence[Pipe] | None = None,
        storage: Storage | None = None,
        concurrency: int | None = None,
        logger: logging.Logger | None = None,
        orchestration: Mapping[str, Any] | None = None,
        monitoring: Mapping[str, Any] | None = None,
        *,
        lease: Any = "30s",
        poll_interval: Any = "1s",
        short_sleep: Any = "5s",
        shutdown_grace: Any = "10s",
        retention: Mapping[str, Any] | None = None,
    ) -> None:
        pairs = list(jobs.items()) if isinstance(jobs, Mapping) else [(j.name, j) for j in jobs]
        by_key = dict(pairs)
        self._args = {"jobs": jobs, "pipes": pipes, "concurrency": concurrency, "logger": logger,
                      "orchestration": orchestration, "monitoring": monitoring, "lease": lease,
                      "poll_interval": poll_interval, "short_sleep": short_sleep,
                      "shutdown_grace": shutdown_grace, "retention": retention}  # fmt: skip
        self.definitions: dict[str, Job] = {}
        for key, job in pairs:
            if not isinstance(job, Job):
                raise TypeError(f"create_queue: jobs[{key!r}] is not a job (use create_job), got {job!r}")
            other = self.definitions.get(job.name)
            if other is not None and other is not job:
                raise ValueError(f"create_queue: two different jobs are named {job.name!r}")
            self.definitions[job.name] = job
        pipe_map = dict(pipes) if isinstance(pipes, Mapping) else {p.name: p for p in pipes or ()}
        if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1):
            raise ValueError(f"create_queue: concurrency must be an int >= 1, got {concurrency!r}")
        self.storage: Storage = storage if storage is not None else MemoryStorage()
        self.logger = logger or logging.getLogger("dq")
        self.concurrency = concurrency
        self.orchestration_options = orchestration
        self.monitoring_options = monitoring
        self.lease_ms = parse_duration(lease, "lease")
        self.poll_interval_s = parse_duration(poll_interval, "poll_interval") / 1000
        self.short_sleep_ms = parse_duration(short_sleep, "short_sleep")
        self.shutdown_grace_s = parse_duration(shutdown_grace, "shutdown_grace") / 1000
        self.max_active = concurrency or 10_000
        #: The retention policy as given (the dashboard shows it), and in ms per status.
        self.retention_ms = parse_retention(retention)
        self.retention = dict(retention or {})
        self.jobs = JobsRegistry(self, by_key)
        self.pipes = PipesRegistry(self, pipe_map)
        self.runtime = Runtime(self)
        self.lifecycle = Lifecycle(self)
        #: The orchestration node and the remote worker (docs/distribution.md).
        self.orchestration = Orchestration(self)
        self.worker = WorkerService(self)
        #: The dashboard on the node's server (`monitoring={"endpoint": ...}`).
        self.monitoring = Monitoring(self)
        self.replayer = Replayer(self)
        self.bulk = Bulk(self)
        self._start_task: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<Queue {sorted(self.definitions)} on {self.storage.kind}>"

    def with_storage(self, storage: Storage) -> Queue:
        """The same jobs, pipes and options on another storage (e.g. `dq-ui serve --storage`)."""
        return Queue(storage=storage, **self._args)

    @property
    def bus(self) -> Any:
        return self.runtime.bus

    def on(self, event: str, fn: Any) -> Any:
        return self.runtime.hooks.on(event, fn)

    async def start(self) -> None:
        await self.started()

    async def started(self) -> Runtime:
        """Start once (open storage, recover, dispatch); every caller waits for readiness."""
        if self._closed:
            raise DqError("this queue is closed")
        if self._start_task is None:
            self._start_task = asyncio.ensure_future(self.runtime.start())
        await asyncio.shield(self._start_task)
        self.runtime.check_usable()  # storage lost dq's data: StorageLostError
        context.queue_started(self)
        return self.runtime

    def holds_pipe(self, name: str) -> bool:
        """Whether this queue has the pipe `name`: in `pipes`, or as a trigger of a job."""
        if any(p.name == name for p in self.pipes.values()):
            return True
        return any(getattr(t, "name", None) == name for j in self.definitions.values() for t in j.options.trigger)

    @property
    def ready(self) -> asyncio.Future[None]:
        """Awaitable: resolves once storage is open and recovery is done (starts the queue)."""
        return asyncio.ensure_future(self.start())

    async def close(self) -> None:
        """Stop intake, let running handlers reach a step boundary (up to shutdown_grace),
        release what is left for a later start to resume, and close storage."""
        if self._closed:
            return
        self._closed = True
        context.queue_closed(self)
        if self._start_task is not None:
            try:
                await self._start_task
            except Exception:
                await self.storage.aclose()
                return
            await self.runtime.close(self.shutdown_grace_s)

    async def aclose(self) -> None:
        await self.close()

    async def __aenter__(self) -> Queue:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def create_queue(
    jobs: Mapping[str, Job] | Sequence[Job],
    pipes: Mapping[str, Pipe] | Sequence[Pipe] | None = None,
    storage: Storage | None = None,
    concurrency: int | None = None,
    logger: logging.Logger | None = None,
    orchestration: Mapping[str, Any] | None = None,
    monitoring: Mapping[str, Any] | None = None,
    **options: Any,
) -> Queue:
    return Queue(jobs, pipes, storage, concurrency, logger, orchestration, monitoring, **options)
