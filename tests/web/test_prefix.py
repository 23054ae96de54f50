"""The dashboard served under a path (`monitoring={"endpoint": "/monitoring"}`).

A crawl from the overview follows every link of every page it reaches (and the
fragments they load): each URL the dashboard writes (href, src, action, hx-get,
hx-post, sse-connect, redirects) must start with the prefix and be answered.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest

from dq import Queue, create_job, create_memory_storage, create_pipe, create_queue, run
from dq.web import Settings

from .conftest import FAST, Client, csrf_of, open_client
from .sample import JOBS

PREFIX = "/monitoring"
URL_ATTRS = ("href", "src", "action", "hx-get", "hx-post", "sse-connect")
signals = create_pipe(name="signals")


@create_job(name="nightly", cron="0 3 * * *")
async def nightly(data: Any) -> int:
    return await run("count", lambda: 1)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in URL_ATTRS and value is not None:
                self.found.append((name, value))


def links(html: str) -> list[tuple[str, str]]:
    parser = _Links()
    parser.feed(html)
    # Fragments travel inside <template> in SSE payloads and some responses: the
    # parser sees their tags as text no differently, so this covers them too.
    return parser.found


@pytest.fixture
def prefixed() -> Iterator[Client]:
    queue: Queue = create_queue(jobs=[*JOBS, nightly], pipes=[signals], storage=create_memory_storage(),
                                shutdown_grace="200ms")  # fmt: skip
    with open_client(queue, Settings(base=PREFIX, **FAST)) as client:  # type: ignore[arg-type]
        yield client


def _own(url: str) -> bool:
    return not url.startswith(("#", "http://", "https://", "mailto:", "javascript:", "data:"))


def test_every_url_of_every_page_is_under_the_prefix_and_answered(prefixed: Client) -> None:
    c = prefixed
    for job, data in (("greet", {"name": "ada"}), ("broken", None), ("parent", None), ("big", None)):
        c.run(job, data)
    c.start("slow")  # waiting: a sleeping execution
    seen: set[str] = set()
    todo = [PREFIX, PREFIX + "/"]
    checked: dict[str, int] = {}
    answered: dict[str, int] = {}
    while todo and len(seen) < 400:
        page = todo.pop()
        if page in seen:
            continue
        seen.add(page)
        r = c.get(page, headers={"accept": "text/html"})
        assert r.status_code != 404, (page, r.status_code)
        if "text/html" not in r.headers.get("content-type", ""):
            continue
        for attr, raw in links(r.text):
            if not _own(raw):
                continue
            url = urljoin("http://127.0.0.1:8000" + page, raw)
            path = urlsplit(url).path
            assert path == PREFIX or path.startswith(PREFIX + "/"), f"{attr}={raw!r} on {page}"
            target = path + ("?" + urlsplit(url).query if urlsplit(url).query else "")
            checked[attr] = checked.get(attr, 0) + 1
            if target in answered:
                continue
            if attr == "sse-connect" or path.endswith("/live"):
                # An endless stream: HEAD is refused (405) by the stream's own route, not 404.
                status = c.head(target).status_code
            elif attr in ("hx-get", "href", "src"):
                status = c.get(target, headers={"accept": "text/html"}).status_code
                if attr == "href" and "/payload/" not in path and "/step-output" not in path:
                    todo.append(target)
            else:  # forms and hx-post: the route exists (a GET is 405), nothing is changed
                status = c.get(target).status_code
                assert status == 405 or status < 400, (attr, target, status)
            assert status != 404, f"{attr}={raw!r} on {page} answered 404"
            answered[target] = status
    names = {p.split("?")[0].removeprefix(PREFIX).split("/")[1] if p != PREFIX else "" for p in seen}
    assert {"", "executions", "jobs", "schedules", "pipes", "workers"} <= names, names
    assert {"href", "src", "action", "hx-post", "sse-connect"} <= set(checked), checked


def test_redirects_and_actions_stay_under_the_prefix(prefixed: Client) -> None:
    c = prefixed
    eid = c.run("greet", {"name": "ada"})
    r = c.get(f"{PREFIX}/go", params={"id": eid}, follow_redirects=False)
    assert r.status_code in (301, 302, 303, 307) and r.headers["location"] == f"{PREFIX}/executions/{eid}"
    token = csrf_of(c.get(f"{PREFIX}/jobs").text)
    r = c.post(f"{PREFIX}/jobs/greet/start", data={"input": '{"name": "bob"}'}, headers={"x-csrftoken": token},
               follow_redirects=False)  # fmt: skip
    assert r.status_code in (302, 303) and r.headers["location"].startswith(f"{PREFIX}/executions/"), r.headers
    r = c.post(f"{PREFIX}/schedules/nightly/pause", headers={"x-csrftoken": token}, follow_redirects=False)
    assert r.headers["location"] == f"{PREFIX}/schedules"
    page = c.get(f"{PREFIX}/executions/{eid}").text
    assert f'data-base="{PREFIX}"' in page and f'src="{PREFIX}/static/dq.js"' in page
    assert re.search(rf'sse-connect="{PREFIX}/live\?', page)
    # Outside the prefix nothing of the dashboard is served.
    assert c.get("/executions").status_code == 404
    assert c.get("/static/dq.css").status_code == 404
    assert c.get(f"{PREFIX}/static/dq.css").status_code == 200


def test_a_bad_prefix_is_refused_naming_it() -> None:
    from dq.app import create_app

    queue = create_queue(jobs=JOBS, storage=create_memory_storage())
    with pytest.raises(ValueError, match="'/mon itoring'"):
        create_app(queue, settings=Settings(base="/mon itoring"))
