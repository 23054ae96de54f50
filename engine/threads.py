"""`thread()`: a step that runs `fn(input, ctx)` in a separate process (true parallelism).

Calls run in worker processes kept in one pool per limit profile (procpool):
a process is reused by later calls with the same limits, which hold per call.
A timeout or a breach kills the process and fails the step.
"""

from __future__ import annotations

import builtins
import signal
from collections.abc import Callable
from typing import Any

from .backoff import backoff_attempts, make_backoff, make_retry
from .context import ExecutionContext, current
from .durations import parse_duration
from .errors import DqError, TimeoutError, allow_error_module, error_from_dict
from .logs import write
from .procpool import ProcessPools, call
from .serialize import plain_json
from .steps import _caller_line, execute_step


class ResourceLimitError(DqError):
    """A thread step went over max_memory_mb or max_cpu_seconds."""


#: The worker pools of this process, one per limit profile (see procpool).
POOLS = ProcessPools()


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
    worker = await POOLS.take((memory_mb, cpu_s))
    reusable = False
    try:
        timeout_s = timeout_ms / 1000 if timeout_ms is not None else None
        # ctx.logger lines land where log() lines do: the trace and the dq.job.<name> logger.
        on_log: Callable[[str], None] = lambda line: write(ctx, line, {}, key)  # noqa: E731
        kind, value = await call(worker, ref, input, timeout_s, on_log)
        reusable = kind == "ok" or (kind == "err" and value.get("type") != "dq.engine.threads.ResourceLimitError")
    except builtins.TimeoutError:
        raise TimeoutError(f"thread {key!r} timed out after {timeout_ms} ms; its process was killed") from None
    finally:
        if reusable:
            await POOLS.give_back(worker)
        else:  # timed out, cancelled, over a limit or dead: never reused
            await worker.kill()
    if kind == "ok":
        return value
    if kind == "err":
        raise error_from_dict(value)
    code = worker.process.exitcode
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
    retry: int | None = None,
    backoff: Any = None,
    timeout: Any = None,
    max_memory_mb: int | None = None,
    max_cpu_seconds: int | None = None,
    concurrency: int | None = None,
) -> Any:
    """Run `fn(input, ctx)` in a worker process as a durable step. `concurrency`: at
    most that many of this step at once across all executions and processes."""
    ctx = current()
    if not isinstance(name, str) or not name or "#" in name:
        raise ValueError(f"thread: the step name must be a non-empty string without '#', got {name!r}")
    ref = _reference(fn, name)
    allow_error_module(fn.__module__)
    stored_input = plain_json(input, f"the input of thread {name!r}")
    for opt, value in (("max_memory_mb", max_memory_mb), ("max_cpu_seconds", max_cpu_seconds), ("concurrency", concurrency)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"thread {name!r}: {opt} must be an int >= 1, got {value!r}")
    attempts = backoff_attempts(backoff, f"thread {name!r} backoff")
    retries = make_retry(retry, f"thread {name!r} retry", attempts)(None)
    backoff_for = make_backoff(backoff, f"thread {name!r} backoff")
    timeout_ms = parse_duration(timeout, f"thread {name!r} timeout") if timeout is not None else None
    key, seq = ctx.next_key(name)

    async def in_process() -> Any:
        return await _in_process(ctx, key, ref, stored_input, timeout_ms, max_memory_mb, max_cpu_seconds)

    return await execute_step(
        ctx, "thread", key, name, seq, _caller_line(), in_process,
        retries=retries, backoff_for=backoff_for, timeout_ms=None, concurrency=concurrency,
    )  # fmt: skip

