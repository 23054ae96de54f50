"""The node pushes a cancel to the worker's endpoint: the handler stops at once.

The heartbeat interval is 5 minutes and the lease 10 minutes (renewed every
200 s), and the step sleeps 10 minutes: a cancel that lands within seconds was
pushed, nothing else explains it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from dq import create_sqlite_storage
from dq.engine import transitions
from dq.engine.distributed import wire
from dq.engine.distributed.fingerprint import fingerprints
from dq.engine.distributed.node import Node
from dq.engine.distributed.push import Pusher
from dq.engine.distributed.service import _Server
from dq.engine.ids import now_ms
from dq.engine.queue import Queue
from dq.engine.storage.base import Batch, ExecutionRecord
from dq.engine.storage.sql import SqlStorage
from dq.engine.transitions import Control, ControlKind
from tests.faults.conftest import add_executions, lines
from tests.storage.conftest import repeating

from . import jobs
from .conftest import TOKEN, Cluster, free_port, wait_until

SLOW = {"DQ_TEST_INTERVAL": "5m", "DQ_TEST_LEASE": "10m"}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", ["another process", "the node's dashboard"])
async def test_a_cancel_is_pushed_to_the_worker(cluster: Cluster, tmp_path: Path, where: str) -> None:
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
        reason = "by test"
        if where == "another process":
            # Exactly what Execution.cancel() commits in a process that does not hold it
            # (neither the node nor the worker): the node hears it from the event log.
            change = transitions.request(rec, Control(ControlKind.CANCEL, reason), now=now_ms(), by="test")
            assert (await storage.commit(change.batch())).applied == [True]
        else:
            reason = "cancelled from the dashboard"
            node_url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=node_url, headers={"origin": node_url}) as client:
                page = await client.get(f"/executions/{eid}?token={TOKEN}", follow_redirects=True)
                csrf = re.search(r'"x-csrftoken": "([^"]+)"', page.text)
                assert csrf, page.text[:500]
                r = await client.post(f"/executions/{eid}/cancel", headers={"x-csrftoken": csrf.group(1)})
                assert r.status_code == 200, r.text

        async def cancelled() -> bool:
            r = await storage.get_execution(eid)
            return r is not None and r.status == "cancelled"

        await wait_until(cancelled, 15, worker.describe)
        rec = await storage.get_execution(eid)
        assert rec is not None and (rec.error or {}).get("reason") == reason
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


class _Recorder:
    """A stand-in worker endpoint that records what the node sends it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes, bytes]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = (await receive()).get("body", b"")
        self.calls.append((scope["path"], dict(scope["headers"]).get(b"authorization", b""), body))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def _held_by(queue: Queue, node: Node, url: str) -> ExecutionRecord:
    """An execution claimed by a registered remote worker `w` whose endpoint is `url`."""
    reg = wire.Register(worker_id="w", protocol=wire.PROTOCOL, host="h", pid=1, version="t", capacity=1,
                        jobs=fingerprints(jobs.queue.definitions), url=url)  # fmt: skip
    await node.handle("register", wire.encode(reg), "w")
    await queue.storage.commit(Batch(executions=[ExecutionRecord("x1", "multi", "pending", input={"id": "x1"})]))
    claim = wire.Claim(worker_id="w", limit=1, lease_ms=600_000)
    [rec] = wire.decode_reply("claim", await node.handle("claim", wire.encode(claim), "w")).records
    return rec


def _alive(node: Node) -> contextlib.AbstractAsyncContextManager[None]:
    """Heartbeats of the stand-in worker `w`: however slow the machine, the node does not
    mark it lost (and hand its execution to others) before the request is pushed."""
    beat = wire.encode(wire.Heartbeat(worker_id="w", info={}))
    return repeating(lambda: node.handle("heartbeat", beat, "w"), 0.25)


async def _request_cancel(queue: Queue, rec: ExecutionRecord) -> None:
    change = transitions.request(rec, Control(ControlKind.CANCEL, "x"), now=now_ms(), by="test")
    assert (await queue.storage.commit(change.batch())).applied == [True]


async def test_the_node_posts_the_interrupt_with_the_token(tmp_path: Path) -> None:
    queue = jobs.queue.with_storage(create_sqlite_storage(str(tmp_path / "n.db")))
    node = queue.orchestration.app(token="tok", local_work=False).node
    assert node is not None
    port = free_port()
    recorder = _Recorder()
    server = _Server(recorder, "127.0.0.1", port)
    await server.start()
    await node.start()
    try:
        rec = await _held_by(queue, node, f"http://127.0.0.1:{port}/dq-worker")
        async with _alive(node):
            await _request_cancel(queue, rec)
            await wait_until(lambda: node.pusher.sent == 1, 10, lambda: str(recorder.calls))
        assert recorder.calls == [("/dq-worker/interrupt", b"Bearer tok", b'{"executions":["x1"]}')]
    finally:
        await node.close()
        await server.stop()
        await queue.close()


async def test_an_unreachable_worker_endpoint_is_logged_never_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = jobs.queue.with_storage(create_sqlite_storage(str(tmp_path / "n.db")))
    node = queue.orchestration.app(token="tok", local_work=False).node
    assert node is not None
    await node.start()
    try:
        rec = await _held_by(queue, node, f"http://127.0.0.1:{free_port()}/dq-worker")  # nothing listens
        with caplog.at_level(logging.WARNING, "dq.node"):
            async with _alive(node):
                await _request_cancel(queue, rec)
                await wait_until(lambda: "could not reach worker endpoint" in caplog.text, 10, lambda: caplog.text)
        assert node.pusher.sent == 0
        # The node carries on: the request is stored for the worker's next renewal, which brings it.
        controls = wire.decode_reply("renew", await node.handle("renew", wire.encode(wire.Renew("w", ["x1"], 1000)), "w"))
        assert controls == {"x1": "cancel:x"}
    finally:
        await node.close()
        await queue.close()


async def test_a_burst_of_interrupts_is_coalesced_per_worker() -> None:
    port = free_port()
    recorder = _Recorder()
    server = _Server(recorder, "127.0.0.1", port)
    await server.start()
    pusher = Pusher("tok")
    try:
        ids = [f"e{i:03}" for i in range(200)]  # a bulk cancel of one worker's executions
        for eid in ids:
            pusher.interrupt(f"http://127.0.0.1:{port}/w", [eid])
        told: set[str] = set()

        def all_told() -> bool:
            told.update(i for _path, _auth, body in recorder.calls for i in json.loads(body)["executions"])
            return told == set(ids)

        await wait_until(all_told, 10, lambda: f"{len(told)} of {len(ids)}")
        assert 1 <= len(recorder.calls) < 10, len(recorder.calls)  # not one call per execution
    finally:
        await pusher.aclose()
        await server.stop()
