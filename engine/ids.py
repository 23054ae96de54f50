"""Time-ordered ids (ULID layout: 48-bit ms time + 80 random bits, Crockford base32).

Monotonic within a process: ids made in the same millisecond increment the
random part, so "newest first" by id is creation order.
"""

from __future__ import annotations

import os
import random
import time

from . import clock

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two characters per 10 bits: 13 lookups per id instead of 26 shifts and appends.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_SHIFTS = range(120, -1, -10)
_last = [0, 0]  # ms, random part of the previous id
# Seeded from the OS so that processes never share a sequence (ids are not secrets).
_random = random.Random(int.from_bytes(os.urandom(16), "big"))


def new_id() -> str:
    ms = time.time_ns() // 1_000_000
    if ms <= _last[0]:
        ms, rand = _last[0], _last[1] + 1
    else:
        rand = _random.getrandbits(79)  # 80 bits, with room to increment
    _last[0], _last[1] = ms, rand
    value = ms << 80 | rand
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


def now_ms() -> int:
    """The engine's time (clock.py: wall time unless a test drives it)."""
    driven = clock.driven
    return time.time_ns() // 1_000_000 if driven is None else driven.now_ms()
