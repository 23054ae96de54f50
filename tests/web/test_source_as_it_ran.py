"""An execution shows the code it ran, and says so when the job's file has changed since."""

from __future__ import annotations

import html as htmllib
import importlib.util
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from dq import create_memory_storage, create_queue
from dq.engine.sources import source_version
from dq.web import Settings

from .conftest import Client, open_client

V1 = '''
from dq import create_job, run


@create_job(name="versioned")
async def versioned(data: object) -> int:
    value = await run("compute", lambda: 41)
    return value + 1
'''

V2 = '''
from dq import create_job, run


@create_job(name="versioned")
async def versioned(data: object) -> int:
    # a comment pushes the step one line down
    value = await run("compute", lambda: 40)
    return value + 2
'''


def _load(path: Path) -> ModuleType:
    name = f"dq_versioned_{time.monotonic_ns()}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def versioned(tmp_path: Path, settings: Settings) -> Iterator[tuple[Client, Path]]:
    path = tmp_path / "versioned_jobs.py"
    path.write_text(V1)
    module = _load(path)
    queue = create_queue(jobs=[module.versioned], storage=create_memory_storage(), shutdown_grace="200ms")
    with open_client(queue, settings) as client:
        yield client, path


def _text(page: str) -> str:
    return htmllib.unescape(re.sub(r"<[^>]+>", "", page))


def test_old_execution_shows_the_code_it_ran_and_that_it_changed(versioned: tuple[Client, Path]) -> None:
    client, path = versioned
    eid = client.run("versioned")
    version = source_version(client.queue.definitions["versioned"].handler)
    assert version is not None
    state = client.call(client.queue.storage.get_state, [f"source:versioned:{version.fingerprint}"])
    assert state[f"source:versioned:{version.fingerprint}"]["text"].count("lambda: 41") == 1  # stored once

    page = client.get(f"/executions/{eid}?step=compute").text
    assert "as it ran" in page and "Code changed since this run" not in page
    step_line = V1.splitlines().index('    value = await run("compute", lambda: 41)') + 1
    assert re.search(rf'<span class="ln step hl" id="L{step_line}"', page)

    path.write_text(V2)  # a deploy: the file changes under the running dashboard
    page = client.get(f"/executions/{eid}?step=compute").text
    assert 'id="code-changed"' in page and f'href="/executions/{eid}/source-diff"' in page
    # still the code it ran, with its step's line highlighted (not today's line numbers)
    assert "lambda: 41" in _text(page) and "lambda: 40" not in _text(page)
    assert re.search(rf'<span class="ln step hl" id="L{step_line}"', page)

    diff = _text(client.get(f"/executions/{eid}/source-diff").text)
    assert "-    value = await run(\"compute\", lambda: 41)" in diff
    assert "+    value = await run(\"compute\", lambda: 40)" in diff
    assert "+    # a comment pushes the step one line down" in diff
    assert "-    return value + 1" in diff and "+    return value + 2" in diff


def test_versions_are_recorded_once_per_code_version(versioned: tuple[Client, Path]) -> None:
    client, _path = versioned
    for _ in range(3):
        client.run("versioned")
    keys = client.call(client.queue.storage.list_state, "source:versioned:")
    assert len(keys) == 1
