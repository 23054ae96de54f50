"""`thread()`: a step that runs `fn(input, ctx)` in a separate process (true parallelism).

Each call gets a fresh process from a forkserver (cheap to start, no inherited
event loop or locks), with its resource limits set in the child before `fn`
runs. A timeout or a breach kills the process and fails the step.
"""

from __future__ import annotations

import asyncio
import builtins
import importlib
import inspect
import multiprocessing
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from .backoff import make_backoff, make_retry
from .context import ExecutionContext, current
from .durations import parse_duration
from .errors import DqError, TimeoutError, allow_error_module, error_from_dict, error_to_dict
from .event_schema import EventKind
from .serialize import plain_json
from .steps import _caller_line, execute_step

_MP = multiprocessing.get_context("forkserver")


class ThreadContext:
    """What `fn(input, ctx)` gets in the child: `ctx.logger(msg)` lines go to the trace."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def logger(self, *parts: Any) -> None:
        self._conn.send(("log", " ".join(str(p) for p in parts)))


class ResourceLimitError(DqError):
    """A thread step went over max_memory_mb or max_cpu_seconds."""


def _child(conn: Connection, ref: str, input: Any, memory_mb: int | None, cpu_s: int | None) -> None:
    import resource

    if memory_mb is not None:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if cpu_s is not None:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
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
    except BaseException as exc:
        conn.send(("err", error_to_dict(exc)))
    finally:
        conn.close()


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _reference(fn: Callable[..., Any], step: str) -> str:
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    if not module or "<" in qualname or module == "__main__":
        raise TypeError(
            f"thread {step!r}: fn must be importable by name (a module-level function "
            f"outside __main__), got {fn!r}"
        )
    return f"{module}:{qualname}"


async def _in_process(ctx: ExecutionContext, key: str, ref: str, input: Any,
                      timeout_ms: int | None, memory_mb: int | None, cpu_s: int | None) -> Any:  # fmt: skip
    owner = ctx.owner
    parent, child = _MP.Pipe(duplex=False)
    proc = _MP.Process(target=_child, args=(child, ref, input, memory_mb, cpu_s), daemon=True)
    await asyncio.to_thread(proc.start)
    child.close()
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[str, Any]] = loop.create_future()

    def readable() -> None:
        try:
            kind, value = parent.recv()
        except (EOFError, OSError):
            if not done.done():
                done.set_result(("exit", None))
            loop.remove_reader(parent.fileno())
            return
        if kind == "log":
            owner.send(ctx, EventKind.LOG, {"key": key, "message": str(value)})
        elif not done.done():
            done.set_result((kind, value))

    loop.add_reader(parent.fileno(), readable)
    try:
        async with asyncio.timeout(timeout_ms / 1000 if timeout_ms is not None else None):
            kind, value = await done
    except builtins.TimeoutError:
        raise TimeoutError(f"thread {key!r} timed out after {timeout_ms} ms; its process was killed") from None
    finally:
        try:
            loop.remove_reader(parent.fileno())
        except (ValueError, OSError):
            pass
        if proc.is_alive():
            proc.kill()
        await asyncio.to_thread(proc.join, 5)
        parent.close()
    if kind == "ok":
        return value
    if kind == "err":
        raise error_from_dict(value)
    code = proc.exitcode
    if code is not None and code < 0 and -code == signal.SIGXCPU:
        raise ResourceLimitError(f"thread {key!r} exceeded max_cpu_seconds={cpu_s} (killed by SIGXCPU)")
    if code is not None and code < 0 and -code == signal.SIGKILL and cpu_s is not None:
        raise ResourceLimitError(f"thread {key!r} exceeded max_cpu_seconds={cpu_s} (killed)")
    raise ResourceLimitError(f"thread {key!r}: its process died (exit code {code}); memory limit {memory_mb} MB")


async def thread(
    name: str,
    fn: Callable[..., Any],
    input: Any = None,
    *,
    retry: int = 3,
    backoff: Any = None,
    timeout: Any = None,
    max_memory_mb: int | None = None,
    max_cpu_seconds: int | None = None,
) -> Any:
    """Run `fn(input, ctx)` in a separate process as a durable step."""
    ctx = current()
    if not isinstance(name, str) or not name or "#" in name:
        raise ValueError(f"thread: the step name must be a non-empty string without '#', got {name!r}")
    ref = _reference(fn, name)
    allow_error_module(fn.__module__)
    stored_input = plain_json(input, f"the input of thread {name!r}")
    for opt, value in (("max_memory_mb", max_memory_mb), ("max_cpu_seconds", max_cpu_seconds)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"thread {name!r}: {opt} must be an int >= 1, got {value!r}")
    retries = make_retry(retry, f"thread {name!r} retry")(None)
    backoff_for = make_backoff(backoff, f"thread {name!r} backoff")
    timeout_ms = parse_duration(timeout, f"thread {name!r} timeout") if timeout is not None else None
    key, seq = ctx.next_key(name)

    async def in_process() -> Any:
        return await _in_process(ctx, key, ref, stored_input, timeout_ms, max_memory_mb, max_cpu_seconds)

    return await execute_step(
        ctx, "thread", key, name, seq, _caller_line(), in_process,
        retries=retries, backoff_for=backoff_for, timeout_ms=None,
    )  # fmt: skip

