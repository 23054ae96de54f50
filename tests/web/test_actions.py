"""Lifecycle controls, the start form, CSRF on every POST, and --read-only."""

from __future__ import annotations

import html as htmllib

import pytest

from dq.web import Settings

from .conftest import FAST, Client, open_client

ACTIONS = ("pause", "resume", "cancel", "retry")


def test_every_post_needs_the_csrf_token(client: Client) -> None:
    eid = client.start("slow")
    client.settle(eid, statuses=frozenset({"waiting"}))
    for action in ACTIONS:
        refused = client.post(f"/executions/{eid}/{action}")
        assert refused.status_code == 403, action
        forged = client.post(f"/executions/{eid}/{action}", headers={"x-csrftoken": "forged"})
        assert forged.status_code == 403, action
    assert client.post("/jobs/greet/start", data={"input": '{"name": "x"}'}).status_code == 403
    assert client.status(eid) == "waiting"  # nothing happened


def test_pause_resume_cancel_change_the_status_and_the_buttons(client: Client) -> None:
    token = client.csrf()
    eid = client.start("slow")
    client.settle(eid, statuses=frozenset({"waiting"}))
    page = client.get(f"/executions/{eid}").text
    assert 'data-action="pause"' in page and 'data-action="cancel"' in page
    assert 'data-action="resume"' not in page and 'data-action="retry"' not in page

    paused = client.post(f"/executions/{eid}/pause", headers={"x-csrftoken": token})
    assert paused.status_code == 200
    assert 'id="exec-head"' in paused.text and 'hx-swap-oob="true"' in paused.text
    assert client.settle(eid, statuses=frozenset({"paused"})) == "paused"
    assert 'data-action="resume"' in paused.text and 'data-action="pause"' not in paused.text

    resumed = client.post(f"/executions/{eid}/resume", headers={"x-csrftoken": token})
    assert resumed.status_code == 200
    assert client.settle(eid, statuses=frozenset({"pending", "running", "waiting"})) != "paused"

    cancelled = client.post(f"/executions/{eid}/cancel", headers={"x-csrftoken": token})
    assert cancelled.status_code == 200
    assert client.settle(eid) == "cancelled"
    assert 'data-action="retry"' in cancelled.text and "s-cancelled" in cancelled.text


def test_retry_a_failed_execution(client: Client) -> None:
    token = client.csrf()
    eid = client.run("broken")
    assert client.status(eid) == "failed"
    page = client.get(f"/executions/{eid}").text
    assert 'data-action="retry"' in page
    res = client.post(f"/executions/{eid}/retry", headers={"x-csrftoken": token})
    assert res.status_code == 200
    client.settle(eid, statuses=frozenset({"pending", "running", "failed"}))
    rec = client.call(client.queue.storage.get_execution, eid)
    assert rec is not None and rec.retry_count >= 1  # a fresh attempt was made


def test_actions_on_unknown_ids_are_404(client: Client) -> None:
    token = client.csrf()
    for action in ACTIONS:
        assert client.post(f"/executions/NOPE/{action}", headers={"x-csrftoken": token}).status_code == 404


def test_start_form_creates_an_execution(client: Client) -> None:
    token = client.csrf()
    res = client.post("/jobs/greet/start", data={"input": '{"name": "form"}'},
                      headers={"x-csrftoken": token, "hx-request": "true"})  # fmt: skip
    assert res.status_code == 200
    target = res.headers["hx-redirect"]
    assert target.startswith("/executions/")
    eid = target.rsplit("/", 1)[-1]
    client.settle(eid)
    assert "HELLO FORM" in client.get(target).text
    # without htmx: a plain form post with the hidden field, answered by a redirect
    plain = client.post("/jobs/greet/start", data={"input": '{"name": "plain"}', "_csrf_token": token},
                        follow_redirects=False)  # fmt: skip
    assert plain.status_code == 303 and plain.headers["location"].startswith("/executions/")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"name": ', "Not valid JSON"),
        ('{"nom": "x"}', "Invalid input"),
        ("[1, 2]", "Invalid input"),
    ],
)
def test_start_form_errors_are_shown_inline(client: Client, body: str, message: str) -> None:
    token = client.csrf()
    before = len(client.call(client.queue.jobs.get_all))
    res = client.post("/jobs/greet/start", data={"input": body}, headers={"x-csrftoken": token, "hx-request": "true"})
    assert res.status_code == 200 and "hx-redirect" not in res.headers
    assert 'id="start-card"' in res.text and 'id="start-error"' in res.text and message in res.text
    assert body.split(":")[0] in htmllib.unescape(res.text)  # the input is kept for correction
    assert len(client.call(client.queue.jobs.get_all)) == before  # nothing stored
    plain = client.post("/jobs/greet/start", data={"input": body, "_csrf_token": token})
    assert plain.status_code == 422 and message in plain.text


def test_start_on_unknown_job_is_404(client: Client) -> None:
    token = client.csrf()
    assert client.post("/jobs/nosuch/start", data={"input": "{}"}, headers={"x-csrftoken": token}).status_code == 404


def test_read_only_hides_controls_and_refuses_posts(queue: object) -> None:
    settings = Settings(read_only=True, **FAST)  # type: ignore[arg-type]
    with open_client(queue, settings) as client:  # type: ignore[arg-type]
        token = client.csrf()
        eid = client.start("slow")
        client.settle(eid, statuses=frozenset({"waiting"}))
        page = client.get(f"/executions/{eid}").text
        assert "read-only" in page
        assert "data-action=" not in page and "hx-post" not in page
        job = client.get("/jobs/greet").text
        assert 'id="start-form"' not in job and "read-only" in job
        for action in ACTIONS:
            res = client.post(f"/executions/{eid}/{action}", headers={"x-csrftoken": token})
            assert res.status_code == 403, action
        res = client.post("/jobs/greet/start", data={"input": '{"name": "x"}'}, headers={"x-csrftoken": token})
        assert res.status_code == 403
        assert client.status(eid) == "waiting"
