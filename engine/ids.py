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
_HIGH_SHIFTS = range(80, -1, -10)
#: The previous id's ms and random part, and its first 18 characters (the ms and the
#: random part's high 40 bits) with the number they encode: ids made in the same
#: millisecond only increment the random part, so those are encoded once.
_last: list[int] = [0, 0, -1]
_prefix = [""]
# Seeded from the OS so that processes never share a sequence (ids are not secrets).
_random = random.Random(int.from_bytes(os.urandom(16), "big"))


def new_id() -> str:
    ms = time.time_ns() // 1_000_000
    last = _last
    if ms <= last[0]:
        ms, rand = last[0], last[1] + 1
    else:
        rand = _random.getrandbits(79)  # 80 bits, with room to increment
    last[0], last[1] = ms, rand
    high = ms << 40 | rand >> 40  # the id's number (ms << 80 | rand) without its low 40 bits
    if high != last[2]:
        last[2] = high
        _prefix[0] = "".join([_PAIRS[(high >> shift) & 1023] for shift in _HIGH_SHIFTS])
    low = rand & 0xFF_FFFF_FFFF
    return _prefix[0] + _PAIRS[low >> 30] + _PAIRS[low >> 20 & 1023] + _PAIRS[low >> 10 & 1023] + _PAIRS[low & 1023]


def now_ms() -> int:
    """The engine's time (clock.py: wall time unless a test drives it)."""
    driven = clock.driven
    return time.time_ns() // 1_000_000 if driven is None else driven.now_ms()
