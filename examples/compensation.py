"""Error handling and compensation: when a job fails for good, undo its effects.

Two ways, both shown: the `on_failure` option (runs once, after the last retry),
and a `job.on("failure", ...)` listener. Inside a workflow, a try/except around a
child `job.run(...)` compensates synchronously.
Run it: python examples/compensation.py
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

from dq import JobError, create_job, create_queue, run


class Task(BaseModel):
    task_id: str


compensated: list[str] = []


@create_job(name="compensation_job", input=Task)
async def compensation_job(data: Task) -> str:
    await run("undo", lambda: compensated.append(data.task_id))
    return f"Compensation action taken for {data.task_id}"


@create_job(
    name="risky_job",
    input=Task,
    retry=1,
    backoff=0,
    on_failure=lambda data, error: compensation_job.start({"task_id": data.task_id}),
)
async def risky_job(data: Task) -> str:
    if data.task_id.startswith("bad"):
        raise RuntimeError("Simulated failure")
    return f"Risky job succeeded for {data.task_id}"


@create_job(name="checkout")
async def checkout(data: dict[str, Any]) -> str:
    try:
        return str(await risky_job.run({"task_id": data["order"]}))
    except JobError as exc:
        # The child failed for good (after its retries); the parent decides what next.
        await compensation_job.run({"task_id": "refund-" + data["order"]})
        return f"order {data['order']} refunded: {exc.cause}"


queue = create_queue(jobs=[risky_job, compensation_job, checkout])


async def main() -> list[str]:
    async with queue:
        ok = await queue.jobs.risky_job.run({"task_id": "t1"})
        refunded = await queue.jobs.checkout.run({"order": "bad-7"})
        # on_failure (which ran before the failure was reported) started a
        # compensation job for the failed risky_job as well: wait for both.
        for execution in await queue.jobs.get_all(job_name="compensation_job"):
            await execution.result()
        return [str(ok), refunded, ", ".join(sorted(compensated))]


if __name__ == "__main__":
    for line in asyncio.run(main()):
        print(line)
