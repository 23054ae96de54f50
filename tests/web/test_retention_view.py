"""The overview shows the queue's retention policy and how many executions it removed."""

from __future__ import annotations

import pytest

from dq import Queue, create_memory_storage, create_queue

from .conftest import Client
from .sample import JOBS
from .test_pages import HTML, text


@pytest.fixture
def queue() -> Queue:
    return create_queue(
        jobs=JOBS, storage=create_memory_storage(), shutdown_grace="200ms",
        retention={"completed": "2 days", "failed": "30 days"},
    )  # fmt: skip


def test_overview_shows_the_retention_policy(client: Client) -> None:
    page = text(client.get("/", headers=HTML).text)
    assert "keeps completed 2 days, failed 30 days; 0 removed by this process" in page
