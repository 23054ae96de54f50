"""Worker processes for `thread()`: one pool per limit profile, reused across calls.

A profile is (max_memory_mb, max_cpu_seconds). A worker applies its profile's
memory limit (RLIMIT_AS) once, when it starts; before each call it moves its
CPU soft limit (RLIMIT_CPU) to the CPU time it has used so far plus the
profile's seconds, so the limit holds per call however many calls the process
served before. Workers come from a forkserver (no inherited event loop or
locks). A worker that times out, breaches a limit, hits a MemoryError or dies
is never reused: the call that saw it kills it, and the pool starts a fresh one
for the next call. At most `IDLE_PER_PROFILE` idle workers are kept per profile.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import math
import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from .errors import error_to_dict
from .serialize import plain_json

_MP = multiprocessing.get_context("forkserver")
IDLE_PER_PROFILE = 4
Profile = tuple[int | None, int | None]


class ThreadContext:
    """What `fn(input, ctx)` gets in the child: `ctx.logger(msg)` lines go to the trace."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def logger(self, *parts: Any) -> None:
        self._conn.send(("log", " ".join(str(p) for p in parts)))


def _serve(conn: Connection, memory_mb: int | None, cpu_s: int | None) -> None:
    """The worker's loop: (ref, input) in, ("ok", result) / ("err", error) out; EOF ends it."""
    import resource

    if memory_mb is not None:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    while True:
        try:
            ref, input = conn.recv()
        except (EOFError, OSError):
            return
        if cpu_s is not None:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            used = math.ceil(usage.ru_utime + usage.ru_stime)
            resource.setrlimit(resource.RLIMIT_CPU, (used + cpu_s, resource.RLIM_INFINITY))
        try:
            module, _, qualname = ref.partition(":")
            fn: Any = importlib.import_module(module)
            for part in qualname.split("."):
                fn = getattr(fn, part)
            result = fn(input, ThreadContext(conn))
            if inspect.isawaitable(result):
                result = asyncio.run(_await(result))
            conn.send(("ok", plain_json(result, "the result of a thread step")))
        except MemoryError:
            conn.send(("err", {"type": "dq.engine.threads.ResourceLimitError",
                               "message": f"exceeded max_memory_mb={memory_mb}", "traceback": ""}))  # fmt: skip
            return  # a process that ran out of memory is not trusted with another call
        except BaseException as exc:
            conn.send(("err", error_to_dict(exc)))


async def _await(awaitable: Any) -> Any:
    return await awaitable


@dataclass(eq=False)
class Worker:
    process: BaseProcess
    conn: Connection
    profile: Profile

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.is_alive() and not self.conn.closed

    async def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        await asyncio.to_thread(self.process.join, 5)
        self.conn.close()


class ProcessPools:
    """Idle workers by profile. Taking one is exclusive: a call owns its worker."""

    def __init__(self) -> None:
        self._idle: dict[Profile, list[Worker]] = {}

    async def take(self, profile: Profile) -> Worker:
        idle = self._idle.get(profile, [])
        while idle:
            worker = idle.pop()
            if worker.alive():
                return worker
            await worker.kill()
        parent, child = _MP.Pipe(duplex=True)
        proc = _MP.Process(target=_serve, args=(child, *profile), daemon=True)
        await asyncio.to_thread(proc.start)
        child.close()
        return Worker(proc, parent, profile)

    async def give_back(self, worker: Worker) -> None:
        idle = self._idle.setdefault(worker.profile, [])
        if worker.alive() and len(idle) < IDLE_PER_PROFILE:
            idle.append(worker)
        else:
            await worker.kill()

    async def aclose(self) -> None:
        for workers in self._idle.values():
            for worker in workers:
                with contextlib.suppress(Exception):
                    await worker.kill()
        self._idle.clear()


async def call(
    worker: Worker, ref: str, input: Any, timeout_s: float | None, on_log: Callable[[str], None]
) -> tuple[str, Any]:
    """Send one call to `worker`: ("ok", result), ("err", error dict) or ("exit", None)
    when the process died. Raises builtins.TimeoutError after `timeout_s`."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[str, Any]] = loop.create_future()
    conn = worker.conn

    def readable() -> None:
        try:
            kind, value = conn.recv()
        except (EOFError, OSError):
            if not done.done():
                done.set_result(("exit", None))
            loop.remove_reader(conn.fileno())
            return
        if kind == "log":
            on_log(str(value))
        elif not done.done():
            done.set_result((kind, value))

    conn.send((ref, input))
    loop.add_reader(conn.fileno(), readable)
    try:
        async with asyncio.timeout(timeout_s):
            return await done
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(conn.fileno())
