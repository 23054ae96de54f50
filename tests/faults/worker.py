"""An engine process for the fault tests: the test kills, freezes or stops it.

Usage: python worker.py SPEC WORKDIR MODE [ARGS]

SPEC is a storage URL, with `#prefix` appended for a Redis key prefix.
Modes:
  kill9 BATCH N [KEY=VALUE...]
                  recover what earlier (killed) processes left, start N `five_steps`
                  executions "b<BATCH>e<i>" (inputs: the KEY=VALUEs), run until killed
  serve JOB N [KEY=VALUE...]
                  start N executions of JOB ("<JOB>-<i>"), run until SIGTERM, then
                  `await queue.close()` and exit 0; N=0 only serves (recovers, runs)
  drain           recover and run until no execution is active; print "completed K"

Side effects are appended to WORKDIR/effects as "<execution> <step> <pid> <unix time>"
(fsync'd), so the test can count them across processes. A step blocks while its
block file exists (inputs `block_step`, `block`), unless DQ_NO_BLOCK is set.
Commits that storage refused (a stale fencing token) are logged to
WORKDIR/refused-<pid>. Environment: DQ_LEASE, DQ_POLL, DQ_SHORT_SLEEP, DQ_GRACE
(queue options) and DQ_CLOCK_SKEW_MS (this process's wall clock runs off by that).
"""

from __future__ import annotations

import os
import time

_SKEW_NS = int(os.environ.get("DQ_CLOCK_SKEW_MS", "0")) * 1_000_000
if _SKEW_NS:  # before the engine is imported: every wall-clock read is off
    _time_ns, _time = time.time_ns, time.time
    time.time_ns = lambda: _time_ns() + _SKEW_NS
    time.time = lambda: _time() + _SKEW_NS / 1e9

import asyncio  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from dq import Queue, create_job, create_queue, run, sleep, storage_from_url  # noqa: E402
from dq.engine.storage.base import Batch, CommitResult, Storage  # noqa: E402
from dq.engine.storage.redis import RedisStorage  # noqa: E402

WORKDIR = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(".")
PID = os.getpid()
ACTIVE = ["pending", "running", "waiting", "paused"]


def _append(name: str, line: str) -> None:
    with open(WORKDIR / name, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def effect(execution: str, step: str) -> None:
    # Real time, also in a worker whose clock is skewed: the test compares across processes.
    _append("effects", f"{execution} {step} {PID} {(time.time_ns() - _SKEW_NS) / 1e9:.6f}")


async def _block(step: int, data: dict[str, Any]) -> None:
    block = data.get("block")
    if step != data.get("block_step") or not block or os.environ.get("DQ_NO_BLOCK"):
        return
    if not (WORKDIR / block).exists():
        return
    _append("blocked", f"{data['id']} {step} {PID}")
    while (WORKDIR / block).exists():
        await asyncio.sleep(0.01)


async def _step(n: int, data: dict[str, Any]) -> dict[str, int]:
    effect(data["id"], str(n))
    await asyncio.sleep(float(data.get("sleep_s", 0)))
    await _block(n, data)
    return {"pid": PID}


@create_job(name="five_steps", retry=0)
async def five_steps(data: dict[str, Any]) -> dict[str, int]:
    for n in range(1, 6):
        await run(f"step-{n}", lambda n=n: _step(n, data))
    return {"pid": PID}


@create_job(name="sleeper", retry=0)
async def sleeper(data: dict[str, Any]) -> dict[str, int]:
    await run("before", lambda: effect(data["id"], "before"))
    await sleep(float(data["sleep_s"]) * 1000)
    await run("after", lambda: effect(data["id"], "after"))
    return {"pid": PID}


def _storage(spec: str) -> Storage:
    url, _, prefix = spec.partition("#")
    if prefix:
        return RedisStorage(url, prefix=prefix)
    return storage_from_url(url)


def _log_refusals(storage: Storage) -> None:
    """Record every commit whose fenced writes storage refused (the test's evidence)."""
    commit = storage.commit

    async def logged(batch: Batch) -> CommitResult:
        result = await commit(batch)
        for eid in sorted(result.refused):
            _append(f"refused-{PID}", eid)
        return result

    storage.commit = logged  # type: ignore[method-assign]


def _inputs(job: str, n: int, extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"id": f"{job}-{i}", **extra} for i in range(n)]


async def _until_idle(queue: Queue) -> int:
    while await queue.jobs.get_all(status=ACTIVE):
        await asyncio.sleep(0.05)
    return len(await queue.jobs.get_all(status="completed"))


async def main() -> None:
    spec, mode, args = sys.argv[1], sys.argv[3], sys.argv[4:]
    storage = _storage(spec)
    _log_refusals(storage)
    queue = create_queue(
        jobs=[five_steps, sleeper], storage=storage,
        lease=os.environ.get("DQ_LEASE", "2s"), poll_interval=os.environ.get("DQ_POLL", "50ms"),
        short_sleep=os.environ.get("DQ_SHORT_SLEEP", "5s"),
        shutdown_grace=os.environ.get("DQ_GRACE", "1s"),
    )  # fmt: skip
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await queue.start()
    if mode == "kill9":
        batch, n = int(args[0]), int(args[1])
        extra = dict(_parse(a) for a in args[2:])
        data = [{"id": f"b{batch}e{i}", "block_step": 3, "block": f"block-{batch}", **extra}
                for i in range(n)]  # fmt: skip
        await queue.jobs.five_steps.start_many(data)
        print("started", flush=True)
        await stop.wait()
    elif mode == "serve":
        job, n = args[0], int(args[1])
        extra = dict(_parse(a) for a in args[2:])
        for data in _inputs(job, n, extra):
            await queue.jobs[job].start(data)
        print("ready", flush=True)
        await stop.wait()
        await queue.close()
        print("closed", flush=True)
        return
    elif mode == "drain":
        print(f"completed {await _until_idle(queue)}", flush=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    await queue.close()


def _parse(arg: str) -> tuple[str, Any]:
    """KEY=VALUE with VALUE an int, a float or a string."""
    key, _, text = arg.partition("=")
    for cast in (int, float):
        try:
            return key, cast(text)
        except ValueError:
            pass
    return key, text


if __name__ == "__main__":
    asyncio.run(main())
