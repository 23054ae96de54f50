"""Token access: the ?token= login link, the cookie, and every kind of route behind it."""

from __future__ import annotations

from dq import Queue
from dq.web import Settings

from .conftest import FAST, open_client

TOKEN = "s3cret-token"


def _client(queue: Queue):  # type: ignore[no-untyped-def]
    return open_client(queue, Settings(token=TOKEN, **FAST))  # type: ignore[arg-type]


def test_everything_but_static_needs_the_token(queue: Queue) -> None:
    with _client(queue) as client:
        eid = client.run("greet", {"name": "x"})
        for url in ("/", "/executions", f"/executions/{eid}", f"/executions/{eid}/waterfall",
                    f"/executions/{eid}/step?key=hello", f"/executions/{eid}/payload/input",
                    "/jobs", "/jobs/greet", "/live?page=overview", "/go?id=x"):  # fmt: skip
            res = client.get(url, headers={"accept": "text/html"})
            assert res.status_code == 401, url
            assert "access token" in res.text and TOKEN not in res.text
        for action in ("pause", "resume", "cancel", "retry"):
            assert client.post(f"/executions/{eid}/{action}").status_code == 401
        assert client.post("/jobs/greet/start", data={"input": "{}"}).status_code == 401
        assert client.get("/static/dq.css").status_code == 200
        assert client.get("/healthz").status_code == 200
        api = client.get("/executions")
        assert api.status_code == 401 and api.headers["content-type"].startswith("text/plain")


def test_login_link_sets_a_cookie_and_strips_the_token(queue: Queue) -> None:
    with _client(queue) as client:
        res = client.get(f"/executions?status=failed&token={TOKEN}", follow_redirects=False)
        assert res.status_code == 303
        assert res.headers["location"] == "/executions?status=failed"
        cookie = res.headers["set-cookie"]
        assert cookie.startswith("dq_token=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
        # the client now carries the cookie
        assert client.get("/executions").status_code == 200
        assert client.get("/").status_code == 200


def test_wrong_token_is_refused(queue: Queue) -> None:
    with _client(queue) as client:
        res = client.get("/?token=wrong", headers={"accept": "text/html"}, follow_redirects=False)
        assert res.status_code == 401 and "not valid" in res.text
        client.cookies.set("dq_token", "wrong")
        assert client.get("/").status_code == 401


def test_bearer_header_works_for_scripts(queue: Queue) -> None:
    with _client(queue) as client:
        assert client.get("/jobs", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert client.get("/jobs", headers={"authorization": "Bearer nope"}).status_code == 401


def test_actions_with_token_still_need_csrf(queue: Queue) -> None:
    with _client(queue) as client:
        client.get(f"/?token={TOKEN}")
        eid = client.start("slow")
        client.settle(eid, statuses=frozenset({"waiting"}))
        assert client.post(f"/executions/{eid}/cancel").status_code == 403
        token = client.csrf()
        assert client.post(f"/executions/{eid}/cancel", headers={"x-csrftoken": token}).status_code == 200
        assert client.settle(eid) == "cancelled"
