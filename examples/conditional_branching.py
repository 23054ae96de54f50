"""Conditional branching: the handler decides which child job runs.

The decision is plain Python between steps; it must be deterministic (it only
reads the input), so a replay takes the same branch.
Run it: python examples/conditional_branching.py
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from dq import create_job, create_queue


class Value(BaseModel):
    value: int


@create_job(name="high_value", input=Value)
async def high_value(data: Value) -> str:
    return f"High value detected: {data.value}"


@create_job(name="low_value", input=Value)
async def low_value(data: Value) -> str:
    return f"Low value detected: {data.value}"


@create_job(name="check_threshold", input=Value)
async def check_threshold(data: Value) -> str:
    if data.value > 10:
        return str(await high_value.run(data))
    return str(await low_value.run(data))


queue = create_queue(jobs=[check_threshold, high_value, low_value])


async def main() -> list[str]:
    async with queue:
        return [str(await queue.jobs.check_threshold.run({"value": v})) for v in (3, 42)]


if __name__ == "__main__":
    for line in asyncio.run(main()):
        print(line)
