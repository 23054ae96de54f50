"""A node and two `dq-ui worker` processes on loopback run executions together."""

from __future__ import annotations

import collections
import os
import secrets
import signal
from pathlib import Path

import httpx
import pytest

from dq.engine.storage.base import Batch, ExecutionQuery, ExecutionUpdate
from dq.engine.storage.sql import SqlStorage
from tests.faults.conftest import add_executions, lines
from tests.storage.conftest import create_pg_database, drop_pg_database, pg_dsn

from .conftest import TARGET, TOKEN, Cluster, free_port, list_workers, url, wait_until


@pytest.mark.timeout(180)
async def test_a_node_and_two_workers_run_50_executions_together(cluster: Cluster, tmp_path: Path) -> None:
    db = tmp_path / "dq.db"
    port = free_port()
    node = await cluster.node(f"sqlite:///{db}", port, "--no-local-work")
    w1 = await cluster.worker(port, "--concurrency", "8")
    w2 = await cluster.worker(port, "--concurrency", "8")
    storage = SqlStorage.sqlite(str(db))
    await storage.open()
    try:
        ids = await add_executions(storage, "multi", [{"id": f"e{i}", "steps": 5, "sleep_s": 0.02} for i in range(50)])

        async def done() -> bool:
            counts = await storage.count(ExecutionQuery())
            return counts.get("completed", 0) == 50

        await wait_until(done, 120, lambda: f"50 completed; {node.describe()}\n{w1.describe()}\n{w2.describe()}")
        recs = await storage.query(ExecutionQuery(ids=ids))
        by_pid: collections.Counter[int] = collections.Counter()
        for rec in recs:
            steps = await storage.get_steps(rec.id)
            assert [(s.key, s.status) for s in steps] == [(f"step-{n}", "completed") for n in range(1, 6)]
            # The output is the handler's, made of the stored steps' results.
            assert rec.output == {"pids": [s.output["pid"] for s in steps]}
            by_pid.update(s.output["pid"] for s in steps)
        # Both workers took part, the node ran nothing itself.
        assert set(by_pid) == {w1.pid, w2.pid}, (by_pid, w1.pid, w2.pid, node.pid)
        # No step ran twice.
        effects = collections.Counter(_effects(tmp_path))
        assert len(effects) == 250 and set(effects.values()) == {1}
    finally:
        await storage.aclose()


def _effects(workdir: Path) -> list[tuple[str, str]]:
    return [(line.split()[0], line.split()[1]) for line in lines(workdir / "effects")]


@pytest.mark.timeout(180)
async def test_kill_9_the_node_and_restart_it(cluster: Cluster, tmp_path: Path) -> None:
    db = tmp_path / "dq.db"
    port = free_port()
    node = await cluster.node(f"sqlite:///{db}", port, "--no-local-work")
    w1 = await cluster.worker(port, "--concurrency", "5")
    w2 = await cluster.worker(port, "--concurrency", "5")
    storage = SqlStorage.sqlite(str(db))
    await storage.open()
    try:
        ids = await add_executions(storage, "multi", [{"id": f"e{i}", "steps": 8, "sleep_s": 0.1} for i in range(10)])

        def some_progress() -> bool:
            return len(_effects(tmp_path)) >= 30

        await wait_until(some_progress, 60, w1.describe)
        await node.kill9()
        stored_before = {rec: [s.key for s in await storage.get_steps(rec) if s.status == "completed"] for rec in ids}
        node = await cluster.node(f"sqlite:///{db}", port, "--no-local-work")

        async def done() -> bool:
            return (await storage.count(ExecutionQuery())).get("completed", 0) == 10

        await wait_until(done, 120, lambda: f"{node.describe()}\n{w1.describe()}\n{w2.describe()}")
        assert w1.proc.poll() is None and w2.proc.poll() is None  # the workers carried on
        ran = collections.Counter(_effects(tmp_path))
        for rec in await storage.query(ExecutionQuery(ids=ids)):
            steps = await storage.get_steps(rec.id)
            assert [(s.key, s.status) for s in steps] == [(f"step-{n}", "completed") for n in range(1, 9)]
            eid = rec.input["id"]
            # A step stored before the node died never ran again; at most the one in
            # flight (whose report may or may not have reached the node) ran twice.
            for key in stored_before[rec.id]:
                assert ran[(eid, key.removeprefix("step-"))] == 1, (eid, key)
            assert sum(n - 1 for (e, _s), n in ran.items() if e == eid) <= 1, (eid, ran)
    finally:
        await storage.aclose()


