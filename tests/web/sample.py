"""Jobs the HTTP tests drive: one per kind of thing the dashboard shows."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

from dq import create_job, run, sleep


class Name(BaseModel):
    name: str


@create_job(name="greet", input=Name)
async def greet(data: Name) -> dict[str, Any]:
    hello = await run("hello", lambda: f"hello {data.name}")
    await sleep(5)
    loud = await run("shout", lambda: hello.upper())
    return {"greeting": loud}


_calls: dict[str, int] = {}


def _flaky(name: str) -> str:
    _calls[name] = _calls.get(name, 0) + 1
    if _calls[name] == 1:
        raise ConnectionError("first call fails")
    return "ok"


@create_job(name="flaky", input=Name)
async def flaky(data: Name) -> str:
    return await run("call", lambda: _flaky(data.name), retry=2, backoff=10)


@create_job(name="broken", retry=0)
async def broken(data: Any) -> None:
    await run("explode", _explode, retry=0)


def _explode() -> None:
    raise ValueError("boom: the step failed for good")


@create_job(name="slow")
async def slow(data: Any) -> str:
    await run("before", lambda: 1)
    await sleep("1h")
    return "woke"


@create_job(name="big")
async def big(data: Any) -> dict[str, str]:
    return await run("make", lambda: {"blob": "x" * 70_000})


@create_job(name="parent")
async def parent(data: Any) -> Any:
    return await greet.run({"name": "child"})


@create_job(name="hold")
async def hold(data: Any) -> None:
    await run("first", lambda: 1)
    await run("gate", lambda: asyncio.sleep(1))  # time to pause it here
    await run("holding", lambda: asyncio.sleep(30))  # running until cancelled


@create_job(name="grandparent")
async def grandparent(data: Any) -> Any:
    await run("prepare", lambda: asyncio.sleep(0.05))  # the children start visibly later
    return await parent.run(None)


JOBS = [greet, flaky, broken, slow, big, parent, hold, grandparent]
