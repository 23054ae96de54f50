"""The code an execution ran: the source version its last `start` event names.

The text comes from the state record the runtime stored once per version
(`dq.engine.sources`); the current version is read from the job's file now.
Built `Source`s are kept by fingerprint: a version never changes.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dq.engine.event_schema import EventKind
from dq.engine.sources import SourceVersion, from_state, source_version, state_key
from dq.engine.storage.base import EventRecord, ExecutionRecord

from .source import Source, build_source

if TYPE_CHECKING:
    from .dashboard import Dashboard

_BUILT: OrderedDict[str, tuple[SourceVersion, Source]] = OrderedDict()


@dataclass(slots=True)
class RanSource:
    version: SourceVersion
    source: Source
    #: The version the job's file holds now (None: the job is not defined in this process).
    current: SourceVersion | None

    @property
    def changed(self) -> bool:
        return self.current is not None and self.current.fingerprint != self.version.fingerprint


def ran_fingerprint(events: Sequence[EventRecord]) -> str | None:
    for ev in reversed(events):
        if ev.type == EventKind.START and isinstance(ev.data, dict) and ev.data.get("source"):
            return str(ev.data["source"])
    return None


async def ran_source(dash: Dashboard, rec: ExecutionRecord, events: Sequence[EventRecord]) -> RanSource | None:
    fp = ran_fingerprint(events)
    if fp is None:
        return None
    built = _BUILT.get(fp)
    if built is None:
        key = state_key(rec.job_name, fp)
        version = from_state((await dash.storage.get_state([key])).get(key))
        if version is None or version.fingerprint != fp:
            return None
        built = (version, build_source(version.file, version.first_line, version.text.splitlines(keepends=True)))
        _BUILT[fp] = built
        while len(_BUILT) > 256:
            _BUILT.popitem(last=False)
    job = dash.job(rec.job_name)
    current = source_version(getattr(job, "handler", None)) if job is not None else None
    return RanSource(built[0], built[1], current)


@dataclass(slots=True)
class DiffLine:
    kind: str  # hunk | add | del | same
    old: int | None
    new: int | None
    text: str


def diff_lines(old: SourceVersion, new: SourceVersion) -> list[DiffLine]:
    """A unified diff (3 lines of context) numbered with the lines of the file."""
    a, b = old.text.splitlines(), new.text.splitlines()
    out: list[DiffLine] = []
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    for group in matcher.get_grouped_opcodes(3):
        i0, j0 = group[0][1], group[0][3]
        out.append(DiffLine("hunk", None, None, f"@@ line {old.first_line + i0} (as it ran) / line {new.first_line + j0} (now) @@"))
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                out += [DiffLine("same", old.first_line + i, new.first_line + j1 + (i - i1), a[i]) for i in range(i1, i2)]
                continue
            out += [DiffLine("del", old.first_line + i, None, a[i]) for i in range(i1, i2)]
            out += [DiffLine("add", None, new.first_line + j, b[j]) for j in range(j1, j2)]
    return out
