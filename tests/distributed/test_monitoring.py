"""`queue.monitoring.start()`: the dashboard under its endpoint, on the node's server."""

from __future__ import annotations

import re

import httpx
import pytest

from dq import create_memory_storage, create_queue

from .conftest import free_port
from .jobs import multi


async def test_the_dashboard_and_the_worker_api_share_the_node_server() -> None:
    port = free_port()
    queue = create_queue(jobs=[multi], storage=create_memory_storage(),
                         orchestration={"port": port, "token": "t0k"}, monitoring={"endpoint": "/monitoring"})  # fmt: skip
    await queue.orchestration.start()
    await queue.monitoring.start()
    try:
        await queue.jobs["multi"].run({"id": "m1", "steps": 2})
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base) as client:
            login = await client.get("/monitoring/executions?token=t0k", follow_redirects=True)
            assert login.status_code == 200 and login.url.path == "/monitoring/executions"
            page = login.text
            hrefs = re.findall(r'(?<![\w-])(?:href|src|action|hx-get|hx-post|sse-connect)="([^"#][^"]*)"', page)
            assert hrefs and all(h.startswith("/monitoring") for h in hrefs if not h.startswith("data:")), hrefs
            assert (await client.get("/monitoring/static/dq.js")).status_code == 200
            assert (await client.get("/executions")).status_code == 404  # only under the prefix
            api = await client.post("/orchestration/v1/now", content=b"{}", headers={"authorization": "Bearer t0k"})
            assert api.status_code == 200 and isinstance(api.json()["result"], int)
            assert (await client.post("/orchestration/v1/now", content=b"{}")).status_code == 401
        assert queue.monitoring.url == f"{base}/monitoring"
    finally:
        await queue.monitoring.stop()
        await queue.orchestration.stop()
        await queue.close()


async def test_monitoring_alone_serves_on_the_orchestration_address() -> None:
    port = free_port()
    queue = create_queue(jobs=[multi], storage=create_memory_storage(), orchestration={"port": port},
                         monitoring={"endpoint": "/ui/"})  # fmt: skip
    await queue.monitoring.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            r = await client.get("/ui/jobs")
            assert r.status_code == 200 and 'href="/ui/jobs/multi"' in r.text
            assert (await client.get("/orchestration/v1/now")).status_code == 404  # no node started
    finally:
        await queue.monitoring.stop()
        await queue.close()
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):  # stopped: nothing listens any more
            await client.get(f"http://127.0.0.1:{port}/ui/jobs")


@pytest.mark.parametrize(("options", "message"), [
    ({"endpoint": "monitoring"}, "endpoint must be a path starting with '/'"),
    ({"endpoint": "/a b"}, "'/a b' must be a path like '/monitoring'"),
    ({"path": "/x"}, "unknown option"),
    ({"read_only": "yes"}, "read_only must be True or False"),
])  # fmt: skip
def test_bad_monitoring_options_fail_create_queue(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_queue(jobs=[multi], monitoring=options)
