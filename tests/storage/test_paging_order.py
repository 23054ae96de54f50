"""List pages in id order whatever order the executions arrived in, and after some are
deleted (the memory adapter walks a sorted id list from either end, stopping at a page)."""

from __future__ import annotations

from dq.engine.storage.base import Batch, ExecutionQuery, ExecutionRecord, Storage


def _rec(eid: str, status: str = "completed", job: str = "a") -> ExecutionRecord:
    return ExecutionRecord(id=eid, job_name=job, status=status, created_at=1, run_at=1)


async def test_pages_follow_id_order_across_arrival_order_and_deletes(storage: Storage) -> None:
    ids = ["01F", "01B", "01D", "01A", "01E", "01C", "01G"]
    for eid in ids:  # one commit each, out of order
        await storage.commit(Batch(executions=[_rec(eid, job="b" if eid in ("01B", "01E") else "a")]))
    assert await storage.delete_executions(["01D"]) == ["01D"]

    async def page(**q: object) -> list[str]:
        return [r.id for r in await storage.query(ExecutionQuery(**q))]  # type: ignore[arg-type]

    assert await page(limit=3) == ["01G", "01F", "01E"]
    assert await page(limit=3, cursor="01E") == ["01C", "01B", "01A"]
    assert await page(limit=2, offset=1, order="oldest") == ["01B", "01C"]
    assert await page(order="oldest", cursor="01C") == ["01E", "01F", "01G"]
    assert await page(job_names=["b"], limit=5) == ["01E", "01B"]
    assert await page(job_names=["a"], cursor="01F", limit=2) == ["01C", "01A"]
    assert await page(cursor="01A") == []
    await storage.commit(Batch(executions=[_rec("01D", status="failed")]))  # back, with another status
    assert await page(statuses=["failed"]) == ["01D"]
    assert await page(limit=4, cursor="01F") == ["01E", "01D", "01C", "01B"]


async def test_family_queries_follow_inserts_and_deletes(storage: Storage) -> None:
    parent = _rec("01P")
    kids = [ExecutionRecord(id=f"01K{i}", job_name="a", status="completed", created_at=1, run_at=1,
                            parent_id="01P", root_id="01P") for i in range(3)]  # fmt: skip
    replay = ExecutionRecord(id="01R", job_name="a", status="pending", created_at=1, run_at=1, replay_of="01P")
    await storage.commit(Batch(executions=[parent, *kids, replay]))

    async def ids(**q: object) -> list[str]:
        return [r.id for r in await storage.query(ExecutionQuery(order="oldest", **q))]  # type: ignore[arg-type]

    assert await ids(parent_id="01P") == ["01K0", "01K1", "01K2"]
    assert await ids(root_id="01P", parent_id="01P", limit=2) == ["01K0", "01K1"]
    assert await ids(replay_of="01P") == ["01R"]
    assert await storage.delete_executions(["01K1"]) == ["01K1"]
    assert await ids(parent_id="01P") == ["01K0", "01K2"]
    assert await ids(root_id="01P", statuses=["completed"], cursor="01K0") == ["01K2"]
    assert await ids(parent_id="01X") == []
