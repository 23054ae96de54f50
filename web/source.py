"""A job's source for the dashboard: line numbers, light syntax colouring, step calls marked.

`inspect.getsourcelines` gives the handler's lines and first line; step records
carry the absolute line of each step call in the same file, so a step's line
is highlighted by number. The static step list comes from the AST: calls of
`run`, `thread`, `sleep` and `<job or pipe>.run/start/send/wait_for`.
"""

from __future__ import annotations

import ast
import inspect
import io
import keyword
import os
import textwrap
import tokenize
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from markupsafe import Markup, escape

_STEP_FUNCS = {"run": "run", "thread": "thread", "sleep": "sleep"}
_STEP_METHODS = {"run": "child", "start": "start", "send": "send", "wait_for": "wait"}
_SOFT_KW = {"self", "None", "True", "False", "await", "async"}


@dataclass(slots=True)
class StepCall:
    name: str
    kind: str
    line: int  # absolute line in the file


@dataclass(slots=True)
class SourceLine:
    no: int
    html: Markup
    steps: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Source:
    file: str
    first_line: int
    lines: list[SourceLine]
    calls: list[StepCall]

    def line_of(self, step_name: str) -> int | None:
        base = step_name.split("#", 1)[0]
        for call in self.calls:
            if call.name == base:
                return call.line
        return None


def _unwrap(fn: Callable[..., Any]) -> Callable[..., Any]:
    inner: Callable[..., Any] = inspect.unwrap(fn)
    return inner


def _colour(text: str) -> list[Markup]:
    """Colour Python tokens; returns one Markup per source line."""
    out: list[list[str]] = [[] for _ in text.splitlines()] or [[]]
    lines = text.splitlines(keepends=True)
    pos = (1, 0)
    prev_name = ""

    def emit(upto: tuple[int, int], cls: str | None = None, until: tuple[int, int] | None = None) -> None:
        nonlocal pos
        r0, c0 = pos
        r1, c1 = upto
        chunks: list[tuple[int, str]] = []
        if r0 == r1:
            chunks.append((r0, lines[r0 - 1][c0:c1]))
        else:
            chunks.append((r0, lines[r0 - 1][c0:]))
            chunks.extend((r, lines[r - 1]) for r in range(r0 + 1, r1))
            chunks.append((r1, lines[r1 - 1][:c1]))
        for r, chunk in chunks:
            piece = str(escape(chunk.rstrip("\n")))
            if piece and cls:
                piece = f'<span class="{cls}">{piece}</span>'
            if 0 < r <= len(out):
                out[r - 1].append(piece)
        pos = upto

    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type in (tokenize.ENDMARKER,) or tok.start[0] > len(lines):
                break
            emit(tok.start)
            cls = None
            if tok.type == tokenize.NAME and (keyword.iskeyword(tok.string) or tok.string in _SOFT_KW):
                cls = "tok-kw"
            elif tok.type == tokenize.NAME and prev_name in ("def", "class"):
                cls = "tok-def"
            elif tok.type == tokenize.NAME and tok.string in _STEP_FUNCS:
                cls = "tok-step"
            elif tok.type == tokenize.STRING or tok.type in _fstring_types():
                cls = "tok-str"
            elif tok.type == tokenize.COMMENT:
                cls = "tok-com"
            elif tok.type == tokenize.NUMBER:
                cls = "tok-num"
            elif tok.type == tokenize.OP and tok.string == "@":
                cls = "tok-dec"
            emit(tok.end, cls)
            if tok.type == tokenize.NAME:
                prev_name = tok.string
    except (tokenize.TokenError, IndentationError, IndexError):
        return [Markup(escape(line.rstrip("\n"))) for line in lines]
    return [Markup("".join(parts)) for parts in out]


@lru_cache(maxsize=1)
def _fstring_types() -> frozenset[int]:
    return frozenset(getattr(tokenize, n) for n in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END")
                     if hasattr(tokenize, n))  # fmt: skip


def _call_name(node: ast.Call) -> tuple[str, str] | None:
    func = node.func
    if isinstance(func, ast.Name) and func.id in _STEP_FUNCS:
        return func.id, _STEP_FUNCS[func.id]
    if isinstance(func, ast.Attribute) and func.attr in _STEP_METHODS:
        owner = func.value
        owner_name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
        if owner_name in ("asyncio", "loop", "self"):
            return None
        return f"{owner_name}.{func.attr}", _STEP_METHODS[func.attr]
    return None


def _calls(tree: ast.AST, offset: int) -> list[StepCall]:
    found: list[StepCall] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        named = _call_name(node)
        if named is None:
            continue
        label, kind = named
        if kind in ("run", "thread") and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):  # fmt: skip
            label = node.args[0].value
        elif kind == "sleep":
            label = "sleep"
        found.append(StepCall(name=label, kind=kind, line=node.lineno + offset))
    return sorted(found, key=lambda c: c.line)


@lru_cache(maxsize=256)
def _load(fn: Callable[..., Any]) -> Source | None:
    target = _unwrap(fn)
    try:
        lines, first = inspect.getsourcelines(target)
        file = inspect.getsourcefile(target) or "<unknown>"
    except (OSError, TypeError):
        return None
    return build_source(file, max(first, 1), lines)


def build_source(file: str, first: int, lines: list[str]) -> Source:
    """The annotated source from its lines (as read now, or as stored when an execution ran)."""
    text = "".join(lines)
    try:
        tree = ast.parse(textwrap.dedent(text))
        calls = _calls(tree, first - 1)
    except SyntaxError:
        calls = []
    coloured = _colour(textwrap.dedent(text))
    out = [SourceLine(no=first + i, html=coloured[i] if i < len(coloured) else Markup(""))
           for i in range(len(lines))]  # fmt: skip
    by_line: dict[int, list[str]] = {}
    for call in calls:
        by_line.setdefault(call.line, []).append(call.name)
    for sl in out:
        sl.steps = by_line.get(sl.no, [])
    return Source(file=file, first_line=first, lines=out, calls=calls)


def job_source(handler: Callable[..., Any] | None) -> Source | None:
    """The annotated source of a job's handler, or None when it has none (builtins, REPL)."""
    if handler is None:
        return None
    try:
        return _load(handler)
    except TypeError:  # unhashable callable
        return None


def short_path(path: str) -> str:
    """A source path relative to the working directory when inside it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if not rel.startswith("..") else path
