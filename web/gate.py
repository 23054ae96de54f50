"""The gate in front of the router: Host and Origin checks, and HEAD for every GET route.

DNS rebinding: a page on `evil.example` whose name the attacker re-points to
127.0.0.1 talks to the dashboard as a same-origin page would, with
`Host: evil.example`. Refusing Host names the server was not started for
stops it from reading anything; refusing state-changing requests whose
`Origin` (or, without one, `Referer`) is not this very host stops a foreign
page from acting even where the Host is shared. Both checks apply with and
without a token: the token stops strangers, the gate stops their pages.

It wraps Litestar's router (`app.asgi_handler`) rather than being a route
middleware, so it also covers 404s, 405s and static files.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from .errors import printable

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "127.0.0.1", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ALLOWED_HOSTS_ENV = "DQ_UI_ALLOWED_HOSTS"


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def split_host(value: str) -> str | None:
    """The lower-case name of a Host header (`name`, `name:port`, `[v6]:port`), or None
    when it is not one."""
    value = value.strip().lower()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit() and rest[1:].isascii())):
            return None
        return name if _ip(name) is not None else None
    name, sep, port = value.partition(":")
    if sep and not (port.isascii() and port.isdigit()):
        return None
    name = name.rstrip(".")
    if not name or not all(c.isascii() and (c.isalnum() or c in "-._") for c in name):
        return None
    return name


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """Which Host names the dashboard answers.

    `bound` is the address the server listens on; a wildcard (0.0.0.0, ::) means
    "every address of this machine", so any IP literal is accepted (a rebinding
    attack needs a DNS name). `allowed` adds names (`dq.example.com`), suffixes
    (`.example.com`: that domain and its subdomains) or `*` (no Host check).
    """

    bound: str | None = None
    allowed: tuple[str, ...] = ()

    def accepts(self, name: str) -> bool:
        if name in LOOPBACK_NAMES or "*" in self.allowed:
            return True
        ip = _ip(name)
        if ip is not None and ip.is_loopback:
            return True
        bound = (self.bound or "").strip("[]").lower()
        if bound and name == bound:
            return True
        bound_ip = _ip(bound) if bound else None
        if ip is not None and bound_ip is not None and bound_ip.is_unspecified:
            return True  # bound to every address: any IP literal names this machine, no DNS involved
        for entry in self.allowed:
            entry = entry.strip().lower().rstrip(".")
            if name == entry or (entry.startswith(".") and (name == entry[1:] or name.endswith(entry))):
                return True
        return False


def parse_allowed(values: Iterable[str]) -> tuple[str, ...]:
    """`--allowed-host` values and the comma-separated environment variable, as one tuple."""
    out: list[str] = []
    for value in values:
        out += [v.strip().lower() for v in value.split(",") if v.strip()]
    return tuple(dict.fromkeys(out))


class Gate:
    """ASGI wrapper: Host check, Origin/Referer check for unsafe methods, HEAD as GET."""

    def __init__(
        self, app: ASGIApp, policy: HostPolicy, *, get_only: Iterable[str] = (), machine_api: bool = False
    ) -> None:
        self.app = app
        self.policy = policy
        self.get_only = frozenset(get_only)
        #: An API for programs (the orchestration node's): a request with neither Origin
        #: nor Referer comes from no browser page and passes; a foreign one is refused.
        self.machine_api = machine_api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = str(scope["type"])
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        host_value = headers.get("host", "")
        name = split_host(host_value)
        websocket = kind == "websocket"
        if name is None or not self.policy.accepts(name):
            await _refuse(send, 400, _host_message(host_value), websocket=websocket)
            return
        method = str(scope.get("method", "GET"))
        if method not in SAFE_METHODS or websocket:  # a websocket handshake is a GET any page can make
            why = _cross_origin(headers, host_value)
            if why and not (self.machine_api and "origin" not in headers and "referer" not in headers):
                await _refuse(send, 403, f"dq-ui: refused: {why}\n", websocket=websocket)
                return
        if method == "HEAD" and scope["path"] not in self.get_only:
            as_get: Any = {**scope, "method": "GET"}
            await self.app(as_get, receive, _without_body(send))
            return
        await self.app(scope, receive, send)


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}


def _host_message(value: str) -> str:
    if not value:
        return "dq-ui: a Host header is required\n"
    shown = printable(value, 100)
    allow = split_host(value) or shown
    return (
        f"dq-ui: Host {shown!r} is not allowed (DNS rebinding protection); "
        f"to serve it, start dq-ui serve with --allowed-host {allow} (or set {ALLOWED_HOSTS_ENV})\n"
    )


def _same_origin(url: str, host_value: str) -> bool:
    try:
        parts = urlsplit(url)
        netloc, scheme = parts.netloc.lower(), parts.scheme.lower()
    except ValueError:
        return False
    if scheme not in ("http", "https") or not netloc or "@" in netloc:
        return False
    default = ":443" if scheme == "https" else ":80"
    host = host_value.strip().lower()
    return netloc.removesuffix(default) == host.removesuffix(default)


def _cross_origin(headers: dict[str, str], host_value: str) -> str:
    """Why a state-changing request is refused ("" when it comes from this dashboard)."""
    origin = headers.get("origin")
    if origin is not None:
        if _same_origin(origin, host_value):
            return ""
        return f"Origin {printable(origin, 100)!r} is not this dashboard"
    referer = headers.get("referer")
    if referer is not None:
        if _same_origin(referer, host_value):
            return ""
        return "Referer is not this dashboard"
    return "a state-changing request needs an Origin or Referer header from this dashboard"


async def _refuse(send: Send, status: int, text: str, *, websocket: bool = False) -> None:
    if websocket:
        await send({"type": "websocket.close", "code": 1008, "reason": text.strip()[:120]})
        return
    body = text.encode("utf-8", "backslashreplace")
    start: Any = {"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"),
    ]}  # fmt: skip
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _without_body(send: Send) -> Send:
    """The GET response's status and headers (Content-Length included), no body: HEAD."""

    async def head_send(message: Message) -> None:
        if message["type"] == "http.response.body":
            if message.get("more_body", False):
                return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await send(message)

    return head_send
