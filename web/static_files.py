"""`GET /static/<name>`: the files shipped in static/, looked up by name in a fixed table.

The table is built once from the directory listing, so a request's text never
reaches the filesystem: `%00`, `..`, a 10 kB name or anything else that is not
one of the shipped files is a plain 404, whatever the operating system would
have said about it. The files are small (htmx, the SSE extension, CSS, glue)
and are kept in memory with an ETag.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from litestar import Request, get
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.response import Response

from .render import STATIC_DIR

STATIC_PREFIX = "/static"


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


@lru_cache(maxsize=1)
def assets(root: Path = STATIC_DIR) -> dict[str, Asset]:
    """Every regular file under `root`, by its relative POSIX path."""
    table: dict[str, Asset] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        body = path.read_bytes()
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if media_type.startswith("text/") or media_type.endswith("javascript"):
            media_type += "; charset=utf-8"
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        table[path.relative_to(root).as_posix()] = Asset(body, media_type, etag)
    return table


@get(STATIC_PREFIX + "/{name:path}", name="static", include_in_schema=False)
async def static_file(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[bytes]:
    asset = assets().get(name.lstrip("/"))
    if asset is None:
        raise NotFoundException("No such static file.")
    headers = {"ETag": asset.etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(content=b"", status_code=304, headers=headers)
    return Response(content=asset.body, media_type=asset.media_type, headers=headers)
