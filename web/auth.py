"""Token access: a `?token=` login link sets a cookie; every other request must carry it.

An ASGI middleware in front of every route (pages, fragments, actions, the
SSE stream); `/static` stays public so the login page is styled. The token is
compared in constant time and never echoed.
"""

from __future__ import annotations

import hmac
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

from litestar.types import ASGIApp, Receive, Scope, Send

from . import prefix, render

PUBLIC_PREFIXES = ("/static/", "/healthz")


def _same(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


class TokenAuth:
    def __init__(self, app: ASGIApp, token: str, cookie: str = "dq_token") -> None:
        self.app = app
        self.token = token
        self.cookie = cookie

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if str(scope["type"]) != "http" or scope["path"].startswith(tuple(prefix.url(p) for p in PUBLIC_PREFIXES)):
            await self.app(scope, receive, send)
            return
        # errors="replace": raw bytes that are not UTF-8 (in a query too) must not be a 500.
        headers = {k.decode("latin-1").lower(): v.decode(errors="replace") for k, v in scope.get("headers", [])}
        raw_query = scope.get("query_string", b"").decode(errors="replace")
        query = parse_qsl(raw_query, keep_blank_values=True, errors="replace")
        given = next((v for k, v in query if k == "token"), None)
        if given is not None:
            if _same(given, self.token):
                rest = urlencode([(k, v) for k, v in query if k != "token"])
                location = scope["path"] + (f"?{rest}" if rest else "")
                cookie = f"{self.cookie}={self.token}; Path=/; HttpOnly; SameSite=Lax"
                await _respond(send, 303, b"", [(b"location", location.encode()), (b"set-cookie", cookie.encode())])
                return
            await self._refuse(scope, send, bad=True)
            return
        jar = SimpleCookie()
        try:
            jar.load(headers.get("cookie", ""))
        except Exception:
            jar = SimpleCookie()
        morsel = jar.get(self.cookie)
        bearer = headers.get("authorization", "")
        if (morsel is not None and _same(morsel.value, self.token)) or (
            bearer.lower().startswith("bearer ") and _same(bearer[7:].strip(), self.token)
        ):
            await self.app(scope, receive, send)
            return
        await self._refuse(scope, send, bad=False)

    async def _refuse(self, scope: Scope, send: Send, *, bad: bool) -> None:
        accept = dict(scope.get("headers", [])).get(b"accept", b"").decode("latin-1")
        if scope.get("method") == "GET" and "text/html" in accept:
            body = render.page("login.html", next_path=scope["path"], bad=bad).encode()
            await _respond(send, 401, body, [(b"content-type", b"text/html; charset=utf-8")])
        else:
            await _respond(send, 401, b"dq-ui: a valid access token is required\n",
                           [(b"content-type", b"text/plain; charset=utf-8")])  # fmt: skip


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    start: Any = {"type": "http.response.start", "status": status,
                  "headers": [*headers, (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store")]}  # fmt: skip
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": False})
