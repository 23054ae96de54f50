"""A node whose dashboard `queue.monitoring.start()` serves under /monitoring (e2e/test_monitoring.py).

Run as `python -m e2e.monitoring_node PORT DB`: the node's worker API under
/orchestration and the dashboard under /monitoring, on one server; the node
runs the jobs itself. It prints "ready" once both answer, and runs until killed.
"""

from __future__ import annotations

import asyncio
import sys

from dq import create_queue, create_sqlite_storage
from tests.distributed.jobs import composite, multi, signals


async def main(port: int, db: str) -> None:
    queue = create_queue(
        jobs=[multi, composite], pipes=[signals], storage=create_sqlite_storage(path=db),
        orchestration={"port": port}, monitoring={"endpoint": "/monitoring"},
    )  # fmt: skip
    await queue.orchestration.start()
    await queue.monitoring.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
