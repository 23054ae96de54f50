"""A node and two `dq-ui worker` processes on loopback run executions together."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from dq.engine.storage.base import ExecutionQuery
from dq.engine.storage.sql import SqlStorage
from tests.faults.conftest import add_executions

from .conftest import Cluster, free_port, wait_until


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
    return [(line.split()[0], line.split()[1]) for line in (workdir / "effects").read_text().splitlines()]
