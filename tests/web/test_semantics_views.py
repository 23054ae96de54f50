"""Views of this release's engine features: the retention policy on the overview,
`patched` markers in an execution's trace."""

from __future__ import annotations

from typing import Any

import pytest

from dq import Queue, create_job, create_memory_storage, create_queue, patched, run
from dq.app.demo import DEMO_RETENTION, create_demo_queue

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


async def test_the_demo_queues_musicbrainz_calls_instead_of_dropping_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Throttle discards by default now; the demo's 1/s musicBrainz throttle queues."""
    monkeypatch.setenv("DQ_DEMO_SPEED", "20")
    monkeypatch.setenv("DQ_DEMO_FAILURES", "0")
    queue = create_demo_queue(create_memory_storage())
    assert queue.retention == DEMO_RETENTION
    async with queue:
        calls = [await queue.jobs.musicBrainz.start({"fingerprint": c * 20}) for c in "ab"]
        found = [await c.result() for c in calls]
    assert [r.id for r in found] == ["mbid-" + "a" * 12, "mbid-" + "b" * 12]
