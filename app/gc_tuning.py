"""CPython's cyclic garbage collector, set for a process that hosts the engine.

A busy engine keeps thousands of executions alive at once (their tasks, coroutines,
records: ~50 container objects each while one is in flight on PostgreSQL), and a
collection walks every live object of the generations it collects. Reference
counting frees all that dq allocates the moment it is dropped (its own paths, failed
steps included, leave no cycles); the collector only has the cycles of handlers' own
code to find. With CPython's default thresholds (700, 10, 10) it walked the engine's
live objects many times a second (more than half of `dq-ui bench`'s CPU on
PostgreSQL); every 50,000 net allocations, a burst of 5,000 one-step jobs still paid
~15% of its CPU for young collections that freed nothing. `dq-ui` processes therefore:

- freeze what exists once start-up is done (modules, classes, the app): it lives as
  long as the process, and is never scanned again;
- collect the youngest generation after `YOUNG_MAX` net allocations, and let that
  number follow what collections find (`_pace`): a young collection that freed almost
  nothing (it only walked live executions) doubles it, up to `YOUNG_MAX`; one that
  freed much (handlers making cyclic garbage) halves it, down to `YOUNG_MIN`, so such
  garbage stays bounded to about that many objects after the first collection. A
  threshold the program sets itself (`gc.set_threshold`) is left as it is.

`DQ_GC=default` keeps CPython's settings (`dq-ui bench --gc default` measures them).
A process that embeds the engine can call `tune_gc()` itself after its imports.
"""

from __future__ import annotations

import gc
import os
from typing import Any

#: gen0's threshold moves between these (net allocations of container objects).
YOUNG_MIN, YOUNG_MAX = 50_000, 500_000
#: gen0 collections per gen1, gen1 collections per full collection.
OLDER = (20, 10)
#: What `tune_gc` sets (the young threshold starts at its most).
THRESHOLDS = (YOUNG_MAX, *OLDER)

#: Objects in gen0 when its collection began (read in `_pace`'s "start" call).
_scanned = [0]
#: The young threshold `tune_gc` or `_pace` set last: any other one was set by the
#: program itself (`gc.set_threshold`), and the pacing leaves it alone.
_paced = [0]


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
        _paced[0] = THRESHOLDS[0]
        if _pace not in gc.callbacks:
            gc.callbacks.append(_pace)
    return mode


def _pace(phase: str, info: dict[str, Any]) -> None:
    """After each young collection: double the young threshold if it freed under 2% of
    what it walked, halve it if it freed over a quarter (within YOUNG_MIN..YOUNG_MAX)."""
    if info["generation"] != 0:
        return
    if phase == "start":
        _scanned[0] = gc.get_count()[0]
        return
    young = gc.get_threshold()[0]
    if young != _paced[0]:  # the program set its own
        return
    freed, walked = info["collected"], _scanned[0]
    if freed * 50 < walked and young < YOUNG_MAX:
        young = min(young * 2, YOUNG_MAX)
    elif freed * 4 > walked and young > YOUNG_MIN:
        young = max(young // 2, YOUNG_MIN)
    else:
        return
    _paced[0] = young
    gc.set_threshold(young, *OLDER)
