"""Error pages: a 404 page for unknown ids and routes, a plain page for the rest (never a traceback)."""

from __future__ import annotations

import logging
import re
from typing import Any

from litestar import Request, Response
from litestar.enums import MediaType
from litestar.exceptions import HTTPException

from dq.engine.text import scrub

from . import render

log = logging.getLogger("dq.web")
Req = Request[Any, Any, Any]

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def printable(text: str, limit: int = 300) -> str:
    """Request-derived text for a log line: control characters (a `%0a` in a path would
    start a forged line) and surrogates as escapes, and a bounded length."""
    text = text if len(text) <= limit else text[:limit] + "…"
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace").decode("ascii"), text)


def _wants_html(request: Req) -> bool:
    return "text/html" in request.headers.get("accept", "") and not request.headers.get("hx-request")


def http_error(request: Req, exc: Exception) -> Response[str]:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "Internal error"
    if status >= 500:
        log.error("dq-ui: %s %s failed", printable(request.method), printable(request.url.path), exc_info=exc)
        detail = "Something went wrong on the server; the details are in its log."
    if status == 404 and detail in ("Not Found", ""):
        detail = f"Nothing is served at {request.url.path}."
    detail = scrub(str(detail))
    if not _wants_html(request):
        return Response(content=detail, media_type=MediaType.TEXT, status_code=status)
    heading = {404: "Not found", 403: "Not allowed", 405: "Not allowed"}.get(status, "Error")
    body = render.page(
        "not_found.html",
        status_code=status, heading=heading, message=detail,
        now=0, csrf="", read_only=False, storage_label="", nav="", stream_url=None,
    )  # fmt: skip
    return Response(content=body, media_type=MediaType.HTML, status_code=status)
