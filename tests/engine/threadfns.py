"""Functions the thread() tests run in worker processes (importable by name)."""

from __future__ import annotations

import os
import time
from typing import Any


def palette(data: dict[str, Any], ctx: Any) -> dict[str, Any]:
    ctx.logger("extracting colours of", data["path"])
    return {"colours": ["#112233", "#445566"], "pid": os.getpid()}


def hog_memory(data: Any, ctx: Any) -> int:
    blob = bytearray(512 * 1024 * 1024)
    return len(blob)


def spin(data: Any, ctx: Any) -> int:
    n = 0
    end = time.monotonic() + 30
    while time.monotonic() < end:
        n += 1
    return n


def nap(data: Any, ctx: Any) -> None:
    time.sleep(30)


def fail(data: Any, ctx: Any) -> None:
    raise LookupError(f"no such cover: {data}")


def whoami(data: Any, ctx: Any) -> int:
    return os.getpid()


def burn(seconds: float, ctx: Any) -> int:
    """Use `seconds` of CPU time, then return the process id."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    return os.getpid()


def hold(seconds: float, ctx: Any) -> list[float]:
    start = time.monotonic()
    time.sleep(seconds)
    return [start, time.monotonic()]
