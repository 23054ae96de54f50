"""Losing a worker: kill -9 mid-step, and a frozen worker (SIGSTOP) that comes back late.

The node marks a worker lost after 3 missed heartbeats and hands its executions
to the other worker from their last stored step, with raised fencing tokens.
Recovery by the node alone is what is tested: the surviving worker's own
recovery runs only when it starts, and leases (30 s) outlast the test's waits.
"""

from __future__ import annotations

import collections
import signal
from pathlib import Path

import pytest

from dq.engine.storage.base import ExecutionQuery
from dq.engine.storage.sql import SqlStorage
from tests.faults.conftest import add_executions, lines

from .conftest import Cluster, free_port, wait_until

INTERVAL = {"DQ_TEST_INTERVAL": "200ms"}
RUNS = 20
PER_RUN = 4


def effects(workdir: Path) -> dict[tuple[str, str], list[int]]:
    out: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
    for line in lines(workdir / "effects"):
        eid, step, pid = line.split()
        out[(eid, step)].append(int(pid))
    return out


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_kill_9_a_worker_mid_step_repeatedly(cluster: Cluster, tmp_path: Path) -> None:
    db = tmp_path / "dq.db"
    port = free_port()
    node = await cluster.node(f"sqlite:///{db}", port, "--no-local-work", env=INTERVAL)
    survivor = await cluster.worker(port, "--concurrency", "2")
    storage = SqlStorage.sqlite(str(db))
    await storage.open()
    victims = []
    try:
        for run_no in range(RUNS):
            (tmp_path / f"block-{run_no}").touch()
            victim = await cluster.worker(port, "--concurrency", str(PER_RUN))
            victims.append(victim.pid)
            inputs = [{"id": f"r{run_no}e{i}", "steps": 5, "block_step": 3, "block": f"block-{run_no}"}
                      for i in range(PER_RUN)]  # fmt: skip
            await add_executions(storage, "multi", inputs)

            def blocked(run_no: int = run_no) -> bool:
                return len({x.split()[0] for x in lines(tmp_path / "blocked") if x.startswith(f"r{run_no}e")}) == PER_RUN

            await wait_until(blocked, 60, lambda v=victim, r=run_no: f"run {r} blocked in step 3: {v.describe()}")
            await victim.kill9()
            (tmp_path / f"block-{run_no}").unlink()

            async def settled(run_no: int = run_no) -> bool:
                counts = await storage.count(ExecutionQuery())
                return counts.get("completed", 0) == (run_no + 1) * PER_RUN

            await wait_until(settled, 60, lambda r=run_no: f"run {r} resumed by the survivor: {survivor.describe()}")
        recs = await storage.query(ExecutionQuery())
        assert len(recs) == RUNS * PER_RUN
        assert {(r.status, r.retry_count) for r in recs} == {("completed", 0)}
        by_step = effects(tmp_path)
        on_victims = 0
        for rec in recs:
            eid = rec.input["id"]
            victim = victims[int(eid[1:].split("e")[0])]
            holder = by_step[(eid, "1")]
            assert holder in ([victim], [survivor.pid]), (eid, holder)
            steps = await storage.get_steps(rec.id)
            assert [(s.key, s.status) for s in steps] == [(f"step-{n}", "completed") for n in range(1, 6)]
            if holder == [victim]:
                on_victims += 1
                # Completed steps 1-2 never ran again; step 3 ran again once, on the survivor.
                assert by_step[(eid, "2")] == [victim]
                assert by_step[(eid, "3")] == [victim, survivor.pid]
                assert [s.output["pid"] for s in steps] == [victim] * 2 + [survivor.pid] * 3
            else:
                assert all(by_step[(eid, str(n))] == [survivor.pid] for n in range(1, 6))
        # The survivor holds 2 at a time: each victim had at least 2 when killed.
        assert on_victims >= 2 * RUNS
        # Each victim's executions came back through the node's loss detection.
        assert node.errors().count("is lost (no heartbeat") == RUNS, node.errors()[-3000:]
    finally:
        await storage.aclose()


@pytest.mark.timeout(180)
async def test_a_frozen_worker_comes_back_late_and_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    db = tmp_path / "dq.db"
    port = free_port()
    node = await cluster.node(f"sqlite:///{db}", port, "--no-local-work", env=INTERVAL)
    frozen = await cluster.worker(port, "--concurrency", "4")
    storage = SqlStorage.sqlite(str(db))
    await storage.open()
    try:
        await add_executions(storage, "multi", [{"id": f"e{i}", "steps": 6, "sleep_s": 0.3} for i in range(4)])

        def mid_way() -> bool:  # all four started on the frozen one, none finished
            by_step = effects(tmp_path)
            return all(by_step.get((f"e{i}", "2")) for i in range(4))

        await wait_until(mid_way, 60, frozen.describe)
        frozen.signal(signal.SIGSTOP)
        before = effects(tmp_path)
        other = await cluster.worker(port, "--concurrency", "4")

        async def resumed() -> bool:
            return (await storage.count(ExecutionQuery())).get("completed", 0) == 4

        await wait_until(resumed, 60, lambda: f"resumed by the other worker: {other.describe()}\n{node.describe()}")
        frozen.signal(signal.SIGCONT)
        await wait_until(lambda: "refused late reports" in node.errors(), 30, node.describe)
        await wait_until(lambda: "marked this worker lost" in frozen.errors(), 30, frozen.describe)
        after = effects(tmp_path)
        recs = await storage.query(ExecutionQuery())
        assert {r.status for r in recs} == {"completed"}
        for rec in recs:
            eid = rec.input["id"]
            steps = await storage.get_steps(rec.id)
            assert [(s.key, s.status) for s in steps] == [(f"step-{n}", "completed") for n in range(1, 7)]
            frozen_steps = [n for n in range(1, 7) if frozen.pid in before.get((eid, str(n)), [])]
            last = max(frozen_steps)
            for n in range(1, 7):
                ran = after[(eid, str(n))]
                if n < last:  # completed before the freeze: never again
                    assert ran == [frozen.pid], (eid, n, ran)
                elif n == last:  # in flight at the freeze: ran again on the other worker
                    assert ran == [frozen.pid, other.pid], (eid, n, ran)
                else:  # the frozen worker never went past its refused report
                    assert ran == [other.pid], (eid, n, ran)
            assert rec.output == {"pids": [s.output["pid"] for s in steps]}
            assert other.pid in rec.output["pids"]
    finally:
        await storage.aclose()
