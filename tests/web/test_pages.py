"""Every page and fragment renders, with filters, pagination, 404s and oversized payloads."""

from __future__ import annotations

import html as htmllib
import re
import time

from .conftest import Client

HTML = {"accept": "text/html"}


def text(html: str) -> str:
    """The page's text, tags dropped (the source view colours tokens with spans)."""
    return htmllib.unescape(re.sub(r"<[^>]+>", "", html))


def test_overview_shows_counts_throughput_failures_and_recent(client: Client) -> None:
    ok = client.run("greet", {"name": "ada"})
    bad = client.run("broken")
    page = client.get("/", headers=HTML)
    assert page.status_code == 200
    html = page.text
    assert 'id="counts"' in html and 'data-status="completed"' in html
    assert "<svg" in html and "polyline" in html  # the throughput sparkline
    assert "ValueError" in html and "boom: the step failed" in html  # a failure group
    assert "/jobs/broken?line=" in html and ">explode<" in html  # with its step and source line
    assert ok[-8:] in html and bad[-8:] in html
    assert "/live?page=overview" in html


def test_executions_list_filters_and_rows(client: Client) -> None:
    ok = client.run("greet", {"name": "grace"})
    bad = client.run("broken")
    page = (client.get("/executions", headers=HTML)).text
    assert f'id="row-{ok}"' in page and f'id="row-{bad}"' in page
    assert "grace" in page  # input preview
    assert "boom: the step failed" in page  # error head
    failed = (client.get("/executions?status=failed")).text
    assert f'id="row-{bad}"' in failed and f'id="row-{ok}"' not in failed
    both = (client.get("/executions?status=failed&status=completed")).text
    assert f'id="row-{bad}"' in both and f'id="row-{ok}"' in both
    by_job = (client.get("/executions?job=greet")).text
    assert f'id="row-{ok}"' in by_job and f'id="row-{bad}"' not in by_job
    by_id = (client.get(f"/executions?q={ok[-6:].lower()}")).text
    assert f'id="row-{ok}"' in by_id and f'id="row-{bad}"' not in by_id
    future = (client.get("/executions?started_after=2999-01-01T00:00")).text
    assert f'id="row-{ok}"' not in future
    past = (client.get("/executions?started_after=2000-01-01T00:00&completed_before=2999-01-01")).text
    assert f'id="row-{ok}"' in past
    retried = (client.get("/executions?retry_gt=0")).text
    assert f'id="row-{ok}"' not in retried
    none_retried = (client.get("/executions?retry=0&retry_lt=1")).text
    assert f'id="row-{ok}"' in none_retried


def test_bad_filter_values_are_reported_next_to_the_form_with_a_400(client: Client) -> None:
    page = client.get("/executions?status=bogus&started_after=yesterday&retry=many&job=nope")
    assert page.status_code == 400
    assert "status: &#39;bogus&#39; is not a status" in page.text
    assert "started_after: &#39;yesterday&#39; is not a date/time" in page.text
    assert "retry: &#39;many&#39; is not a whole number" in page.text
    assert 'id="filters"' in page.text  # the page and its form, not a bare error
    # an unknown job name is a notice, not an error: a bookmark may outlive a job
    notice = client.get("/executions?job=nope")
    assert notice.status_code == 200 and "no job named" in notice.text


def test_cursor_pagination_walks_older_and_newer(client: Client) -> None:
    ids = [client.start("big") for _ in range(7)]
    newest_first = list(reversed(ids))
    first = (client.get("/executions?job=big&limit=3")).text
    assert all(f'id="row-{i}"' in first for i in newest_first[:3])
    assert f"cursor={newest_first[2]}" in first
    second = (client.get(f"/executions?job=big&limit=3&cursor={newest_first[2]}")).text
    assert all(f'id="row-{i}"' in second for i in newest_first[3:6])
    assert f'id="row-{newest_first[0]}"' not in second
    assert f"before={newest_first[3]}" in second
    back = (client.get(f"/executions?job=big&limit=3&before={newest_first[3]}")).text
    assert all(f'id="row-{i}"' in back for i in newest_first[:3])


