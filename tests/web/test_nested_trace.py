"""A parent's waterfall holds its children's rows (any depth) on its own time axis."""

from __future__ import annotations

import re
import time

from dq.engine.storage.base import ExecutionQuery

from .conftest import Client


def _wait_for_descendants(client: Client, root: str, n: int) -> list[str]:
    deadline = time.monotonic() + 5
    while True:
        found = client.call(client.queue.storage.query, ExecutionQuery(root_id=root, order="oldest"))
        steps = [client.call(client.queue.storage.get_steps, r.id) for r in found]
        if len(found) >= n and all(steps):
            return [r.id for r in found]
        assert time.monotonic() < deadline, f"{len(found)} descendants of {root}, wanted {n}"
        time.sleep(0.05)


def _left(seg_html: str) -> float:
    m = re.search(r"left:([0-9.]+)%", seg_html)
    assert m
    return float(m.group(1))


def test_grandchildren_steps_show_inline_on_one_axis(client: Client) -> None:
    top = client.start("grandparent")
    child, grandchild = _wait_for_descendants(client, top, 2)
    page = client.get(f"/executions/{top}").text
    wf = page[page.index('id="waterfall"') : page.index("wf-legend")]
    # the child's and the grandchild's own rows are inside the top's waterfall
    assert f'<details class="wf-child" id="child-{child}" open' in wf
    assert f'<details class="wf-child" id="child-{grandchild}" open' in wf
    assert f'data-execution="{child}"' in wf and f'data-execution="{grandchild}"' in wf
    hello = re.search(rf'<a class="wf-row nested-row" href="/executions/{grandchild}\?step=hello"[^>]*style="--depth:2">(.*?)</a>', wf, re.S)
    assert hello, "the grandchild's step 'hello' is not a depth-2 row of the top's waterfall"
    # one time axis: the grandchild's first step starts after the top's first step
    prepare = re.search(r'data-key="prepare"[^>]*>(.*?)</a>', wf, re.S)
    assert prepare
    assert _left(hello.group(1)) > _left(prepare.group(1))
    # the nested job rows link to their executions
    assert f'href="/executions/{grandchild}" data-key=""' in wf
    # a child's own page nests its child too (depth counts from the page's execution)
    mid = client.get(f"/executions/{child}").text
    assert f'<details class="wf-child" id="child-{grandchild}" open' in mid
