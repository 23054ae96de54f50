"""Views of this release's engine features: the retention policy on the overview,
`patched` markers in an execution's trace."""

from __future__ import annotations

from typing import Any

import pytest

from dq import Queue, create_job, create_memory_storage, create_queue, patched, run

from .conftest import Client
from .sample import JOBS
from .test_pages import HTML, text


@create_job(name="careful")
async def careful(data: Any) -> str:
    if patched("new-greeting"):
        return str(await run("greet", lambda: "good day"))
    return str(await run("greet", lambda: "hi"))


@pytest.fixture
def queue() -> Queue:
    return create_queue(
        jobs=[*JOBS, careful], storage=create_memory_storage(), shutdown_grace="200ms",
        retention={"completed": "2 days", "failed": "30 days"},
    )  # fmt: skip


def test_overview_shows_the_retention_policy(client: Client) -> None:
    page = text(client.get("/", headers=HTML).text)
    assert "keeps completed 2 days, failed 30 days; 0 removed by this process" in page


def test_a_patch_marker_shows_in_the_trace(client: Client) -> None:
    eid = client.run("careful")
    page = text(client.get(f"/executions/{eid}", headers=HTML).text)
    assert "new-greeting" in page and "greet" in page
