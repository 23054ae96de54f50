"""The hub follows the event bus with a sink: each commit's events wait in one list for
the next tick; the per-event bookkeeping (metrics, live steps) runs once per tick, or
when a page or /metrics needs it earlier."""

from __future__ import annotations

import asyncio
import types

import pytest

from dq import create_memory_storage
from dq.engine.events import EventBus
from dq.engine.storage.base import Batch, EventRecord
from dq.web import hub as hub_module
from dq.web.counters import Metrics
from dq.web.hub import RESYNC, Hub
from dq.web.settings import Settings


def _events(eid: str, n: int) -> list[EventRecord]:
    return [EventRecord(eid, "j", "step_start", {"key": f"s{i}"}) for i in range(n)]


async def _hub() -> tuple[Hub, EventBus, types.SimpleNamespace]:
    storage = create_memory_storage()
    bus = EventBus(storage)
    dash = types.SimpleNamespace(metrics=Metrics(), settings=Settings(tick_s=30), queue=types.SimpleNamespace(bus=bus),
                                 storage=storage)  # fmt: skip
    hub = Hub(dash)  # type: ignore[arg-type]
    await hub.start()
    return hub, bus, dash


async def test_bookkeeping_waits_for_the_tick_or_a_reader() -> None:
    hub, bus, dash = await _hub()
    try:
        storage = dash.storage
        started = await storage.commit(Batch(events=[EventRecord("e1", "j", "start", {}), *_events("e1", 2)]))
        bus.notify(started.events)
        assert dash.metrics.attempts == {} and hub.current == {}  # waiting for the tick (30 s away)
        hub.fill([])  # a page render reads the live steps: they are brought up to date first
        assert dash.metrics.attempts == {"j": 1} and hub.current == {"e1": "s1"}
        hub.absorb()  # nothing counted twice
        assert dash.metrics.attempts == {"j": 1}
    finally:
        await hub.aclose()
        await bus.aclose()


async def test_a_hub_that_falls_behind_resyncs_its_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_module, "_MAX_PENDING", 10)
    hub, bus, dash = await _hub()
    try:
        client, _ = hub.connect({"overview"}, None)
        result = await dash.storage.commit(Batch(events=_events("e1", 11)))
        bus.notify(result.events)
        assert hub._pending == []  # dropped, not kept growing
        assert await asyncio.wait_for(client.queue.get(), 5) == RESYNC
        assert hub.head == 11  # it follows again from where the bus is
        more = await dash.storage.commit(Batch(events=_events("e2", 1)))
        bus.notify(more.events)
        assert [e.seq for e in hub._pending] == [12]
    finally:
        await hub.aclose()
        await bus.aclose()
