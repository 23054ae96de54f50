"""The one Jinja2 environment: pages (via Litestar's template engine), blocks for htmx and SSE."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from jinja2_fragments import render_block
from markupsafe import Markup

from dq.engine.text import scrub
from dq.engine.why import brief

from . import format as fmt
from .prefix import Base

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

STATUS_ORDER = ("running", "waiting", "pending", "paused", "completed", "failed", "cancelled")


def _json_attr(value: Any) -> Markup:
    return Markup(fmt.to_json(value))


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=select_autoescape(["html", "svg"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        iso=fmt.iso,
        clock=fmt.clock,
        iso_input=fmt.iso_input,
        duration=fmt.duration,
        short=fmt.short_id,
        preview=fmt.preview,
        step_label=fmt.step_label,
        error_head=fmt.error_head,
        error_type=fmt.error_type,
        payload=fmt.payload,
        json=fmt.to_json,
        json_attr=_json_attr,
        event_summary=fmt.event_summary,
        human_size=fmt.human_size,
        q=lambda v: quote(str(v), safe=""),
        why_brief=brief,
    )
    env.globals.update(STATUS_ORDER=STATUS_ORDER, ago=fmt.ago, base=Base())
    env.globals["ui"] = env.get_template("_ui.html").module
    return env


def block(template: str, name: str, **context: Any) -> str:
    """Render one block of a template (htmx fragments and SSE payloads)."""
    return scrub(render_block(environment(), template, name, **context))


def page(template: str, **context: Any) -> str:
    """A whole page. `scrub`: storage may hold text no encoder accepts (rows written
    before inputs were checked, errors from other versions); it shows as U+FFFD."""
    return scrub(environment().get_template(template).render(**context))
