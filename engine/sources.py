"""Source versions: which code each execution ran.

A job's version is a fingerprint of its handler's source (file, first line and
text: step lines are absolute line numbers in that file, so a shift counts as
a change). Each process computes it once per job, the first time one of its
executions starts, and stores the text once per version under the state key
`source:<job>:<fingerprint>`; every `start` event carries the fingerprint. The
dashboard then shows an old execution the code it ran, and whether the code
has changed since.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .ids import now_ms
from .storage.base import Batch


@dataclass(frozen=True, slots=True)
class SourceVersion:
    fingerprint: str
    file: str
    first_line: int
    text: str

    def as_state(self) -> dict[str, Any]:
        return {"file": self.file, "first_line": self.first_line, "text": self.text, "at": now_ms()}


def state_key(job_name: str, fingerprint: str) -> str:
    return f"source:{job_name}:{fingerprint}"


def source_version(handler: Callable[..., Any] | None) -> SourceVersion | None:
    """The handler's source as its file holds it now (None: no source, e.g. a builtin)."""
    if handler is None:
        return None
    try:
        target = inspect.unwrap(handler)
        lines, first = inspect.getsourcelines(target)
        file = inspect.getsourcefile(target) or "<unknown>"
    except (OSError, TypeError):
        return None
    return version_of(file, max(first, 1), "".join(lines))


def version_of(file: str, first_line: int, text: str) -> SourceVersion:
    digest = hashlib.sha256(f"{file}\n{first_line}\n{text}".encode()).hexdigest()[:16]
    return SourceVersion(digest, file, first_line, text)


def from_state(value: Any) -> SourceVersion | None:
    if not isinstance(value, dict) or not isinstance(value.get("text"), str):
        return None
    return version_of(str(value.get("file", "")), int(value.get("first_line") or 1), value["text"])


class SourceVersions:
    """This process's version of each job, stored the first time it is asked for."""

    def __init__(self, send: Callable[[Batch], None]) -> None:
        self._send = send
        self._known: dict[str, str | None] = {}

    def fingerprint(self, job: Any) -> str | None:
        if job.name in self._known:
            return self._known[job.name]
        version = source_version(getattr(job, "handler", None))
        fp = version.fingerprint if version is not None else None
        self._known[job.name] = fp
        if version is not None:
            # Same content under the same key from every process: a plain write is idempotent.
            self._send(Batch(state={state_key(job.name, version.fingerprint): version.as_state()}))
        return fp
