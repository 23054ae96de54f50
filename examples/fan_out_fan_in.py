"""Fan-out / fan-in: two child jobs in parallel, then an aggregate step.

Run it: python examples/fan_out_fan_in.py
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from dq import create_job, create_queue, run


class Part(BaseModel):
    part_data: str


class Result(BaseModel):
    result: str


@create_job(name="process_part1", input=Part, output=Result)
async def process_part1(data: Part) -> Result:
    return Result(result=data.part_data + "_processed1")


@create_job(name="process_part2", input=Part, output=Result)
async def process_part2(data: Part) -> Result:
    return Result(result=data.part_data + "_processed2")


@create_job(name="aggregate_results")
async def aggregate_results(data: dict[str, list[str]]) -> str:
    return ", ".join(data["results"])


@create_job(name="fan_out_in_workflow")
async def fan_out_in_workflow(data: dict[str, str]) -> str:
    # Both children start at once; each is a durable step keyed by job and input.
    res1, res2 = await asyncio.gather(
        process_part1.run({"part_data": data["data"]}),
        process_part2.run({"part_data": data["data"]}),
    )
    summary = await aggregate_results.run({"results": [res1.result, res2.result]})
    await run("log", lambda: print("Aggregated results:", summary))
    return str(summary)


queue = create_queue(jobs=[fan_out_in_workflow, process_part1, process_part2, aggregate_results])


async def main() -> str:
    async with queue:
        return str(await queue.jobs.fan_out_in_workflow.run({"data": "x"}))


if __name__ == "__main__":
    print(asyncio.run(main()))
