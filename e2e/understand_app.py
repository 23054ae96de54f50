"""Jobs the understanding checks drive in a real `dq-ui serve e2e/understand_app.py:queue`."""

from __future__ import annotations

import asyncio
from typing import Any

from dq import create_job, create_queue, run


@create_job(name="exclusive", concurrency=1)
async def exclusive(data: Any) -> str:
    await run("hold", lambda: asyncio.sleep(float((data or {}).get("seconds", 120))))
    return "done"


queue = create_queue(jobs=[exclusive])
