"""The live stream against a real uvicorn: fragments, resume without gaps or repeats, pings,
released clients, resync."""

from __future__ import annotations

import asyncio
import re

import httpx

from dq import Queue, create_job, create_memory_storage, create_queue, run
from dq.app import create_app
from dq.web import Settings

from .conftest import FAST, LiveServer, settle
from .sse_client import Reader


def _page_seq(html: str) -> int:
    found = re.search(r"/live\?page=[a-z]+&amp;after=(\d+)", html)
    assert found, "the page names no stream"
    return int(found.group(1))


async def test_stream_carries_ready_fragments(queue: Queue, live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
        async with http.stream("GET", "/live?page=executions") as res:
            assert res.status_code == 200
            assert res.headers["content-type"].startswith("text/event-stream")
            assert res.headers["cache-control"] == "no-cache"
            assert res.headers["x-accel-buffering"] == "no"
            ex = await queue.jobs.greet.start({"name": "stream"})
            reader = Reader()
            loop = asyncio.get_running_loop()
            await reader.read(res, until=loop.time() + 5, stop_when=lambda r: "completed" in r.text() and "new execution" in r.text())
    text = reader.text()
    assert f'<tr id="row-{ex.id}"' in text and 'hx-swap-oob="true"' in text
    assert "<template>" in text
    assert "new execution" in text  # the announcement banner
    assert all(m.event == "update" and m.id and m.id.isdigit() for m in reader.messages)


async def test_execution_stream_grows_the_waterfall_and_log(queue: Queue, live: LiveServer) -> None:
    ex = await queue.jobs.greet.start({"name": "wf"})
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
        page = (await http.get(f"/executions/{ex.id}")).text
        after = _page_seq(page)
        async with http.stream("GET", f"/live?page=execution&id={ex.id}&after={after}") as res:
            reader = Reader()
            loop = asyncio.get_running_loop()
            await reader.read(res, until=loop.time() + 5, stop_when=lambda r: 'data-status="completed"' in r.text())
    text = reader.text()
    assert 'id="waterfall"' in text and 'id="exec-head"' in text and 'data-key="shout"' in text
    events = await ex.events()
    expected = [e.seq for e in events if e.seq > after]
    got = reader.event_seqs
    assert got == sorted(got) and len(got) == len(set(got))  # in order, no repeats
    assert got == expected  # no gaps after the page's render


async def test_last_event_id_resumes_without_gaps_or_repeats(queue: Queue, live: LiveServer) -> None:
    ex = await queue.jobs.greet.start({"name": "resume"})
    base = await queue.storage.last_event_seq()
    seen: list[int] = []
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
        url = f"/live?page=execution&id={ex.id}&after={base}"
        async with http.stream("GET", url) as res:
            first = Reader()
            await first.read(res, until=loop.time() + 3, stop_when=lambda r: len(r.event_seqs) >= 2)
        seen += first.event_seqs
        assert first.last_id is not None
        await asyncio.sleep(0.3)  # events keep coming while disconnected
        async with http.stream("GET", url, headers={"Last-Event-ID": first.last_id}) as res:
            second = Reader()
            await second.read(res, until=loop.time() + 5, stop_when=lambda r: 'data-status="completed"' in r.text())
        seen += second.event_seqs
    await settle(queue, ex.id)
    expected = [e.seq for e in await ex.events() if e.seq > base]
    assert seen == expected, (seen, expected)


async def test_a_too_old_resume_point_is_resynced(queue: Queue) -> None:
    settings = Settings(**{**FAST, "replay_ticks": 1})  # type: ignore[arg-type]
    async with LiveServer(create_app(queue, settings=settings)) as live:
        ex = await queue.jobs.greet.start({"name": "old"})
        await settle(queue, ex.id)
        await asyncio.sleep(0.3)
        async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
            async with http.stream("GET", f"/live?page=execution&id={ex.id}&after=1") as res:
                reader = Reader()
                loop = asyncio.get_running_loop()
                await reader.read(res, until=loop.time() + 3, stop_when=lambda r: bool(r.messages))
    expected = [e.seq for e in await ex.events() if e.seq > 1]
    assert reader.event_seqs == expected
    assert 'id="exec-head"' in reader.text()


async def test_a_resync_shows_the_live_step_of_running_rows() -> None:
    """Regression: the resync of the executions list rendered rows from storage alone,
    whose `current_step` is written only when an execution suspends or ends, so a
    running row showed a stale step after a resync (the full page and the hub's tick
    did fill it in from the events)."""
    release = asyncio.Event()

    @create_job(name="holds")
    async def holds(data: None) -> None:
        await run("first", lambda: 1)
        await run("hold_here", release.wait)

    @create_job(name="quick")
    async def quick(data: None) -> None:
        pass

    queue = create_queue(jobs=[holds, quick], storage=create_memory_storage(), shutdown_grace="200ms")
    settings = Settings(**{**FAST, "replay_ticks": 1})  # type: ignore[arg-type]
    async with LiveServer(create_app(queue, settings=settings)) as live:
        ex = await queue.jobs.holds.start(None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not any(s.key == "hold_here" for s in await queue.storage.get_steps(ex.id)):
            assert loop.time() < deadline, "the step never started"
            await asyncio.sleep(0.02)
        stored = await queue.storage.get_execution(ex.id)
        assert stored is not None and stored.current_step != "hold_here"  # what storage alone says
        for _ in range(3):  # separate ticks move the ring past seq 1: the client below is resynced
            await queue.jobs.quick.run(None)
            await asyncio.sleep(0.15)
        async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
            async with http.stream("GET", "/live?page=executions&after=1") as res:
                reader = Reader()
                await reader.read(res, until=loop.time() + 3, stop_when=lambda r: f"row-{ex.id}" in r.text())
        release.set()
        await settle(queue, ex.id)
    row = reader.text().split(f'id="row-{ex.id}"', 1)[1].split("</tr>", 1)[0]
    assert 'id="exec-rows"' in reader.text()  # the resync's whole table body
    assert "hold_here" in row, row


async def test_keep_alive_ping_and_released_clients(queue: Queue) -> None:
    settings = Settings(**{**FAST, "ping_s": 0.2})  # type: ignore[arg-type]
    app = create_app(queue, settings=settings)
    hub = app.state["dq_dashboard"].hub
    async with LiveServer(app) as live:
        async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
            async with http.stream("GET", "/live?page=overview") as res:
                reader = Reader()
                loop = asyncio.get_running_loop()
                await reader.read(res, until=loop.time() + 1.0)
                assert len(hub.clients) == 1
            assert any(c.startswith(": ping") for c in reader.comments), reader.comments
            for _ in range(50):
                if not hub.clients:
                    break
                await asyncio.sleep(0.05)
            assert not hub.clients and not hub.interest  # released


async def test_unknown_execution_stream_is_quiet_not_an_error(queue: Queue, live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
        async with http.stream("GET", "/live?page=execution&id=NOPE&after=0") as res:
            assert res.status_code == 200
            reader = Reader()
            loop = asyncio.get_running_loop()
            await reader.read(res, until=loop.time() + 0.5)
    assert all(m.data == "" or "NOPE" not in m.data for m in reader.messages)
