"""The live hub: one follower of the event bus per server, fanned out to every SSE client.

The bus hands the hub each commit's events as one list (`EventBus.follow`); they
wait for the next tick, where the per-event bookkeeping (the /metrics counters,
the live step of each execution) runs in one pass over them. Events are
coalesced into ticks (at most one per `tick_s`). For each tick the
hub reads what the watched pages need — once, whatever the number of clients
— renders the fragments once, and hands the same messages to every client
queue. Storage work therefore depends on *what* is watched (the overview, a
list, some executions), never on *how many* browsers watch it.

A list page receives only the rows it lists: the hub renders a changed row
only when some connected page shows it (`Client.shows`), and announces created
executions with one message per tick (each page counts those its filters
match). The work per tick is thus bounded by what the open pages show, not by
the engine's event rate; a tick that took long delays the next one
(`_PACE`), so under load the hub's share of the process stays bounded.

A ring of recent ticks lets a reconnecting client (`Last-Event-ID` or
`?after=`) catch up without gaps or repeats; a client that asks for more than
the ring holds, or that fell too far behind, is resynced from storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Iterable
from operator import attrgetter
from typing import TYPE_CHECKING

from dq.engine.event_schema import ENDINGS, OUTCOMES, STEP_POSITION, EventKind
from dq.engine.ids import now_ms
from dq.engine.storage.base import TERMINAL, EventRecord, ExecutionRecord

from . import live, loaders, prefix
from .filters import Filters
from .hub_client import Client, Tick, filtered
from .live import ExecCache, Message
from .views import children_of, needs_live_step

if TYPE_CHECKING:
    from .dashboard import Dashboard

log = logging.getLogger("dq.web")

RESYNC = "resync"
#: Events waiting for a tick beyond which the hub drops them and resyncs its pages instead.
_MAX_PENDING = 200_000
#: The events that move an execution's live step (`Hub.current`).
_TRACKED = STEP_POSITION | ENDINGS
_TRIGGER = EventKind.TRIGGER
_EXECUTION_ID = attrgetter("execution_id")
#: The pause after a tick is at least this many times the tick's own duration.
_PACE = 3.0


class Hub:
    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash
        self.settings = dash.settings
        self.clients: set[Client] = set()
        self.interest: Counter[str] = Counter()
        self.ring: deque[Tick] = deque()
        self.head = 0  # the last event seq processed
        self.covered_from = 0  # the ring holds every tick after this seq
        self.cache: dict[str, ExecCache] = {}
        self.started = asyncio.Event()
        #: Events delivered since the last tick; the first `_absorbed` are counted (`absorb`).
        self._pending: list[EventRecord] = []
        self._absorbed = 0
        self._overflow = asyncio.Event()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._last_refresh = 0.0
        self._last_scan = 0.0
        self._last_counts = 0.0
        self._counts_dirty = False
        #: Rows to send on the next tick although no event touched them (see `connect`).
        self._stale_rows: set[str] = set()
        self._scan_dirty = True
        self.ticks = 0
        #: execution id -> the step it is in, from the events (records may not carry it)
        self.current: dict[str, str] = {}

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._read_bus(), name="dq-web-bus"),
            asyncio.create_task(self._loop(), name="dq-web-hub"),
        ]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self.started.wait()

    async def aclose(self) -> None:
        self._closing = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        for client in list(self.clients):
            _put(client, None)

    # -- clients --------------------------------------------------------------------
    def connect(self, topics: Iterable[str], after: int | None, filters: Filters | None = None, *,
                shown: set[str] | None = None, span: tuple[str, str] | None = None) -> tuple[Client, list[Tick] | None]:  # fmt: skip
        """Register a client. Returns it and the ticks to replay, or None when it must be resynced."""
        client = Client(frozenset(topics), after or self.head, filters, shown=shown, span=span)
        client.queue = asyncio.Queue(self.settings.client_queue)
        self.clients.add(client)
        since = self.covered_from
        for topic in client.topics:
            self.interest[topic] += 1
            if topic.startswith("exec:"):
                cache = self.cache.setdefault(topic[5:], ExecCache(since=self.head))
                since = max(since, cache.since)
        self._wake.set()
        if after is None or after >= self.head:
            return client, []
        if after >= since:
            replay = [t for t in self.ring if t.seq > after]
            if "rows" in client.topics and (shown is not None or span is not None):
                # Those ticks carry the rows other pages showed: this page's come next tick.
                self._stale_rows.update(i for t in replay for i in t.changed if client.shows(i))
            return client, replay
        return client, None

    def disconnect(self, client: Client) -> None:
        if client not in self.clients:
            return
        self.clients.discard(client)
        for topic in client.topics:
            self.interest[topic] -= 1
            if self.interest[topic] <= 0:
                del self.interest[topic]
                if topic.startswith("exec:"):
                    self.cache.pop(topic[5:], None)

    # -- the bus --------------------------------------------------------------------
    async def _read_bus(self) -> None:
        """Follow the bus until closed: each commit's events land in `_pending` with one
        call (`_receive`), and wait there for the next tick; the per-event bookkeeping
        (`absorb`) runs then, in one pass, or earlier when a page or /metrics reads it."""
        bus = self.dash.queue.bus
        while not self._closing:
            try:
                async with bus.follow(self._receive) as base:
                    if self.started.is_set():  # following again: whatever fell between is lost
                        self._gap(base)
                    else:
                        self.head = self.covered_from = base
                        self.started.set()
                    self._overflow.clear()
                    await self._overflow.wait()
                log.warning("dq-ui: %d events awaited a tick; resyncing the pages", _MAX_PENDING)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dq-ui: following the events failed; retrying in 1 s")
                await asyncio.sleep(1)

    def _receive(self, events: list[EventRecord]) -> None:
        """The bus's sink: called with each delivery, from the task that committed it."""
        if self._overflow.is_set():
            return
        self._pending += events
        if len(self._pending) > _MAX_PENDING:  # the hub fell behind (a stalled tick): start over
            self._pending, self._absorbed = [], 0
            self._overflow.set()
        self._wake.set()

    def absorb(self) -> None:
        """Count the events not yet seen into the metrics and the live step of each execution."""
        pending = self._pending
        if self._absorbed < len(pending):
            fresh = pending[self._absorbed :] if self._absorbed else pending
            self._absorbed = len(pending)
            self.dash.metrics.observe_many(fresh)
            self._track(fresh)

    def _track(self, events: list[EventRecord]) -> None:
        current = self.current
        for ev in events:
            if ev.type in _TRACKED and ev.execution_id:
                if ev.type in ENDINGS:
                    current.pop(ev.execution_id, None)
                elif isinstance(ev.data, dict) and ev.data.get("key"):
                    current[ev.execution_id] = str(ev.data["key"])
        if len(current) > 50_000:
            current.clear()

    def fill(self, recs: Iterable[ExecutionRecord]) -> None:
        """Give active records the step they are in, from the latest events seen."""
        self.absorb()
        for rec in recs:
            if needs_live_step(rec):
                rec.current_step = self.current.get(rec.id) or rec.current_step

    def filled(self, recs: list[ExecutionRecord]) -> list[ExecutionRecord]:
        self.fill(recs)
        return recs

    def _gap(self, base: int) -> None:
        self.ring.clear()
        self.head = self.covered_from = max(base, self.head)
        for c in self.cache.values():
            c.loaded = False
        for client in list(self.clients):
            _put(client, RESYNC)

    # -- ticks ----------------------------------------------------------------------
    async def _loop(self) -> None:
        prefix.BASE.set(self.settings.base)
        # A stop flag as well as cancellation: on Python 3.11, asyncio.wait_for can swallow a
        # cancel that lands as its inner wait completes (cpython gh-86296); asyncio.timeout can't.
        while not self._closing:
            wait = self.settings.refresh_s
            if self._counts_dirty and "overview" in self.interest:  # the trailing edge of the overview's counts
                wait = min(wait, max(0.0, self._last_counts + self.settings.overview_counts_s - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            await asyncio.sleep(self.settings.tick_s)  # coalesce a burst into one tick
            self.absorb()
            events, self._pending, self._absorbed = self._pending, [], 0
            began = time.monotonic()
            try:
                await self._tick(events)
            except Exception:
                log.exception("dq-ui: rendering live updates failed")
            # Trailing edge: events arriving meanwhile wait in `_pending` for the next tick.
            await asyncio.sleep(min((time.monotonic() - began) * _PACE, self.settings.refresh_s))

    async def _tick(self, events: list[EventRecord]) -> None:
        if events and events[0].seq <= self.head:  # in seq order: only after a resync
            events = [e for e in events if e.seq > self.head]
        seq = events[-1].seq if events else self.head
        now = now_ms()
        mono = time.monotonic()
        # Each execution the tick's events touched, once, in order (C-level passes: at full
        # load a tick carries thousands of events).
        changed = dict.fromkeys(map(_EXECUTION_ID, events))
        changed.pop(None, None)
        touched: list[str] = list(changed)
        messages: list[Message] = []
        if self.clients:
            messages += await self._render_lists(events, touched, seq, now)
            messages += await self._render_executions(events, seq, now, refresh=mono - self._last_refresh >= self.settings.refresh_s)
            messages += await self._render_overview_scan(events, seq, now, mono)
        if events or messages:
            self._publish(Tick(seq, messages, changed=tuple(touched)))
        if mono - self._last_refresh >= self.settings.refresh_s:
            self._last_refresh = mono
        self.head = max(self.head, seq)

    async def _render_lists(self, events: list[EventRecord], changed: list[str], seq: int, now: int) -> list[Message]:
        stale, self._stale_rows = self._stale_rows, set()
        out: list[Message] = []
        if not (changed or stale or self._counts_dirty) or not ({"rows", "minis", "new", "overview"} & set(self.interest)):
            return out
        created = [(e.seq, e.execution_id) for e in events if e.type == _TRIGGER and e.execution_id] if "new" in self.interest else []
        row_ids = self._shown_rows(list(dict.fromkeys([*changed, *stale])) if stale else changed) if "rows" in self.interest else []
        load = set(row_ids)
        if "minis" in self.interest:
            load.update(changed)
        if "new" in self.interest and any(filtered(c) for c in self.clients if "new" in c.topics):
            load.update(eid for _, eid in created)
        recs = await loaders.rows_by_id(self.dash, list(load)) if load else []
        by_id = {r.id: r for r in recs}
        out += [Message("rows", seq, live.row_html(by_id[i], now), key=i) for i in row_ids if i in by_id]
        if "minis" in self.interest:
            minis = [by_id[i] for i in changed if i in by_id]
            if minis:
                out.append(Message("minis", seq, live.minis_html(minis, now)))
        if "new" in self.interest and created:
            out.append(Message("new", created[-1][0], "", append=True, created=[(s, by_id.get(eid)) for s, eid in created]))
        if "overview" in self.interest and (changed or self._counts_dirty):
            if time.monotonic() - self._last_counts >= self.settings.overview_counts_s:
                self._last_counts, self._counts_dirty = time.monotonic(), False
                top = await loaders.overview_counts(self.dash)
                out.append(Message("overview", seq, live.overview_counts_html(top.counts, top.recent, now)))
            else:
                self._counts_dirty = True
            if not self._scan_dirty and any(e.type in OUTCOMES for e in events):
                self._scan_dirty = True
        return out

    def _shown_rows(self, ids: list[str]) -> list[str]:
        """Those of `ids` some connected list page shows."""
        pages = [c for c in self.clients if "rows" in c.topics]
        if any(c.shown is None and c.span is None for c in pages):
            return ids
        shown: set[str] = set().union(*(c.shown for c in pages if c.shown is not None))
        spans = {c.span for c in pages if c.span is not None}
        if not spans:
            return [i for i in ids if i in shown]
        if len(spans) == 1 and not shown:  # the usual case: pages that show the same rows
            ((lo, hi),) = spans
            return [i for i in ids if lo <= i <= hi]
        return [i for i in ids if i in shown or any(lo <= i <= hi for lo, hi in spans)]

    async def _render_overview_scan(self, events: list[EventRecord], seq: int, now: int, mono: float) -> list[Message]:
        if "overview" not in self.interest:
            return []
        due = mono - self._last_scan >= self.settings.overview_refresh_s
        if not (due and (self._scan_dirty or mono - self._last_scan >= 60)):
            return []
        self._last_scan, self._scan_dirty = mono, False
        scan = await loaders.overview_scan(self.dash, now)
        return [Message("overview", seq, live.overview_scan_html(scan.tp, scan.groups, now))]

    async def _render_executions(self, events: list[EventRecord], seq: int, now: int, *, refresh: bool) -> list[Message]:
        if not self.cache:  # no execution page open
            return []
        storage = self.dash.storage
        out: list[Message] = []
        by_exec: dict[str, list[EventRecord]] = {}
        child_of: set[str] = set()
        for ev in events:
            if ev.execution_id:
                by_exec.setdefault(ev.execution_id, []).append(ev)
            parent = ev.data.get("parent_id") if ev.type == EventKind.TRIGGER and isinstance(ev.data, dict) else None
            if parent:
                child_of.add(str(parent))
        for eid, cache in list(self.cache.items()):
            mine = by_exec.get(eid, [])
            fresh = not cache.loaded
            if not (mine or fresh or eid in child_of or (refresh and cache.rec and cache.rec.status not in TERMINAL)):
                continue
            if fresh:
                data = await loaders.execution(self.dash, eid, now, upto=seq)
                cache.rec, cache.loaded = None, True  # `mine` (this tick's events) are appended below as well
                if data is not None:
                    cache.rec, cache.events, cache.steps, cache.children = data.rec, data.events, data.steps, data.children
                    cache.why, cache.tree, cache.ran = data.why, data.tree, data.ran
            elif mine:
                cache.rec = await storage.get_execution(eid)
                cache.steps = await storage.get_steps(eid)
                known = cache.events[-1].seq if cache.events else 0
                mine = [e for e in mine if e.seq > known]
                cache.events.extend(mine)
            if eid in child_of and not fresh:
                cache.children = await children_of(storage, eid)
            if cache.rec is None:
                continue
            if not fresh:
                await loaders.execution_extras(self.dash, cache, now, mine)
            keys = list(dict.fromkeys(str(e.data.get("key")) for e in mine if isinstance(e.data, dict) and e.data.get("key")))
            if any(e.type == EventKind.LOG and isinstance(e.data, dict) and not e.data.get("key") for e in mine):
                keys.append("")  # the handler's own lines: the panel shown when no step is selected
            try:
                html = live.execution_html(self.dash, cache, now, keys=keys, children=fresh or eid in child_of)
                origin = cache.events[0].at if cache.events else 0
                rows = [(ev.seq, live.event_rows_html([ev], origin)) for ev in mine]
            except Exception:  # one execution that cannot be shown must not hold up the others
                log.exception("dq-ui: rendering execution %s failed", eid)
                continue
            out.append(Message(f"exec:{eid}", seq, html))
            out += [Message(f"exec:{eid}", ev_seq, row, append=True) for ev_seq, row in rows]
        return out

    def _publish(self, tick: Tick) -> None:
        self.ticks += 1
        self.ring.append(tick)
        while len(self.ring) > self.settings.replay_ticks:
            self.covered_from = self.ring.popleft().seq
        for client in list(self.clients):
            if any(client.wants(m) for m in tick.messages):
                _put(client, tick)

    async def catch_up(self, seq: int, timeout_s: float = 1.0) -> bool:
        """Wait until the hub has processed events up to `seq`; False when it did not in time."""
        deadline = time.monotonic() + timeout_s
        while self.head < seq and time.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(0.05)
        return self.head >= seq


def _put(client: Client, item: Tick | str | None) -> None:
    """Queue for one client; a client too slow to keep up is resynced instead of buffering forever."""
    try:
        client.queue.put_nowait(item)
    except asyncio.QueueFull:
        while not client.queue.empty():
            client.queue.get_nowait()
        client.queue.put_nowait(RESYNC if item is not None else None)