def test_execution_page_header_waterfall_source_and_events(client: Client) -> None:
    eid = client.run("greet", {"name": "lin"})
    page = (client.get(f"/executions/{eid}", headers=HTML)).text
    assert 'id="exec-head"' in page and "completed" in page and "HELLO LIN" in page
    assert 'data-key="hello"' in page and 'data-key="shout"' in page and 'data-key="sleep"' in page
    assert 'class="seg s-completed' in page and "left:" in page and "width:" in page
    assert "async def greet" in text(page)  # the job's source
    assert "/live?page=execution" in page and eid in page
    events = (client.get(f"/executions/{eid}?tab=events")).text
    assert 'id="event-rows"' in events
    for kind in ("trigger", "start", "step_start", "step_success", "sleep", "wake", "success"):
        assert f"t-{kind}" in events


def test_step_panel_highlights_the_step_line(client: Client) -> None:
    eid = client.run("greet", {"name": "kay"})
    steps = client.call(client.queue.storage.get_steps, eid)
    shout = next(s for s in steps if s.key == "shout")
    assert shout.line is not None
    for url in (f"/executions/{eid}?step=shout", f"/executions/{eid}/step?key=shout"):
        html = (client.get(url)).text
        assert f'class="ln step hl" id="L{shout.line}"' in html
        assert html.count(" hl\"") == 1
        assert "HELLO KAY" in html  # the step's output


def test_step_attempts_and_error_in_panel(client: Client) -> None:
    eid = client.run("flaky", {"name": "retry-me"})
    html = (client.get(f"/executions/{eid}/step?key=call")).text
    assert "ConnectionError" in html and "first call fails" in html  # the failed attempt
    assert html.count('title="step attempt') == 2
    wf = (client.get(f"/executions/{eid}/waterfall")).text
    assert "s-retrying" in wf and "s-completed" in wf and "backoff" in wf


def test_child_executions_are_linked_both_ways(client: Client) -> None:
    pid = client.run("parent")
    children = client.call(lambda: client.queue.jobs.get_all(parent_id=pid))
    assert len(children) == 1
    cid = children[0].id
    parent_page = (client.get(f"/executions/{pid}")).text
    assert f'id="mini-{cid}"' in parent_page  # the children table
    assert f'id="child-{cid}"' in parent_page  # the expandable child row
    child_page = (client.get(f"/executions/{cid}")).text
    assert f'href="/executions/{pid}"' in child_page
    nested = (client.get(f"/executions/{cid}/waterfall")).text
    assert 'data-key="hello"' in nested


def test_unknown_ids_and_routes_get_a_404_page(client: Client) -> None:
    for url in ("/executions/NOSUCHID", "/executions/NOSUCHID/waterfall", "/jobs/nosuchjob", "/nowhere"):
        page = client.get(url, headers=HTML)
        assert page.status_code == 404, url
        assert "Not found" in page.text and "Traceback" not in page.text
    frag = client.get("/executions/NOSUCHID/step?key=x")
    assert frag.status_code == 404 and "NOSUCHID" in frag.text


def test_oversized_payloads_are_collapsed_with_a_download(client: Client) -> None:
    eid = client.run("big")
    page = (client.get(f"/executions/{eid}")).text
    assert "too large to show" in page and f"/executions/{eid}/payload/output" in page
    assert "x" * 70_000 not in page and len(page) < 60_000
    panel = (client.get(f"/executions/{eid}/step?key=make")).text
    assert "too large to show" in panel and "x" * 70_000 not in panel
    full = client.get(f"/executions/{eid}/payload/output")
    assert full.status_code == 200 and "attachment" in full.headers["content-disposition"]
    assert full.json() == {"blob": "x" * 70_000}
    step_out = client.get(f"/executions/{eid}/step-output?key=make")
    assert step_out.json() == {"blob": "x" * 70_000}
    assert (client.get(f"/executions/{eid}/payload/secrets")).status_code == 404
    assert (client.get(f"/executions/{eid}/step-output?key=nope")).status_code == 404


