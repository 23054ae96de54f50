"""Concurrency slots never leak: crashed (kill -9), timed-out and cancelled holders give them back."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dq import CancelledError, JobError, Queue, create_job, run

from .test_lifecycle import status_is, until

ROOT = Path(__file__).resolve().parents[2]
WORKER = str(Path(__file__).with_name("slot_worker.py"))


@pytest.mark.slow
def test_a_killed_holder_gives_its_slot_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'slots.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    (tmp_path / "block").touch()
    first = subprocess.Popen([sys.executable, WORKER, url, str(tmp_path), "start"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not list(tmp_path.glob("started-*")):
            assert time.monotonic() < deadline and first.poll() is None, "no execution started"
            time.sleep(0.02)
        time.sleep(0.3)
        assert len(list(tmp_path.glob("started-*"))) == 1  # the other two wait for the slot
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.communicate()
    (tmp_path / "block").unlink()
    second = subprocess.run([sys.executable, WORKER, url, str(tmp_path), "resume"],
                            capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "3"


async def test_timed_out_and_cancelled_holders_give_slots_back(make_queue: Callable[..., Queue]) -> None:
    """Two jobs, each with its own slot: the short timeout is only the first's (a holder
    that times out), so the second's holder is surely still running when it is cancelled."""
    gate = asyncio.Event()

    @create_job(name="times_out", concurrency=1, retry=0, timeout="200ms")
    async def times_out(data: str) -> str:
        if data == "slow":
            await run("forever", lambda: asyncio.sleep(10))
        return data

    @create_job(name="cancelled", concurrency=1, retry=0)
    async def cancelled(data: str) -> str:
        if data == "blocked":
            await run("gate", gate.wait)
        return data

    queue = make_queue([times_out, cancelled])
    async with queue:
        slow = await queue.jobs.times_out.start("slow")
        after_timeout = await queue.jobs.times_out.start("next")
        with pytest.raises(JobError, match="timed out"):
            await slow.result()
        assert await after_timeout.result() == "next"
        blocked = await queue.jobs.cancelled.start("blocked")
        await until(lambda: status_is(blocked, "running"))
        after_cancel = await queue.jobs.cancelled.start("last")
        await blocked.cancel()
        with pytest.raises(CancelledError):
            await blocked.result()
        assert await after_cancel.result() == "last"


async def test_a_release_gives_back_the_key_its_admission_resolved(make_queue: Callable[..., Queue]) -> None:
    """A per-key limit's fn(input) may answer otherwise by the time the execution ends:
    the slot given back is the one taken, so the next execution of that key starts."""
    group = {"now": "a"}

    @create_job(name="keyed", concurrency=lambda _data: {"id": group["now"], "limit": 1}, retry=0)
    async def keyed(data: str) -> str:
        group["now"] = "b"  # what fn(input) says from now on
        return data

    queue = make_queue([keyed])
    async with queue:
        job: Any = queue.jobs.keyed
        assert await (await job.start("first")).result() == "first"
        group["now"] = "a"
        second = await job.start("second")
        assert await asyncio.wait_for(second.result(), 10) == "second"
