"""`GET /metrics`: a valid Prometheus text exposition whose figures match what ran."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from dataclasses import dataclass, field

from dq.engine.storage.base import EventRecord
from dq.web.counters import Histogram, Metrics

from .conftest import Client

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


@dataclass
class Family:
    kind: str = ""
    help: str = ""
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


def parse(text: str) -> dict[str, Family]:
    """A strict reader of the text format: every line a HELP, a TYPE or a sample of a
    declared family; label syntax and float values checked."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    families: dict[str, Family] = defaultdict(Family)
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            families[name].help = help_text
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            families[name].kind = kind
        else:
            m = _SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name, raw_labels, value = m.group(1), m.group(2) or "", m.group(3)
            labels: dict[str, str] = {}
            pos = 0
            while pos < len(raw_labels):
                lm = _LABEL.match(raw_labels, pos)
                assert lm, f"bad labels in {line!r}"
                labels[lm.group(1)] = lm.group(2)
                pos = lm.end()
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            family = name if name in families else base
            assert families[family].kind, f"sample {name} before its TYPE line"
            families[family].samples.append((name, labels, float(value)))
    return dict(families)


def value(fam: Family, name: str, **labels: str) -> float:
    found = [v for n, lab, v in fam.samples if n == name and all(lab.get(k) == x for k, x in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


def scrape(client: Client) -> dict[str, Family]:
    res = client.get("/metrics")
    assert res.status_code == 200
    assert res.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(res.text)


def test_metrics_exposition_parses_and_counts_what_ran(client: Client) -> None:
    ok = client.run("flaky", {"name": "m1"})
    bad = client.run("broken")
    assert client.status(ok) == "completed" and client.status(bad) == "failed"
    client.call(client.queue.jobs.big.pause)
    waiting = client.start("big")
    time.sleep(0.05)
    deadline = time.monotonic() + 5
    while True:
        fams = scrape(client)
        finished = fams["dq_executions_finished_total"]
        done = [v for n, lab, v in finished.samples if lab.get("job") == "flaky" and lab.get("status") == "completed"]
        if done and [v for n, lab, v in finished.samples if lab.get("job") == "broken"]:
            break
        assert time.monotonic() < deadline, "the finished executions never reached the counters"
        time.sleep(0.05)
    assert client.status(waiting) == "pending"

    ex = fams["dq_executions"]
    assert ex.kind == "gauge"
    assert value(ex, "dq_executions", job="flaky", status="completed") == 1
    assert value(ex, "dq_executions", job="broken", status="failed") == 1
    assert value(ex, "dq_executions", job="big", status="pending") == 1
    assert value(ex, "dq_executions", job="slow", status="running") == 0
    assert value(fams["dq_queue_depth"], "dq_queue_depth", job="big") == 1
    assert value(fams["dq_queue_depth"], "dq_queue_depth", job="flaky") == 0
    age = fams["dq_oldest_pending_age_seconds"]
    assert value(age, "dq_oldest_pending_age_seconds", job="big") > 0
    assert value(age, "dq_oldest_pending_age_seconds", job="greet") == 0

    assert fams["dq_attempts_total"].kind == "counter"
    assert value(fams["dq_attempts_total"], "dq_attempts_total", job="flaky") == 1
    assert value(fams["dq_attempts_total"], "dq_attempts_total", job="broken") == 1
    assert value(fams["dq_failed_attempts_total"], "dq_failed_attempts_total", job="broken") == 1
    assert value(fams["dq_failed_attempts_total"], "dq_failed_attempts_total", job="flaky") == 0
    assert value(finished, "dq_executions_finished_total", job="broken", status="failed") == 1

    steps = fams["dq_step_duration_seconds"]
    assert steps.kind == "histogram"
    # flaky's step: one failed attempt and one success; broken's: one failure
    assert value(steps, "dq_step_duration_seconds_count", job="flaky") == 2
    assert value(steps, "dq_step_duration_seconds_count", job="broken") == 1
    buckets = [(lab["le"], v) for n, lab, v in steps.samples if n.endswith("_bucket") and lab["job"] == "flaky"]
    assert buckets[-1] == ("+Inf", 2)
    assert [v for _, v in buckets] == sorted(v for _, v in buckets), "buckets must be cumulative"
    runs = fams["dq_execution_duration_seconds"]
    assert value(runs, "dq_execution_duration_seconds_count", job="flaky") == 1
    assert value(runs, "dq_execution_duration_seconds_sum", job="flaky") >= 0
    assert value(fams["dq_sse_clients"], "dq_sse_clients") == 0


def test_histogram_buckets_are_cumulative_with_inf_and_sum() -> None:
    h = Histogram((0.1, 1.0))
    for s in (0.05, 0.5, 0.5, 7.0):
        h.observe("j", s)
    text = "# TYPE x histogram\n" + "\n".join(h.lines("x", "job")) + "\n"
    fam = parse(text)["x"]
    assert value(fam, "x_bucket", le="0.1") == 1
    assert value(fam, "x_bucket", le="1") == 3
    assert value(fam, "x_bucket", le="+Inf") == 4
    assert value(fam, "x_count") == 4
    assert value(fam, "x_sum") == 8.05


def test_label_values_are_escaped() -> None:
    m = Metrics()
    m.observe(EventRecord("e1", 'we"ird\\job\nname', "start", {}, 1000))
    m.observe(EventRecord("e1", 'we"ird\\job\nname', "success", {}, 3000))
    text = "# TYPE y histogram\n" + "\n".join(m.execution_seconds.lines("y", "job")) + "\n"
    fam = parse(text)["y"]
    assert value(fam, "y_sum", job='we\\"ird\\\\job\\nname') == 2.0
