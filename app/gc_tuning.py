"""CPython's cyclic garbage collector, set for a process that hosts the engine.

A busy engine keeps thousands of executions alive at once (their tasks, coroutines,
records), and with CPython's default thresholds (700, 10, 10) the collector then
walks all of them, and every module and class loaded, many times a second. Measured
with `dq-ui bench` (5,000 one-step jobs on PostgreSQL): full collections took more
than half of the process's CPU time. Reference counting frees almost everything dq
allocates the moment it is dropped; the collector only has reference cycles to find,
so it can run far less often. `dq-ui` processes therefore:

- freeze what exists once start-up is done (modules, classes, the app): it lives as
  long as the process, and is never scanned again;
- collect the youngest generation every 50,000 net allocations instead of 700.

`DQ_GC=default` keeps CPython's settings (`dq-ui bench --gc default` measures them).
A process that embeds the engine can call `tune_gc()` itself after its imports.
"""

from __future__ import annotations

import gc
import os

#: gen0 allocations, gen0 collections per gen1, gen1 collections per full collection.
THRESHOLDS = (50_000, 20, 10)


def gc_mode(mode: str | None = None) -> str:
    """`mode`, else $DQ_GC, else "tuned"; a ValueError names any other value."""
    mode = mode or os.environ.get("DQ_GC") or "tuned"
    if mode not in ("tuned", "default"):
        raise ValueError(f"garbage collector mode: expected 'tuned' or 'default', got {mode!r}")
    return mode


def tune_gc(mode: str | None = None) -> str:
    """Apply `gc_mode(mode)`; returns it."""
    mode = gc_mode(mode)
    if mode == "tuned":
        gc.collect()  # leave no garbage in what is frozen
        gc.freeze()
        gc.set_threshold(*THRESHOLDS)
    return mode
