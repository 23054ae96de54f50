"""Formatting helpers the templates use as filters: times, durations, JSON previews, payloads."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dq.engine.event_schema import EventKind

#: Payloads larger than this are never inlined whole (collapsed, with a download link).
MAX_INLINE_BYTES = 64 * 1024
_HEAD_BYTES = 1024


def to_json(value: Any, *, indent: int | None = None) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=False, default=str, sort_keys=False)


def iso(ms: int | None) -> str:
    """`2026-11-28 12:48:02` (UTC) for an epoch in ms."""
    if ms is None:
        return "—"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def clock(ms: int | None) -> str:
    """`12:48:02.314` for an epoch in ms (UTC)."""
    if ms is None:
        return "—"
    dt = datetime.fromtimestamp(ms / 1000, UTC)
    return dt.strftime("%H:%M:%S.") + f"{dt.microsecond // 1000:03d}"


def iso_input(ms: int | None) -> str:
    """The value of an `<input type=datetime-local>` (UTC, minutes)."""
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M")


def duration(ms: float | None) -> str:
    """A compact human duration: `840 ms`, `4.2 s`, `2m 05s`, `1h 02m`, `3d 4h`."""
    if ms is None:
        return "—"
    ms = max(0.0, float(ms))
    if ms < 1000:
        return f"{ms:.0f} ms"
    s = ms / 1000
    if s < 10:
        return f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    m, rs = divmod(int(s), 60)
    if m < 60:
        return f"{m}m {rs:02d}s"
    h, rm = divmod(m, 60)
    if h < 48:
        return f"{h}h {rm:02d}m"
    d, rh = divmod(h, 24)
    return f"{d}d {rh}h"


def ago(ms: int | None, now: int) -> str:
    if ms is None:
        return "—"
    s = max(0, (now - ms) // 1000)
    if s < 5:
        return "just now"
    if s < 60:
        return f"{s}s ago"
    if s < 3600:
        return f"{s // 60}m ago"
    if s < 48 * 3600:
        return f"{s // 3600}h ago"
    return f"{s // 86400}d ago"


def short_id(execution_id: str | None) -> str:
    """The last 8 characters: ULID prefixes are the creation time, so the tail tells ids apart."""
    if not execution_id:
        return ""
    return execution_id[-8:] if len(execution_id) > 8 else execution_id


def preview(value: Any, limit: int = 80) -> str:
    """One-line compact JSON, cut at `limit` characters."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_head(error: dict[str, Any] | None, limit: int = 120) -> str:
    """`ValueError: message` with the module path dropped, cut at `limit`."""
    if not error:
        return ""
    etype = str(error.get("type") or "Error").rsplit(".", 1)[-1]
    message = " ".join(str(error.get("message") or "").split())
    text = f"{etype}: {message}" if message else etype
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_type(error: dict[str, Any] | None) -> str:
    if not error:
        return ""
    return str(error.get("type") or "Error").rsplit(".", 1)[-1]


def human_size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n / 1024 / 1024:.1f} MB"


@dataclass(slots=True)
class Payload:
    """A JSON value ready to show: pretty text when small, a head and a size when not."""

    text: str
    size: int
    oversized: bool
    empty: bool

    @property
    def size_label(self) -> str:
        return human_size(self.size)


def payload(value: Any) -> Payload:
    if value is None:
        return Payload(text="null", size=4, oversized=False, empty=True)
    compact = to_json(value)
    size = len(compact.encode())
    if size > MAX_INLINE_BYTES:
        head = compact.encode()[:_HEAD_BYTES].decode(errors="ignore")
        return Payload(text=head + " …", size=size, oversized=True, empty=False)
    return Payload(text=to_json(value, indent=2), size=size, oversized=False, empty=False)


def payload_bytes(value: Any) -> bytes:
    """The whole value, for the download link."""
    return to_json(value, indent=2).encode()


def event_summary(ev_type: str, data: dict[str, Any]) -> str:
    """A one-line description of an event's data for the event log."""
    if ev_type in (EventKind.STEP_START, EventKind.STEP_SUCCESS, EventKind.STEP_FAILURE):
        parts = [str(data.get("key") or data.get("name") or "")]
        if data.get("attempt", 1) != 1:
            parts.append(f"attempt {data.get('attempt')}")
        if "duration_ms" in data:
            parts.append(duration(data["duration_ms"]))
        if ev_type == EventKind.STEP_FAILURE:
            parts.append(error_head(data.get("error"), 90))
            if data.get("will_retry"):
                parts.append("will retry")
        return " · ".join(p for p in parts if p)
    if ev_type in (EventKind.ERROR, EventKind.FAILURE):
        head = error_head(data.get("error"), 110)
        return f"attempt {data['attempt']} · {head}" if "attempt" in data else head
    if ev_type == EventKind.RETRY:
        return f"attempt {data.get('attempt')} in {duration(data.get('delay_ms'))}"
    if ev_type == EventKind.SLEEP:
        return f"{data.get('key', '')} · until {clock(data.get('until'))}"
    if ev_type == EventKind.LOG:
        return str(data.get("message", ""))
    if ev_type == EventKind.TRIGGER:
        return "input " + preview(data.get("input"), 100)
    if ev_type == EventKind.SUCCESS:
        return "output " + preview(data.get("output"), 100)
    if ev_type == EventKind.CANCEL:
        return str(data.get("reason") or "")
    if ev_type == EventKind.START:
        return f"attempt {data.get('attempt', 1)}"
    if ev_type == EventKind.WAIT:
        child = data.get("child_id")
        return f"{data.get('key', '')} · {data.get('kind', '')}" + (f" · {short_id(child)}" if child else "")
    if ev_type == EventKind.HOOK_ERROR:
        return f"{data.get('hook')} · {error_head(data.get('error'), 90)}"
    return preview(data, 120) if data else ""


_CHILD_DIGEST = re.compile(r"\([0-9a-f]{8}\)(?=#\d+$|$)")


def step_label(key: str | None) -> str:
    """A step key as people read it: a child step `transcode(3f2a9c1e)#2` shows as `transcode#2`."""
    return _CHILD_DIGEST.sub("", key) if key else ""