def test_jobs_list_and_job_page(client: Client) -> None:
    client.run("greet", {"name": "a"})
    client.run("broken")
    jobs = (client.get("/jobs")).text
    for name in ("greet", "flaky", "broken", "slow", "big", "parent"):
        assert f'href="/jobs/{name}"' in jobs
    assert "100.0%" in jobs  # broken's failure rate
    job = (client.get("/jobs/greet")).text
    assert "async def greet" in text(job) and "Start an execution" in job
    assert "Name {name: str}" in job  # the input hint
    assert "retry" in job and "timeout" in job  # options
    assert 'class="kind k-run">run</span><span class="mono">hello' in job  # the step list
    assert "p50 duration" in job


def test_go_to_box(client: Client) -> None:
    eid = client.run("big")
    exact = client.get(f"/go?id={eid}", follow_redirects=False)
    assert exact.status_code in (301, 302, 303, 307) and exact.headers["location"] == f"/executions/{eid}"
    part = client.get(f"/go?id={eid[-7:]}", follow_redirects=False)
    assert part.headers["location"] == f"/executions/{eid}"
    miss = client.get("/go?id=zzzz", follow_redirects=False)
    assert miss.headers["location"] == "/executions?q=zzzz"


def test_static_assets_are_served_locally(client: Client) -> None:
    for name in ("htmx.min.js", "htmx-ext-sse.min.js", "dq.css", "dq.js"):
        res = client.get(f"/static/{name}")
        assert res.status_code == 200 and len(res.content) > 500, name
    page = (client.get("/")).text
    assert "cdn" not in page.lower() and "https://" not in page


def test_a_long_sleep_shows_a_countdown_and_why_it_waits(client: Client) -> None:
    eid = client.start("slow")
    client.settle(eid, statuses=frozenset({"waiting"}))
    page = client.get(f"/executions/{eid}").text
    assert 'class="countdown" data-until="' in page  # the sleep row counts down (static/dq.js)
    assert "Sleeping" in page and "wakes at" in page  # the wait note
    assert 'class="seg s-waiting' in page
    row = client.get("/executions?status=waiting").text
    assert f'id="row-{eid}"' in row and '<td class="step">sleep' in row  # its current step


def test_a_running_execution_shows_the_step_it_is_in(client: Client) -> None:
    # Storage writes current_step when an execution suspends or ends, not at each
    # step: for a running execution the pages take it from its events and steps,
    # not from a value stored when it last suspended.
    eid = client.start("hold")

    async def lifecycle(action: str) -> None:
        execution = await client.queue.jobs.get(eid)
        assert execution is not None
        await getattr(execution, action)()

    client.call(lifecycle, "pause")
    assert client.settle(eid, statuses=frozenset({"paused"})) == "paused"
    stored = client.call(client.queue.storage.get_execution, eid)
    assert stored is not None and stored.current_step in ("first", "gate")
    client.call(lifecycle, "resume")
    row = ""
    deadline = time.monotonic() + 10
    while "holding" not in row and time.monotonic() < deadline:
        page = client.get("/executions", headers=HTML).text
        found = re.search(rf'<tr[^>]*id="row-{eid}".*?</tr>', page, re.S)
        row = found.group(0) if found else ""
        time.sleep(0.05)
    assert "holding" in row, row
    detail = text(client.get(f"/executions/{eid}").text)
    assert re.search(r"current step\s*holding", detail), detail[:2000]
    client.call(lifecycle, "cancel")
    assert client.settle(eid) == "cancelled"
    stored = client.call(client.queue.storage.get_execution, eid)
    assert stored is not None and stored.current_step == "holding"


def test_the_idempotency_key_is_shown_and_searchable(client: Client) -> None:
    keyed = client.call(lambda: client.queue.jobs["greet"].start({"name": "kay"}, idempotency_key="signup/kay 1"))
    client.settle(str(keyed.id))
    other = client.run("greet", {"name": "lee"})
    page = client.get(f"/executions/{keyed.id}", headers=HTML).text
    assert "idempotency key" in text(page) and "signup/kay 1" in text(page)
    assert "/executions?key=signup/kay%201" in page
    found = client.get("/executions?key=signup/kay%201", headers=HTML).text
    assert f'id="row-{keyed.id}"' in found and f'id="row-{other}"' not in found
    assert 'value="signup/kay 1"' in found