@pytest.mark.timeout(120)
async def test_a_worker_with_a_wrong_token_is_refused_and_registers_nothing(cluster: Cluster, tmp_path: Path) -> None:
    port = free_port()
    await cluster.node(f"sqlite:///{tmp_path / 'dq.db'}", port)
    bad = cluster._spawn("worker", ["worker", TARGET, "--orchestrator", url(port), "--token", "wrong"], None)
    assert await bad.exit_code(60) == 2
    assert "refused the request (401)" in bad.errors(), bad.describe()
    assert not [w for w in await list_workers(port) if (w.get("info") or {}).get("kind") == "remote"]  # type: ignore[union-attr]


@pytest.mark.timeout(180)
async def test_sigterm_a_worker_hands_back_what_it_runs(cluster: Cluster, tmp_path: Path) -> None:
    db = tmp_path / "dq.db"
    port = free_port()
    await cluster.node(f"sqlite:///{db}", port, "--no-local-work")
    first = await cluster.worker(port, "--concurrency", "4")
    storage = SqlStorage.sqlite(str(db))
    await storage.open()
    try:
        # Steps of 1.5 s: the 2 s shutdown grace ends some of them mid-step.
        ids = await add_executions(storage, "multi", [{"id": f"e{i}", "steps": 4, "sleep_s": 1.5} for i in range(4)])
        await wait_until(lambda: len(_effects(tmp_path)) >= 4, 60, first.describe)
        first.signal(signal.SIGTERM)
        assert await first.exit_code(30) == 0, first.describe()
        assert "stopped" in first.output()
        # Nothing is left held by the stopped worker, and it unregistered.
        recs = await storage.query(ExecutionQuery(ids=ids))
        assert all(r.status in ("pending", "completed") and r.worker_id is None for r in recs), recs
        assert not [w for w in await storage.list_workers() if (w["info"] or {}).get("pid") == first.pid]
        ran_by_first = collections.Counter(_effects(tmp_path))
        second = await cluster.worker(port, "--concurrency", "4")

        async def done() -> bool:
            return (await storage.count(ExecutionQuery())).get("completed", 0) == 4

        await wait_until(done, 60, second.describe)
        ran = collections.Counter(_effects(tmp_path))
        for rec in await storage.query(ExecutionQuery(ids=ids)):
            eid = rec.input["id"]
            stored = [s for s in await storage.get_steps(rec.id)]
            assert [(s.key, s.status) for s in stored] == [(f"step-{n}", "completed") for n in range(1, 5)]
            for s in stored:
                n = s.key.removeprefix("step-")
                # A step the first worker completed never ran again; one it was in
                # when its grace ran out ran again once, on the second worker.
                expected = 1 if s.output["pid"] == first.pid or not ran_by_first[(eid, n)] else 2
                assert ran[(eid, n)] == expected, (eid, n, ran[(eid, n)])
        # The node's execution page says which worker ran each attempt (its start events):
        # for an execution handed back mid-run, both workers.
        starts = {eid: [e.data["worker"] for e in await storage.read_events(0, execution_id=eid) if e.type == "start"]
                  for eid in ids}  # fmt: skip
        handed, workers = next((eid, w) for eid, w in starts.items() if len(set(w)) == 2)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            page = await client.get(f"/executions/{handed}?tab=events&token={TOKEN}", follow_redirects=True)
        assert page.status_code == 200
        for n, worker in enumerate(workers, 1):
            assert f"attempt 1 · on {worker}" in page.text, (n, worker)
    finally:
        await storage.aclose()


