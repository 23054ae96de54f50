"""Error pages: a 404 page for unknown ids and routes, a plain page for the rest (never a traceback)."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.enums import MediaType
from litestar.exceptions import HTTPException

from . import render

log = logging.getLogger("dq.web")
Req = Request[Any, Any, Any]


def _wants_html(request: Req) -> bool:
    return "text/html" in request.headers.get("accept", "") and not request.headers.get("hx-request")


def http_error(request: Req, exc: Exception) -> Response[str]:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "Internal error"
    if status >= 500:
        log.error("dq-ui: %s %s failed", request.method, request.url.path, exc_info=exc)
        detail = "Something went wrong on the server; the details are in its log."
    if status == 404 and detail in ("Not Found", ""):
        detail = f"Nothing is served at {request.url.path}."
    if not _wants_html(request):
        return Response(content=str(detail), media_type=MediaType.TEXT, status_code=status)
    heading = {404: "Not found", 403: "Not allowed", 405: "Not allowed"}.get(status, "Error")
    body = render.page(
        "not_found.html",
        status_code=status, heading=heading, message=detail,
        now=0, csrf="", read_only=False, storage_label="", nav="", stream_url=None,
    )  # fmt: skip
    return Response(content=body, media_type=MediaType.HTML, status_code=status)
