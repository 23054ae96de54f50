"""The executions list's filters: URL query parameters <-> `ExecutionQuery`.

Every filter of `queue.jobs.get_all` has a parameter, so a filtered view is a
link. Values are read by `params` (ASCII digits, ranges, ids); a bad one is
reported next to the form, naming the parameter, and the page answers 400.
A job name the queue does not know is only a notice (a bookmark may outlive
a job).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlencode

from dq.engine.storage.base import STATUSES, ExecutionQuery

from . import params as p
from . import prefix

T = TypeVar("T")
PAGE_SIZE = 50
MAX_PAGE = 500
MAX_RETRIES = 1_000_000
_TIME_FIELDS = ("started_after", "started_before", "completed_after", "completed_before")
_INT_FIELDS = ("retry", "retry_lt", "retry_gt")
_Q_MAX = 500
#: A term of the filter box: runs of non-space characters and "quoted strings".
_TERM = re.compile(r'(?:[^\s"]|"(?:[^"\\]|\\.)*")+')


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")  # NaN, Infinity: searched as text


def parse_search(text: str, errors: list[str]) -> tuple[str, dict[str, Any]]:
    """The filter box: `input.user.id=7 input.path="a b.mp3" 01J9` -> ("01J9", {...}).

    An `input.<path>=<value>` term asks for that value at that path of the input;
    the value is JSON when it parses as JSON (`7`, `true`, `null`, `"7"`, `[1]`)
    and a string otherwise. Terms are ANDed; the rest is an id search."""
    subset: dict[str, Any] = {}
    rest: list[str] = []
    for term in _TERM.findall(text):
        if not term.startswith("input."):
            rest.append(term)
            continue
        path, eq, raw = term[len("input.") :].partition("=")
        keys = path.split(".")
        if not eq or not all(keys) or any('"' in k for k in keys):
            errors.append(f"{term!r}: write input.<path>=<value>, e.g. input.user.id=7")
            continue
        try:
            value: Any = json.loads(raw, parse_constant=_not_json)
        except ValueError:
            value = raw
        node = subset
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                errors.append(f"{term!r} conflicts with input.{key}={child!r}")
                break
            node = child
        else:
            if keys[-1] in node and isinstance(node[keys[-1]], dict) != isinstance(value, dict):
                errors.append(f"{term!r} conflicts with another input term")
            else:
                node[keys[-1]] = value
    return " ".join(rest), subset


@dataclass(slots=True)
class Filters:
    statuses: list[str] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)
    q: str = ""
    #: An exact idempotency key (`key=` in the URL).
    key: str = ""
    #: The time and count filters as given (for links and the form) and as parsed.
    times: dict[str, str] = field(default_factory=dict)
    ints: dict[str, str] = field(default_factory=dict)
    values: dict[str, int] = field(default_factory=dict)
    cursor: str | None = None  # show ids older than this
    before: str | None = None  # show ids newer than this (paging back)
    limit: int = PAGE_SIZE
    #: Parameters that could not be used (the page answers 400).
    errors: list[str] = field(default_factory=list)
    #: Things worth saying that are not errors (an unknown job name).
    notes: list[str] = field(default_factory=list)
    #: From `input.<path>=<value>` terms of `q` (ANDed); the other terms search ids.
    input: dict[str, Any] = field(default_factory=dict)
    id_text: str = ""

    @property
    def active(self) -> bool:
        return bool(self.statuses or self.jobs or self.q or self.key or self.times or self.ints)

    def query(self) -> ExecutionQuery:
        """The query for the filters alone (no paging)."""
        tq = iq = self.values  # times and counts, parsed when read
        return ExecutionQuery(
            statuses=self.statuses or None,
            job_names=self.jobs or None,
            id_contains=self.id_text or None,
            idempotency_key=self.key or None,
            input=self.input or None,
            started_after=tq.get("started_after"),
            started_before=tq.get("started_before"),
            completed_after=tq.get("completed_after"),
            completed_before=tq.get("completed_before"),
            retry_count=iq.get("retry"),
            retry_count_less_than=iq.get("retry_lt"),
            retry_count_greater_than=iq.get("retry_gt"),
        )

    def page_query(self) -> ExecutionQuery:
        """The query for one page: keyset pagination by id (ids are time-ordered)."""
        q = self.query()
        q.limit = self.limit + 1  # one more tells whether a next page exists
        if self.before:
            q.order, q.cursor = "oldest", self.before
        else:
            q.order, q.cursor = "newest", self.cursor
        return q

    def params(self, **override: str | None) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = [("status", s) for s in self.statuses]
        out += [("job", j) for j in self.jobs]
        if self.q:
            out.append(("q", self.q))
        if self.key:
            out.append(("key", self.key))
        out += list(self.times.items()) + list(self.ints.items())
        if self.limit != PAGE_SIZE:
            out.append(("limit", str(self.limit)))
        for key, value in override.items():
            out = [(k, v) for k, v in out if k != key]
            if value is not None:
                out.append((key, value))
        return out

    def url(self, path: str = "/executions", **override: str | None) -> str:
        """The page at `path` (under the dashboard's prefix) with these filters."""
        qs = urlencode(self.params(**override))
        return prefix.url(f"{path}?{qs}" if qs else path)


def parse_filters(params: Mapping[str, Sequence[str]], job_names: Sequence[str] = ()) -> Filters:
    """Read filters from multi-valued query parameters (`status` and `job` repeat)."""

    def many(key: str) -> list[str]:
        out: list[str] = []
        for value in params.get(key, []):
            out += [v.strip() for v in value.split(",") if v.strip()]
        return out

    f = Filters()

    def read(key: str, parse: Callable[[str, str], T]) -> T | None:
        value = p.last(params, key)
        return _parsed(f, key, value, parse) if value else None

    for s in many("status"):
        if s not in STATUSES:
            f.errors.append(str(p.BadParam("status", s, "is not a status (" + ", ".join(STATUSES) + ")").detail))
        elif s not in f.statuses:
            f.statuses.append(s)
    f.jobs = [j for j in dict.fromkeys(many("job")) if _parsed(f, "job", j, p.text) is not None]
    unknown = [j for j in f.jobs if job_names and j not in job_names]
    if unknown:
        f.notes.append("no job named " + ", ".join(repr(j) for j in unknown))
    f.q = read("q", partial(p.text, max_len=_Q_MAX)) or ""
    f.key = read("key", partial(p.text, max_len=200)) or ""
    f.id_text, f.input = parse_search(f.q, f.errors)
    for key in _TIME_FIELDS:
        ms = read(key, p.timestamp)
        if ms is not None:
            f.times[key], f.values[key] = p.last(params, key), ms
    for key in _INT_FIELDS:
        n = read(key, partial(p.integer, high=MAX_RETRIES))
        if n is not None:
            f.ints[key], f.values[key] = str(n), n
    f.cursor = read("cursor", p.ident)
    f.before = read("before", p.ident)
    f.limit = read("limit", partial(p.integer, low=1, high=MAX_PAGE)) or PAGE_SIZE
    return f


def _parsed(f: Filters, key: str, value: str, parse: Callable[[str, str], T]) -> T | None:
    """`parse(value, key)`, or None with the reason (naming `key`) added to `f.errors`."""
    try:
        return parse(value, key)
    except p.BadParam as exc:
        f.errors.append(str(exc.detail))
        return None
