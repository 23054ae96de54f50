"""The dashboard's settings: access token, read-only mode, live-update pacing."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Settings:
    #: When set, every page, fragment, action and stream requires it (cookie after `?token=`).
    token: str | None = None
    #: Hide the lifecycle controls and the start form, and refuse their POSTs.
    read_only: bool = False
    #: The address the server listens on: its Host is accepted (any IP for 0.0.0.0 / ::).
    bound_host: str | None = None
    #: More Host names to answer besides loopback and `bound_host`: a name, `.domain`
    #: (it and its subdomains) or `*` (no Host check). See web/gate.py.
    allowed_hosts: tuple[str, ...] = ()
    #: Seconds between SSE keep-alive comments.
    ping_s: float = 15.0
    #: The hub coalesces bus events into one render per tick.
    tick_s: float = 0.25
    #: Waterfalls of watched active executions are re-rendered at least this often (clocks move).
    refresh_s: float = 2.0
    #: The overview's counts and recent executions are re-read at most this often (the
    #: last change always shows: a skipped tick leaves them due for the next one).
    overview_counts_s: float = 1.0
    #: Overview figures that cost a scan (throughput, failure groups) are refreshed this often.
    overview_refresh_s: float = 5.0
    #: Ticks a reconnecting client can catch up from without a full resync.
    replay_ticks: int = 2000
    #: Messages queued for one slow client before it is dropped (it reconnects and resyncs).
    client_queue: int = 500
    #: The path the dashboard is served under ('' for /, or e.g. '/monitoring'): see web/prefix.py.
    base: str = ""
    #: Signs CSRF tokens; random per process unless given.
    csrf_secret: str = field(default_factory=lambda: secrets.token_hex(32))

    @property
    def csrf_cookie(self) -> str:
        """Per-secret cookie name: a cookie signed by another process's secret is simply not read."""
        return "dq_csrf_" + hashlib.sha256(self.csrf_secret.encode()).hexdigest()[:10]

    @property
    def token_cookie(self) -> str:
        return "dq_token"
