"""The event bus (one storage tail per process, fanned out to subscribers) and hook dispatch."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from . import context
from .event_schema import QUEUE_EVENTS, EventKind
from .scheduler import wait_event
from .storage.base import EventRecord, Storage

if TYPE_CHECKING:
    from .job import Job

log = logging.getLogger("dq")

#: How long a local commit that leaves a gap in the sequence waits for the commits
#: before it to report, before the tail reads the gap from storage.
_GAP_S = 0.02


#: Hook option called for a job event, and how its positional arguments come from the payload.
_OPTION_ARGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "trigger": ("on_trigger", ("input",)),
    "start": ("on_start", ("input",)),
    "success": ("on_success", ("input", "output")),
    "failure": ("on_failure", ("input", "error")),
    "error": ("on_error", ("input", "error")),
    "cancel": ("on_cancel", ("input", "reason")),
    "settled": ("on_settled", ("input", "result")),
}


#: A follower of the bus (`EventBus.follow`): called with each delivery's events, in order.
Sink = Callable[[list[EventRecord]], None]


class Subscription:
    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[EventRecord | None] = asyncio.Queue(maxsize)
        self.lagged = False

    def __aiter__(self) -> AsyncIterator[EventRecord]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[EventRecord]:
        while True:
            ev = await self.queue.get()
            if ev is None:
                return
            yield ev


class EventBus:
    """Delivers every committed event, in sequence order, to in-process subscribers.

    The single source is the storage's event log: one tail reader per process,
    polling for other processes' events while anyone listens. This process's
    commits are delivered from their results when they continue the sequence
    (no read back: at full load that read cost ~80 µs of CPU per event); one
    that leaves a gap is held, since the commit before it (of the other
    group-commit lane) usually reports a moment later. A gap still open after
    `_GAP_S` (another process's events) is read from the log, from the last
    delivered seq. A subscriber too slow to keep up is ended (`lagged`) rather
    than allowed to grow memory; it can resume from its last seq. A follower
    (`follow`) gets each delivery as one list instead: no queue, no hop per event.
    """

    def __init__(self, storage: Storage, poll_interval_s: float = 0.5) -> None:
        self._storage = storage
        self._poll_s = poll_interval_s
        self._subs: set[Subscription] = set()
        self._sinks: list[Sink] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Held while the tail starts: subscribers that arrive together (the dashboard's hub
        #: and a node's) would each see no tail across the seq read and start one apiece,
        #: and every event would then reach every subscriber once per tail.
        self._starting = asyncio.Lock()
        self._last = 0
        #: Local events past a gap, by seq: delivered once the gap closes.
        self._held: dict[int, EventRecord] = {}

    @property
    def last_seq(self) -> int:
        return self._last

    @asynccontextmanager
    async def subscribe(self, maxsize: int = 10_000) -> AsyncIterator[Subscription]:
        sub = Subscription(maxsize)
        await self._ensure_tail()
        self._subs.add(sub)
        try:
            yield sub
        finally:
            self._subs.discard(sub)

    @asynccontextmanager
    async def follow(self, sink: Sink) -> AsyncIterator[int]:
        """Like `subscribe`, without a queue: each delivery (a commit's events, or a read
        of the log) is one call of `sink` with its events in sequence order, from the
        delivering task. For a subscriber that keeps up by design (the dashboard's hub
        appends the list and coalesces it into its next tick): one call per commit instead
        of a queue hop per event. `sink` must be quick and must not keep the list. Yields the
        last seq delivered before it joined."""
        await self._ensure_tail()
        self._sinks.append(sink)
        try:
            yield self._last
        finally:
            self._sinks.remove(sink)

    async def _ensure_tail(self) -> None:
        async with self._starting:
            if self._task is None:
                self._last = await self._storage.last_event_seq()
                self._task = asyncio.create_task(self._tail(), name="dq-event-tail")

    def notify(self, events: list[EventRecord]) -> None:
        """Local commits: delivered now when they continue the sequence, else read by the tail."""
        if not (self._subs or self._sinks) or self._task is None or not events:
            return
        last = self._last
        if not self._held and events[0].seq == last + 1 and _run_from(events, last + 1):
            self._deliver(events)  # the usual case: one commit, its seqs next in line
            self._last = events[-1].seq
            return
        for ev in events:
            if ev.seq > last:
                self._held[ev.seq] = ev
        self._release()
        if self._held:
            self._wake.set()  # a gap: the tail reads it unless it closes within _GAP_S

    def _release(self) -> None:
        """Deliver the held events that now continue the sequence; forget those already read."""
        held = self._held
        run: list[EventRecord] = []
        while held:
            ev = held.pop(self._last + 1, None)
            if ev is None:
                for seq in [s for s in held if s <= self._last]:
                    del held[seq]
                break
            run.append(ev)
            self._last = ev.seq
        if run:
            self._deliver(run)

    async def _tail(self) -> None:
        while True:
            await wait_event(self._wake, self._poll_s)
            self._wake.clear()
            if not (self._subs or self._sinks):
                continue
            if self._held:
                await asyncio.sleep(_GAP_S)
                if not self._held:  # the commits before it reported meanwhile
                    continue
            try:
                while True:
                    events = await self._storage.read_events(self._last, limit=1000)
                    # in seq order; those delivered from their commit while this read ran are skipped
                    fresh = [ev for ev in events if ev.seq > self._last]
                    if fresh:
                        self._deliver(fresh)
                        self._last = fresh[-1].seq
                    if len(events) < 1000:
                        break
            except Exception as exc:  # storage hiccup: keep tailing
                log.warning("dq: event tail read failed: %s", exc)
            self._release()

    def _deliver(self, events: list[EventRecord]) -> None:
        """Hand `events` (in seq order, each after the last delivered) to every subscriber."""
        for sink in list(self._sinks):
            try:
                sink(events)
            except Exception:  # one follower's bug must not stop the others (or the commit)
                log.exception("dq: an event bus follower failed")
        for sub in list(self._subs):
            put = sub.queue.put_nowait
            try:
                for ev in events:
                    put(ev)
            except asyncio.QueueFull:
                sub.lagged = True
                self._subs.discard(sub)
                _drain_and_end(sub)

    async def aclose(self) -> None:
        for sub in list(self._subs):
            _drain_and_end(sub)
        self._subs.clear()
        self._sinks.clear()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None


def _run_from(events: list[EventRecord], first: int) -> bool:
    """Whether `events` carry exactly the seqs first, first + 1, ... in that order."""
    if events[-1].seq != first + len(events) - 1:
        return False
    return len(events) < 3 or [ev.seq for ev in events] == list(range(first, first + len(events)))


def _drain_and_end(sub: Subscription) -> None:
    while not sub.queue.empty():
        sub.queue.get_nowait()
    sub.queue.put_nowait(None)


Recorder = Callable[[EventKind, str | None, str | None, dict[str, Any]], None]


class Hooks:
    """Runs a job's `on_*` option, then `job.on` listeners, then `queue.on` listeners.

    A hook that raises is logged and recorded (via `record`) as a `hook_error`
    event; it never changes the execution's outcome.
    """

    def __init__(self, record: Recorder, queue: Any) -> None:
        self.queue_listeners: dict[str, list[Callable[..., Any]]] = {}
        self._record = record
        self._queue = queue

    def on(self, event: str, fn: Callable[..., Any]) -> Callable[[], None]:
        if event not in QUEUE_EVENTS:
            raise ValueError(f"queue.on: unknown event {event!r}; expected one of {list(QUEUE_EVENTS)}")
        if not callable(fn):
            raise TypeError(f"queue.on({event!r}, ...): the listener must be callable")
        self.queue_listeners.setdefault(event, []).append(fn)
        return lambda: self.queue_listeners.get(event, []).remove(fn)

    def any_for(self, job: Job) -> bool:
        return bool(self.queue_listeners or job.listeners or job.hook_options)

    def wanted(self, job: Job, event: str) -> bool:
        if not (self.queue_listeners or job.listeners or job.hook_options):
            return False
        option = _OPTION_ARGS.get(event)
        return bool(
            (option is not None and getattr(job.options, option[0]) is not None)
            or job.listeners.get("step" if event.startswith("step_") else event)
            or self.queue_listeners.get(_queue_event(event))
        )

    async def fire(self, job: Job, event: str, execution_id: str | None, payload: dict[str, Any]) -> None:
        """`payload` holds the event's data; execution_id/job_name/timestamp are added here."""
        if not self.wanted(job, event):
            return
        full = {
            "execution_id": execution_id,
            "job_name": job.name,
            "timestamp": datetime.now(UTC),
            **payload,
        }
        option = _OPTION_ARGS.get(event)
        if option is not None:
            fn = getattr(job.options, option[0])
            if fn is not None:
                await self._call(job, option[0], execution_id, fn, *(full.get(a) for a in option[1]))
        job_event = "step" if event.startswith("step_") else event
        if event != "step_start":
            for fn in list(job.listeners.get(job_event, ())):
                await self._call(job, f"{job.name}.on({job_event!r})", execution_id, fn, full)
        for fn in list(self.queue_listeners.get(_queue_event(event), ())):
            await self._call(job, f"queue.on({_queue_event(event)!r})", execution_id, fn, full)

    async def _call(
        self, job: Job, hook: str, execution_id: str | None, fn: Callable[..., Any], *args: Any
    ) -> None:
        # Hooks run as user code outside any handler: jobs are reached through the
        # ambient queue (`other.start(...)` works) and never become child steps.
        qtoken = context.set_queue(self._queue)
        etoken = context.set_execution(None)
        try:
            result = fn(*args)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            self._queue.logger.exception("dq: hook %s of job %r raised", hook, job.name)
            self._record(
                EventKind.HOOK_ERROR,
                execution_id,
                job.name,
                {"hook": hook, "error": {"type": type(exc).__name__, "message": str(exc)}},
            )
        finally:
            context.reset_execution(etoken)
            context.reset_queue(qtoken)


def _queue_event(event: str) -> str:
    return event if event.startswith("step_") else f"job_{event}"