@pytest.mark.timeout(240)
async def test_two_nodes_on_postgres_serve_three_workers(cluster: Cluster, tmp_path: Path) -> None:
    name = f"dq_dist_{os.getpid()}_{secrets.token_hex(4)}"
    await create_pg_database(name)
    dsn = pg_dsn(name)
    storage = SqlStorage.postgres(dsn)
    try:
        port_a, port_b = free_port(), free_port()
        await cluster.node(dsn, port_a, "--no-local-work")
        await cluster.node(dsn, port_b, "--no-local-work")
        workers = [await cluster.worker(port_a, "--concurrency", "4"), await cluster.worker(port_a, "--concurrency", "4"),
                   await cluster.worker(port_b, "--concurrency", "4")]  # fmt: skip
        await storage.open()
        ids = await add_executions(storage, "multi", [{"id": f"e{i}", "steps": 4, "sleep_s": 0.05} for i in range(40)])

        async def done() -> bool:
            return (await storage.count(ExecutionQuery())).get("completed", 0) == 40

        await wait_until(done, 120, lambda: "\n".join(w.describe() for w in workers))
        pids: collections.Counter[int] = collections.Counter()
        for rec in await storage.query(ExecutionQuery(ids=ids)):
            steps = await storage.get_steps(rec.id)
            assert [(s.key, s.status) for s in steps] == [(f"step-{n}", "completed") for n in range(1, 5)]
            pids.update(s.output["pid"] for s in steps)
        assert set(pids) == {w.pid for w in workers}, pids  # the worker of node B too
        assert set(collections.Counter(_effects(tmp_path)).values()) == {1}
        # Both nodes and all three workers are listed on the shared storage.
        kinds = collections.Counter((w["info"] or {}).get("kind") for w in await storage.list_workers())
        assert kinds["node"] == 2 and kinds["remote"] == 3, kinds
    finally:
        await storage.aclose()
        await drop_pg_database(name)


@pytest.mark.timeout(120)
async def test_a_worker_runs_sleeps_child_jobs_threads_and_pipes(cluster: Cluster, tmp_path: Path) -> None:
    db = tmp_path / "dq.db"
    port = free_port()
    await cluster.node(f"sqlite:///{db}", port, "--no-local-work")
    worker = await cluster.worker(port, "--concurrency", "4")
    storage = SqlStorage.sqlite(str(db))
    await storage.open()
    try:
        [eid] = await add_executions(storage, "composite", [{"id": "c1"}])

        async def done() -> bool:
            rec = await storage.get_execution(eid)
            return rec is not None and rec.status in ("completed", "failed")

        await wait_until(done, 60, worker.describe)
        rec = await storage.get_execution(eid)
        assert rec is not None and rec.status == "completed", rec
        assert rec.output == {"first": worker.pid, "child": [worker.pid, worker.pid], "squared": 49}
        steps = await storage.get_steps(eid)
        assert [s.kind for s in steps] == ["run", "sleep", "child", "thread", "send"]
        [child] = await storage.query(ExecutionQuery(parent_id=eid))
        assert child.status == "completed" and child.job_name == "multi"
        [msg] = await storage.read_messages("signals")
        assert msg.data == {"from": "c1"}
    finally:
        await storage.aclose()


@pytest.mark.timeout(120)
async def test_a_worker_with_other_code_is_refused_on_both_sides(cluster: Cluster, tmp_path: Path) -> None:
    port = free_port()
    node = await cluster.node(f"sqlite:///{tmp_path / 'dq.db'}", port)
    other = cluster._spawn("worker", ["worker", "tests.distributed.other_jobs:queue", "--orchestrator", url(port),
                                      "--token", TOKEN], None)  # fmt: skip
    assert await other.exit_code(60) == 2, other.describe()
    assert "the worker's code for job 'multi' differs from the node's" in other.errors()
    await wait_until(lambda: "differs from the node's" in node.errors(), 10, node.describe)


@pytest.mark.timeout(120)
async def test_a_cancel_reaches_a_remote_execution_mid_step(cluster: Cluster, tmp_path: Path) -> None:
    db = tmp_path / "dq.db"
    port = free_port()
    await cluster.node(f"sqlite:///{db}", port, "--no-local-work", env={"DQ_TEST_INTERVAL": "200ms"})
    worker = await cluster.worker(port, "--concurrency", "2")
    storage = SqlStorage.sqlite(str(db))
    await storage.open()
    try:
        [eid] = await add_executions(storage, "multi", [{"id": "long", "steps": 2, "sleep_s": 30}])
        await wait_until(lambda: len(_effects(tmp_path)) == 1, 30, worker.describe)
        # What Execution.cancel() writes for a running execution held elsewhere.
        await storage.commit(Batch(updates=[ExecutionUpdate(eid, {"control": "cancel:by test"}, statuses=("running",))]))

        async def cancelled() -> bool:
            rec = await storage.get_execution(eid)
            return rec is not None and rec.status == "cancelled"

        # Well before the 30 s step ends: the worker heard it at a heartbeat, not a step boundary.
        await wait_until(cancelled, 10, worker.describe)
        rec = await storage.get_execution(eid)
        assert rec is not None and (rec.error or {}).get("reason") == "by test"
        assert [s.status for s in await storage.get_steps(eid)] != ["completed"]
    finally:
        await storage.aclose()
