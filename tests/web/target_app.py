"""A user's module, as `dq-ui serve tests/web/target_app.py:queue` would load it."""

from __future__ import annotations

from dq import create_job, create_memory_storage, create_queue, run


@create_job(name="custom")
async def custom(data: object) -> str:
    return await run("only-step", lambda: "done")


queue = create_queue(jobs=[custom], storage=create_memory_storage())
not_a_queue = 42
