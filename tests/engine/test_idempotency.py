"""Idempotency keys: a second start with the same key within `idempotency_ttl`
returns the first execution and starts nothing, on every adapter."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from dq import Queue, create_job
from dq.engine.idempotency import sweep_expired

from .test_lifecycle import until


def _counting_job(calls: list[Any], **options: Any) -> Any:
    @create_job(name="charge", **options)
    async def charge(data: dict[str, int]) -> int:
        calls.append(data)
        return data["amount"]

    return charge


async def test_second_start_with_the_same_key_returns_the_first(make_queue: Callable[..., Queue]) -> None:
    calls: list[Any] = []
    queue = make_queue([_counting_job(calls)])
    async with queue:
        first = await queue.jobs.charge.start({"amount": 5}, idempotency_key="order-1")
        again = await queue.jobs.charge.start({"amount": 7}, idempotency_key="order-1")
        other = await queue.jobs.charge.start({"amount": 9}, idempotency_key="order-2")
        plain = await queue.jobs.charge.start({"amount": 1})
        assert again.id == first.id and other.id != first.id
        assert await again.result() == 5
        assert await queue.jobs.charge.run({"amount": 8}, idempotency_key="order-1") == 5
        assert await other.result() == 9 and await plain.result() == 1
        assert first.idempotency_key == "order-1" and plain.idempotency_key is None
        found = await queue.jobs.get_all(idempotency_key="order-1")
        assert [e.id for e in found] == [first.id]
        assert (await queue.jobs.get(first.id)).idempotency_key == "order-1"  # type: ignore[union-attr]
        assert len(await queue.jobs.get_all(job_name="charge")) == 3
    assert sorted(c["amount"] for c in calls) == [1, 5, 9]


async def test_concurrent_starts_with_one_key_start_one_execution(make_queue: Callable[..., Queue]) -> None:
    calls: list[Any] = []
    queue = make_queue([_counting_job(calls)])
    async with queue:
        executions = await asyncio.gather(
            *(queue.jobs.charge.start({"amount": i}, idempotency_key="same") for i in range(20))
        )
        assert len({e.id for e in executions}) == 1
        await executions[0].result()
        assert len(await queue.jobs.get_all()) == 1
    assert len(calls) == 1


async def test_a_key_is_forgotten_after_its_ttl(make_queue: Callable[..., Queue]) -> None:
    calls: list[Any] = []
    queue = make_queue([_counting_job(calls, idempotency_ttl="300ms")])
    async with queue:
        first = await queue.jobs.charge.start({"amount": 1}, idempotency_key="k")
        await first.result()
        assert (await queue.jobs.charge.start({"amount": 2}, idempotency_key="k")).id == first.id
        await asyncio.sleep(0.4)
        later = await queue.jobs.charge.start({"amount": 3}, idempotency_key="k")
        assert later.id != first.id
        assert await later.result() == 3
    assert [c["amount"] for c in calls] == [1, 3]


async def test_keys_are_per_job(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="a")
    async def a(data: Any) -> str:
        return "a"

    @create_job(name="b")
    async def b(data: Any) -> str:
        return "b"

    queue = make_queue([a, b])
    async with queue:
        assert await queue.jobs.a.run(None, idempotency_key="k") == "a"
        assert await queue.jobs.b.run(None, idempotency_key="k") == "b"


async def test_inside_a_handler_the_key_spans_parents(make_queue: Callable[..., Queue]) -> None:
    calls: list[Any] = []
    charge = _counting_job(calls)

    @create_job(name="checkout")
    async def checkout(order: str) -> list[Any]:
        started = await charge.start({"amount": 3}, idempotency_key=f"pay-{order}")
        ran = await charge.run({"amount": 4}, idempotency_key=f"pay-{order}")
        return [started.id, ran]

    queue = make_queue([charge, checkout])
    async with queue:
        one = await queue.jobs.checkout.run("o1")
        two = await queue.jobs.checkout.run("o1")
        assert one == two and one[1] == 3
        charges = await queue.jobs.get_all(job_name="charge")
        assert [e.id for e in charges] == [one[0]]
    assert len(calls) == 1


async def test_bad_keys_are_refused_at_the_call_site(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue([_counting_job([])])
    async with queue:
        for bad in ("", 5, b"k"):
            with pytest.raises(ValueError, match="idempotency_key"):
                await queue.jobs.charge.start({"amount": 1}, idempotency_key=bad)
        assert await queue.jobs.get_all() == []
    with pytest.raises(ValueError, match="idempotency_ttl"):
        _counting_job([], idempotency_ttl="forever")


async def test_expired_keys_are_swept(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue([_counting_job([], idempotency_ttl="100ms")])
    async with queue:
        await queue.jobs.charge.run({"amount": 1}, idempotency_key="old")
        runtime = await queue.started()
        await until(lambda: _swept(queue, runtime, sweep_expired))
        assert await queue.storage.list_state("idem:") == {}


async def _swept(queue: Queue, runtime: Any, sweep: Any) -> bool:
    return bool(await sweep(queue.storage, runtime.committer.commit))
