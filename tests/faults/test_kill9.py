"""kill -9 during step 3 of 5, 20 times in a row per adapter: nothing lost, completed
steps never run again, the interrupted step runs again exactly once.

One process start per run: the process of run k first resumes what the killed
process of run k-1 left (recovery of a dead pid of this host), then starts run
k's executions and is killed while all of them are inside step 3.
"""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from dq.engine.storage.base import ExecutionQuery

from .conftest import Store, Workers, lines, read_effects, wait_until

RUNS = 20
PER_RUN = 4


def _ids(run_no: int) -> list[str]:
    return [f"b{run_no}e{i}" for i in range(PER_RUN)]


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_kill_9_during_step_3_of_5_repeatedly(store: Store, workers: Workers, tmp_path: Path) -> None:
    storage = await store.open()
    killed_pids: list[int] = []
    for run_no in range(RUNS):
        (tmp_path / f"block-{run_no}").touch()
        worker = workers.spawn(store, "kill9", run_no, PER_RUN)

        async def ready(run_no: int = run_no, pid: int = worker.pid) -> bool:
            # This run's executions are all blocked in step 3 in this process...
            blocked = {x.split()[0] for x in lines(tmp_path / "blocked") if x.endswith(f" 3 {pid}")}
            if blocked != set(_ids(run_no)):
                return False
            # ...and the previous run's, resumed here, are finished.
            counts = await storage.count(ExecutionQuery(statuses=["completed"]))
            return counts.get("completed", 0) == run_no * PER_RUN

        state = f"run {run_no}: all in step 3, run {run_no - 1} resumed"
        await wait_until(ready, 60, lambda w=worker, state=state: f"{state}: {w.describe()}")
        await worker.kill9()
        killed_pids.append(worker.pid)
        (tmp_path / f"block-{run_no}").unlink()
    last = workers.spawn(store, "drain")
    await last.wait_output("completed", 60)
    assert await last.exit_code() == 0, last.describe()
    assert last.output().split() == ["completed", str(RUNS * PER_RUN)], last.describe()

    # Every effect, by execution and step, with the process that caused it.
    by_step: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
    for e in read_effects(tmp_path):
        by_step[(e.execution, e.step)].append(e.pid)
    resumed_by = [*killed_pids[1:], last.pid]
    for run_no in range(RUNS):
        first, second = killed_pids[run_no], resumed_by[run_no]
        for eid in _ids(run_no):
            # Steps 1 and 2 ran once, before the kill; step 3 ran before it and once
            # more after it; 4 and 5 once, in the process that resumed the execution.
            assert by_step[(eid, "1")] == [first], (eid, by_step[(eid, "1")])
            assert by_step[(eid, "2")] == [first], (eid, by_step[(eid, "2")])
            assert by_step[(eid, "3")] == [first, second], (eid, by_step[(eid, "3")])
            assert by_step[(eid, "4")] == [second], (eid, by_step[(eid, "4")])
            assert by_step[(eid, "5")] == [second], (eid, by_step[(eid, "5")])

    executions = await storage.query(ExecutionQuery())
    assert len(executions) == RUNS * PER_RUN
    assert {(e.status, e.retry_count) for e in executions} == {("completed", 0)}
    for rec in executions:
        steps = await storage.get_steps(rec.id)
        assert [(s.key, s.status) for s in steps] == [(f"step-{n}", "completed") for n in range(1, 6)]
        # The stored records: steps 1-2 from the killed process, 3-5 from the one that resumed.
        run_no = int(rec.input["id"][1:].split("e")[0])
        first, second = killed_pids[run_no], resumed_by[run_no]
        assert [s.output for s in steps] == [{"pid": first}] * 2 + [{"pid": second}] * 3
