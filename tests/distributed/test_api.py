"""The node's worker API, in-process: token, size limit, schema, unknown executions,
code fingerprints, and the non-loopback rule. Every refusal changes nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dq import DqError, create_job, create_queue, create_sqlite_storage, run
from dq.engine.distributed import node as node_module
from dq.engine.distributed import wire
from dq.engine.distributed.fingerprint import fingerprints
from dq.engine.distributed.http import NodeApp
from dq.engine.distributed.node import Node
from dq.engine.queue import Queue
from dq.engine.storage.base import Batch, ExecutionQuery, StepRecord
from dq.web import Gate, HostPolicy

from . import jobs
from .conftest import free_port

TOKEN = "s3cret"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[Queue, NodeApp, httpx.AsyncClient]]:
    queue = jobs.queue.with_storage(create_sqlite_storage(str(tmp_path / "node.db")))
    app = queue.orchestration.app(token=TOKEN, local_work=False)
    assert app.node is not None
    await app.node.start()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node")
    try:
        yield queue, app, client
    finally:
        await client.aclose()
        await app.node.close()
        await queue.close()


def new_execution(eid: str = "x1") -> dict[str, Any]:
    return {"executions": [{"id": eid, "job_name": "multi", "status": "pending", "input": {"id": eid}}]}


def register(worker_id: str, jobs_: dict[str, str]) -> dict[str, Any]:
    return {"worker_id": worker_id, "protocol": wire.PROTOCOL, "host": "h", "pid": 1, "version": "t",
            "capacity": 2, "jobs": jobs_}  # fmt: skip


async def stored(queue: Queue) -> int:
    return sum((await queue.storage.count(ExecutionQuery())).values())


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}])
async def test_a_wrong_or_missing_token_gets_401_and_changes_nothing(node: Any, headers: dict[str, str]) -> None:
    queue, _app, client = node
    r = await client.post("/v1/commit", content=json.dumps(new_execution()), headers=headers)
    assert r.status_code == 401
    assert "token" in r.json()["error"]
    assert await stored(queue) == 0
    r = await client.post("/v1/commit", content=json.dumps(new_execution()), headers=AUTH)
    assert r.status_code == 200 and await stored(queue) == 1


async def test_malformed_requests_get_400_naming_the_field_and_write_nothing(node: Any) -> None:
    queue, _app, client = node
    bad = new_execution()
    bad["executions"][0]["retry_count"] = "three"
    r = await client.post("/v1/commit", content=json.dumps(bad), headers=AUTH)
    assert r.status_code == 400 and "retry_count" in r.json()["error"]
    r = await client.post("/v1/commit", content=b"{not json", headers=AUTH)
    assert r.status_code == 400 and "malformed" in r.json()["error"]
    r = await client.post("/v1/claim", content=json.dumps({"worker_id": "w", "limit": 1}), headers=AUTH)
    assert r.status_code == 400 and "lease_ms" in r.json()["error"]
    # The storage's own check (an unknown field) refuses the whole batch, pipe message included.
    batch = {**new_execution(), "updates": [{"id": "x1", "fields": {"colour": "red"}}],
             "messages": [{"pipe": "p", "data": 1}]}  # fmt: skip
    r = await client.post("/v1/commit", content=json.dumps(batch), headers=AUTH)
    assert r.status_code == 400 and "colour" in r.json()["error"]
    assert await stored(queue) == 0 and await queue.storage.last_message_seq("p") == 0
    r = await client.post("/v1/no_such_call", content=b"{}", headers=AUTH)
    assert r.status_code == 404 and "unknown call" in r.json()["error"]
    r = await client.get("/v1/now", headers=AUTH)
    assert r.status_code == 405


async def test_an_oversized_body_gets_413(node: Any) -> None:
    queue, app, client = node
    app.max_body = 10_000
    big = new_execution()
    big["executions"][0]["input"] = {"blob": "x" * 20_000}
    r = await client.post("/v1/commit", content=json.dumps(big), headers=AUTH)
    assert r.status_code == 413 and "limit" in r.json()["error"]
    assert await stored(queue) == 0


async def test_reports_for_an_unknown_execution_get_404_and_nothing_is_written(node: Any) -> None:
    queue, _app, client = node
    step = {"execution_id": "ghost", "key": "a", "name": "a", "kind": "run", "status": "completed"}
    batch = {**new_execution("real"), "steps": [step], "fences": {"ghost": 1}}
    r = await client.post("/v1/commit", content=json.dumps(batch), headers=AUTH)
    assert r.status_code == 404 and "ghost" in r.json()["error"]
    assert await stored(queue) == 0
    unfenced = {"steps": [step]}
    r = await client.post("/v1/commit", content=json.dumps(unfenced), headers=AUTH)
    assert r.status_code == 400 and "not fenced" in r.json()["error"]


async def test_a_worker_with_different_code_is_told_and_gets_no_work(node: Any) -> None:
    queue, _app, client = node
    await client.post("/v1/commit", content=json.dumps(new_execution()), headers=AUTH)
    r = await client.post("/v1/register", content=json.dumps(register("old", {"multi": "0" * 16})), headers=AUTH)
    reply = r.json()["result"]
    assert reply["accepted"] == [] and "differs from the node's" in reply["refused"]["multi"]
    claim = {"worker_id": "old", "limit": 5, "lease_ms": 10_000}
    r = await client.post("/v1/claim", content=json.dumps(claim), headers=AUTH)
    assert r.json()["result"]["records"] == []
    same = fingerprints(jobs.queue.definitions)
    r = await client.post("/v1/register", content=json.dumps(register("new", same)), headers=AUTH)
    assert r.json()["result"]["accepted"] == ["composite", "multi"]
    r = await client.post("/v1/claim", content=json.dumps({**claim, "worker_id": "new"}), headers=AUTH)
    assert [rec["id"] for rec in r.json()["result"]["records"]] == ["x1"]
    # An unregistered worker is asked to register (a restarted node forgot it).
    r = await client.post("/v1/claim", content=json.dumps({**claim, "worker_id": "nobody"}), headers=AUTH)
    assert r.status_code == 409 and "register" in r.json()["error"]
    assert queue is not None


async def test_the_worker_side_reports_refused_jobs(tmp_path: Path) -> None:
    @create_job(name="multi")
    async def multi(data: Any) -> int:  # same name, other code
        return await run("other", lambda: 1)

    node_queue = create_queue(jobs=[jobs.multi], storage=create_sqlite_storage(str(tmp_path / "n.db")),
                              orchestration={"port": free_port()})  # fmt: skip
    await node_queue.orchestration.start()
    try:
        other = create_queue(jobs=[multi], orchestration={"port": node_queue.orchestration.options.port})
        with pytest.raises(DqError, match="differs from the node's"):
            await other.worker.start()
        await other.worker.stop()
    finally:
        await node_queue.orchestration.stop()
        await node_queue.close()


def test_a_node_on_a_public_address_needs_a_token() -> None:
    queue = create_queue(jobs=[jobs.multi], orchestration={"host": "0.0.0.0"})
    with pytest.raises(DqError, match="without a token"):
        asyncio.run(queue.orchestration.start())


def test_bad_orchestration_options_fail_at_definition() -> None:
    with pytest.raises(ValueError, match="interval"):
        create_queue(jobs=[jobs.multi], orchestration={"interval": "often"})
    with pytest.raises(ValueError, match="unknown option"):
        create_queue(jobs=[jobs.multi], orchestration={"prot": 4000})


async def test_one_of_two_nodes_marks_a_silent_worker_lost_and_fences_it(tmp_path: Path) -> None:
    storage = create_sqlite_storage(str(tmp_path / "shared.db"))
    queue = jobs.queue.with_storage(storage)
    await queue.start()
    a, b = Node(queue, interval_ms=20), Node(queue, interval_ms=20)
    try:
        reg = wire.Register(worker_id="w", protocol=wire.PROTOCOL, host="h", pid=1, version="t", capacity=1,
                            jobs=fingerprints(jobs.queue.definitions))  # fmt: skip
        await a.handle("register", wire.encode(reg), "w")
        await a.handle("commit", json.dumps(new_execution()).encode(), "w")
        claim = wire.Claim(worker_id="w", limit=1, lease_ms=60_000)
        [rec] = wire.decode_reply("claim", await a.handle("claim", wire.encode(claim), "w")).records
        await asyncio.sleep(0.1)  # > 3 intervals without a heartbeat
        lost = [await a.find_lost(), await b.find_lost()]
        assert sorted(lost, key=len) == [[], ["w"]]  # exactly one node acted
        again = await storage.get_execution(rec.id)
        # Handed to others (here the node's own runtime takes it at once), with a raised token.
        assert again is not None and again.worker_id != "w" and again.token > rec.token
        # The lost worker's late report is refused by fencing; nothing of it is stored.
        step = StepRecord(rec.id, "step-1", "step-1", "run", "completed", output={"late": True})
        late = Batch(steps=[step], fences={rec.id: rec.token})
        result = wire.decode_reply("commit", await a.handle("commit", wire.encode(late), "w"))
        assert result.refused == {rec.id}
        # (The node's own runtime may have run the execution meanwhile: only the late step matters.)
        assert all(s.output != {"late": True} for s in await storage.get_steps(rec.id))
        assert a.workers["w"].refused_reports == 1
        # It gets no work until it is heard from; its next heartbeat says it was lost, once.
        assert wire.decode_reply("claim", await a.handle("claim", wire.encode(claim), "w")).records == []
        beat = wire.Heartbeat(worker_id="w", info={"state": "running"})
        assert wire.decode_reply("heartbeat", await a.handle("heartbeat", wire.encode(beat), "w")).lost
        assert not wire.decode_reply("heartbeat", await b.handle("heartbeat", wire.encode(beat), "w")).known
        assert not wire.decode_reply("heartbeat", await a.handle("heartbeat", wire.encode(beat), "w")).lost
        # A worker silent for longer than FORGET_AFTER_MS is dropped from the list.
        node_module.FORGET_AFTER_MS = 50
        try:
            await asyncio.sleep(0.1)
            await a.find_lost()
        finally:
            node_module.FORGET_AFTER_MS = 3_600_000
        assert "w" not in {w["id"] for w in await storage.list_workers()}
    finally:
        await queue.close()


async def test_the_worker_endpoint_wakes_it_with_the_token(tmp_path: Path) -> None:
    node_port, worker_port = free_port(), free_port()
    node_queue = create_queue(jobs=[jobs.multi, jobs.composite], pipes=[jobs.signals],
                              storage=create_sqlite_storage(str(tmp_path / "n.db")),
                              orchestration={"port": node_port, "token": TOKEN})  # fmt: skip
    await node_queue.orchestration.start(local_work=False)
    other = create_queue(jobs=[jobs.multi, jobs.composite], pipes=[jobs.signals],
                         orchestration={"port": node_port, "token": TOKEN})  # fmt: skip
    try:
        worker = await other.worker.start(port=worker_port, endpoint="/api/v1/jobs")
        assert worker.remote.registration is not None
        assert worker.remote.registration.url == f"http://127.0.0.1:{worker_port}/api/v1/jobs"
        listed = {w["id"]: w["info"] for w in await node_queue.storage.list_workers()}
        assert listed[worker.id]["url"] == worker.remote.registration.url
        async with httpx.AsyncClient(base_url=worker.remote.registration.url) as client:
            assert (await client.post("/wake")).status_code == 401
            assert (await client.post("/wake", headers=AUTH)).status_code == 204
            assert (await client.post("/nope", headers=AUTH)).status_code == 404
    finally:
        await other.worker.stop()
        await node_queue.orchestration.stop()
        await node_queue.close()


async def test_a_tokenless_node_refuses_foreign_hosts_and_pages_but_not_programs(tmp_path: Path) -> None:
    """`dq-ui serve` without a token (loopback only) puts the worker API behind the
    dashboard's Host check: a DNS-rebinding page (foreign Host) or a cross-site page
    (foreign Origin) cannot register workers or commit; a worker (no Origin) can."""
    queue = jobs.queue.with_storage(create_sqlite_storage(str(tmp_path / "node.db")))
    app = queue.orchestration.app(token=None, local_work=False)
    assert app.node is not None
    await app.node.start()
    gated = Gate(app, HostPolicy(bound="127.0.0.1", allowed=()), machine_api=True)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=gated), base_url="http://127.0.0.1:8000")
    try:
        body = json.dumps(new_execution())
        r = await client.post("/v1/commit", content=body, headers={"host": "evil.example"})
        assert r.status_code == 400 and "--allowed-host" in r.text
        r = await client.post("/v1/commit", content=body, headers={"origin": "http://evil.example"})
        assert r.status_code == 403
        assert await stored(queue) == 0
        r = await client.post("/v1/commit", content=body)
        assert r.status_code == 200 and await stored(queue) == 1
    finally:
        await client.aclose()
        await app.node.close()
        await queue.close()
