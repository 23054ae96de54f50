"""A job named like tests/distributed/jobs.py's `multi`, with other code: a node serving
jobs.py must refuse it to a worker running this."""

from __future__ import annotations

from typing import Any

from dq import create_job, create_queue, run


@create_job(name="multi", retry=0)
async def multi(data: dict[str, Any]) -> int:
    return int(await run("changed", lambda: 1))


queue = create_queue(jobs=[multi])
