"""The Workers page of a node: its workers with heartbeat age, late then lost when one
stops beating (SIGSTOP), live over its SSE stream; the execution page names the worker."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import httpx
import pytest

from dq.engine.storage.base import ExecutionQuery
from dq.engine.storage.sql import SqlStorage
from tests.faults.conftest import add_executions

from .conftest import TOKEN, Cluster, free_port, wait_until

AUTH = {"authorization": f"Bearer {TOKEN}"}


def health(page: str, worker_pid: int) -> str | None:
    for row in re.findall(r'<tr class="worker[^"]*"(.*?)</tr>', page, re.S):
        if f">{worker_pid}</td>" in row:
            found = re.search(r'data-health="(\w+)"', row)
            return found.group(1) if found else None
    return None


@pytest.mark.timeout(120)
async def test_a_stopped_worker_turns_late_then_lost(cluster: Cluster, tmp_path: Path) -> None:
    db = tmp_path / "dq.db"
    port = free_port()
    await cluster.node(f"sqlite:///{db}", port, "--no-local-work", env={"DQ_TEST_INTERVAL": "500ms"})
    worker = await cluster.worker(port, "--concurrency", "3")
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=10) as client:
        async def state() -> str | None:
            r = await client.get("/workers")
            assert r.status_code == 200
            return health(r.text, worker.pid)

        async def is_(wanted: str) -> bool:
            return await state() == wanted

        await wait_until(lambda: is_("alive"), 30, "the worker listed alive")
        page = (await client.get("/workers")).text
        assert "remote" in page and 'data-health="alive"' in page and "node" in page

        # The execution page says which worker ran the attempt.
        storage = SqlStorage.sqlite(str(db))
        await storage.open()
        try:
            [eid] = await add_executions(storage, "multi", [{"id": "p1", "steps": 1}])

            async def done() -> bool:
                return (await storage.count(ExecutionQuery())).get("completed", 0) == 1

            await wait_until(done, 30, worker.describe)
        finally:
            await storage.aclose()
        r = await client.get(f"/executions/{eid}?tab=events")
        assert f":{worker.pid}:" in r.text and "attempt 1 · on" in r.text

        worker.signal(signal.SIGSTOP)
        await wait_until(lambda: is_("late"), 30, "the worker listed late")
        await wait_until(lambda: is_("lost"), 30, "the worker listed lost")

        # The live stream carries the same table.
        data: list[str] = []
        async with client.stream("GET", "/workers/live") as stream:
            async for line in stream.aiter_lines():
                if line.startswith("data:"):
                    data.append(line[5:])
                elif not line and data:
                    break
        update = "\n".join(data)
        assert 'id="workers"' in update and health(update, worker.pid) == "lost"
        worker.signal(signal.SIGCONT)
        await wait_until(lambda: is_("alive"), 30, "the worker alive again after SIGCONT")
