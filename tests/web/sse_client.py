"""A small SSE reader for the tests (httpx streaming against a live uvicorn)."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

import httpx


@dataclass
class Message:
    id: str | None
    event: str | None
    data: str

    @property
    def event_seqs(self) -> list[int]:
        """Seqs of the event-log rows this message appends."""
        return [int(s) for s in re.findall(r'<tr id="ev-(\d+)"', self.data)]


@dataclass
class Reader:
    messages: list[Message] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)

    async def read(self, res: httpx.Response, *, until: float, stop_when: object = None) -> None:
        """Read until the deadline (loop time) or until `stop_when(reader)` is true."""
        cur: dict[str, str] = {}
        data: list[str] = []
        lines = res.aiter_lines()
        loop = asyncio.get_running_loop()
        while loop.time() < until:
            try:
                line = await asyncio.wait_for(lines.__anext__(), max(0.01, until - loop.time()))
            except (TimeoutError, StopAsyncIteration):
                return
            if line.startswith(":"):
                self.comments.append(line)
            elif line == "":
                if data or cur:
                    self.messages.append(Message(cur.get("id"), cur.get("event"), "\n".join(data)))
                    cur, data = {}, []
                    if callable(stop_when) and stop_when(self):
                        return
            else:
                key, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if key == "data":
                    data.append(value)
                else:
                    cur[key] = value

    @property
    def event_seqs(self) -> list[int]:
        return [s for m in self.messages for s in m.event_seqs]

    @property
    def last_id(self) -> str | None:
        ids = [m.id for m in self.messages if m.id]
        return ids[-1] if ids else None

    def text(self) -> str:
        return "\n".join(m.data for m in self.messages)
