"""The node pushes a cancel to the worker's endpoint: the handler stops at once.

The heartbeat interval is 5 minutes and the lease 10 minutes (renewed every
200 s), and the step sleeps 10 minutes: a cancel that lands within seconds was
pushed, nothing else explains it.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from dq.engine import transitions
from dq.engine.ids import now_ms
from dq.engine.storage.sql import SqlStorage
from dq.engine.transitions import Control, ControlKind
from tests.faults.conftest import add_executions, lines

from .conftest import TOKEN, Cluster, free_port, wait_until

SLOW = {"DQ_TEST_INTERVAL": "5m", "DQ_TEST_LEASE": "10m"}


@pytest.mark.timeout(120)
async def test_a_cancel_asked_from_another_process_is_pushed_to_the_worker(cluster: Cluster, tmp_path: Path) -> None:
    db = tmp_path / "dq.db"
    port, worker_port = free_port(), free_port()
    await cluster.node(f"sqlite:///{db}", port, "--no-local-work", env=SLOW)
    worker = await cluster.worker(port, "--concurrency", "2", "--host", "127.0.0.1", "--port", str(worker_port), env=SLOW)
    storage = SqlStorage.sqlite(str(db))
    await storage.open()
    try:
        [eid] = await add_executions(storage, "multi", [{"id": "long", "steps": 2, "sleep_s": 600}])
        await wait_until(lambda: len(lines(tmp_path / "effects")) == 1, 30, worker.describe)
        rec = await storage.get_execution(eid)
        assert rec is not None and rec.status == "running"
        # Exactly what Execution.cancel() commits in a process that does not hold it
        # (here: neither the node nor the worker): the node hears it from the event log.
        change = transitions.request(rec, Control(ControlKind.CANCEL, "by test"), now=now_ms(), by="test")
        assert (await storage.commit(change.batch())).applied == [True]

        async def cancelled() -> bool:
            r = await storage.get_execution(eid)
            return r is not None and r.status == "cancelled"

        await wait_until(cancelled, 15, worker.describe)
        rec = await storage.get_execution(eid)
        assert rec is not None and (rec.error or {}).get("reason") == "by test"
        assert [s.status for s in await storage.get_steps(eid)] != ["completed"]
        assert len(lines(tmp_path / "effects")) == 1  # step 2 never ran
    finally:
        await storage.aclose()


@pytest.mark.timeout(120)
async def test_the_worker_endpoint_wants_the_token(cluster: Cluster, tmp_path: Path) -> None:
    port, worker_port = free_port(), free_port()
    await cluster.node(f"sqlite:///{tmp_path / 'dq.db'}", port, env=SLOW)
    await cluster.worker(port, "--host", "127.0.0.1", "--port", str(worker_port), env=SLOW)
    base = f"http://127.0.0.1:{worker_port}/dq-worker"
    body = b'{"executions": ["x"]}'
    async with httpx.AsyncClient() as client:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            for route in ("/interrupt", "/wake"):
                r = await client.post(base + route, content=body, headers=headers)
                assert r.status_code == 401, (route, headers, r.status_code)
        good = {"authorization": f"Bearer {TOKEN}"}
        assert (await client.post(base + "/interrupt", content=b'{"nope": 1}', headers=good)).status_code == 400
        assert (await client.post(base + "/interrupt", content=b"not json", headers=good)).status_code == 400
        assert (await client.post(base + "/other", content=body, headers=good)).status_code == 404
        assert (await client.post(base + "/interrupt", content=body, headers=good)).status_code == 204
        assert (await client.post(base + "/wake", headers=good)).status_code == 204
