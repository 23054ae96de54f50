"""The executions list's stream carries the rows its page shows, not every changed row,
and announces created executions by the page's filters."""

from __future__ import annotations

import asyncio
import html
import re

import httpx

from dq import Queue, create_job, create_memory_storage, create_queue, run
from dq.app import create_app
from dq.web import Settings

from .conftest import FAST, LiveServer, settle
from .sse_client import Reader

release = asyncio.Event()


@create_job(name="holds")
async def holds(data: None) -> None:
    await run("hold_here", release.wait)


@create_job(name="quick")
async def quick(data: None) -> None:
    pass


def _queue() -> Queue:
    release.clear()
    return create_queue(jobs=[holds, quick], storage=create_memory_storage(), shutdown_grace="200ms")


def _stream_of(page: str) -> str:
    found = re.search(r'sse-connect="([^"]+)"', page)
    assert found, "the page names no stream"
    return html.unescape(found.group(1))


def _row(text: str, eid: str) -> str:
    """The last fragment of the row of `eid` in the stream."""
    return text.rsplit(f'id="row-{eid}"', 1)[1].split("</tr>", 1)[0]


async def _running(queue: Queue) -> str:
    ex = await queue.jobs.holds.start(None)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not any(s.key == "hold_here" for s in await queue.storage.get_steps(ex.id)):
        assert loop.time() < deadline, "the step never started"
        await asyncio.sleep(0.02)
    return str(ex.id)


async def test_a_list_page_receives_its_rows_and_announces_the_others() -> None:
    queue = _queue()
    async with LiveServer(create_app(queue, settings=Settings(**FAST))) as live:  # type: ignore[arg-type]
        shown = await _running(queue)
        async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
            url = _stream_of((await http.get("/executions")).text)
            assert "span=" in url and shown in url
            async with http.stream("GET", url) as res:
                other = await queue.jobs.quick.start(None)
                await settle(queue, other.id)
                release.set()
                reader = Reader()
                loop = asyncio.get_running_loop()
                await reader.read(res, until=loop.time() + 5, stop_when=lambda r: f'id="row-{shown}"' in r.text()
                                  and "s-completed" in _row(r.text(), shown) and "1 new execution" in r.text())  # fmt: skip
        await settle(queue, shown)
    text = reader.text()
    assert "s-completed" in _row(text, shown)
    assert "1 new execution " in text  # the one created after the page, announced, not listed
    assert f"row-{other.id}" not in text


async def test_a_filtered_list_announces_only_what_its_filters_match() -> None:
    queue = _queue()
    async with LiveServer(create_app(queue, settings=Settings(**FAST))) as live:  # type: ignore[arg-type]
        async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
            url = _stream_of((await http.get("/executions?job=quick")).text)
            assert "job=quick" in url
            async with http.stream("GET", url) as res:
                await queue.jobs.holds.start(None)
                await queue.jobs.holds.start(None)
                await asyncio.sleep(0.2)  # their own ticks
                done = await queue.jobs.quick.start(None)
                await settle(queue, done.id)
                reader = Reader()
                loop = asyncio.get_running_loop()
                await reader.read(res, until=loop.time() + 2)
            release.set()
    text = reader.text()
    assert "1 new execution " in text
    assert "new executions" not in text  # the two `holds` are not counted


async def test_a_page_resuming_after_its_render_gets_the_rows_that_changed_meanwhile() -> None:
    queue = _queue()
    async with LiveServer(create_app(queue, settings=Settings(**FAST))) as live:  # type: ignore[arg-type]
        shown = await _running(queue)
        async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
            url = _stream_of((await http.get("/executions")).text)
            release.set()  # it completes before the page's stream connects
            await settle(queue, shown)
            await asyncio.sleep(0.3)  # the hub has ticked past it
            async with http.stream("GET", url) as res:
                reader = Reader()
                loop = asyncio.get_running_loop()
                await reader.read(res, until=loop.time() + 5,
                                  stop_when=lambda r: f'id="row-{shown}"' in r.text() and "s-completed" in _row(r.text(), shown))  # fmt: skip
    assert "s-completed" in _row(reader.text(), shown)


async def test_a_bad_span_is_refused_naming_it(queue: Queue, live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
        for span in ("x", "1,abc", "1,b,a"):
            res = await http.get(f"/live?page=executions&after=1&span={span}")
            assert res.status_code == 400 and "span" in res.text, (span, res.text)
