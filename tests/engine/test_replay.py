"""`execution.replay(from_step, input)`: reused steps do not run, the rest does."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from dq import DqError, JobError, Queue, ValidationError, create_job, run
from dq.engine.replay import REUSED
from tests.engine.test_lifecycle import until


class FileIn(BaseModel):
    path: str
    fail: bool = False


def music_jobs(calls: Counter[str]) -> list[Any]:
    """probe -> child job `tag` -> transcode (fails when the input says so) -> publish."""

    @create_job(name="tag")
    async def tag(data: Any) -> str:
        calls["tag"] += 1
        return f"tagged:{data}"

    @create_job(name="ingest", input=FileIn, retry=0)
    async def ingest(data: FileIn) -> dict[str, Any]:
        def probe() -> int:
            calls["probe"] += 1
            return len(data.path)

        def transcode() -> str:
            calls["transcode"] += 1
            if data.fail:
                raise RuntimeError(f"cannot transcode {data.path}")
            return data.path.replace(".wav", ".ogg")

        def publish() -> str:
            calls["publish"] += 1
            return "published"

        size = await run("probe", probe)
        tagged = await tag.run(data.path)
        out = await run("transcode", transcode, retry=0)
        status = await run("publish", publish)
        return {"size": size, "tagged": tagged, "out": out, "status": status}

    return [tag, ingest]


async def failed_original(queue: Queue) -> Any:
    original = await queue.jobs.ingest.start({"path": "a.wav", "fail": True})
    with pytest.raises(JobError, match=r"cannot transcode a\.wav"):
        await original.result()
    return original


async def test_replay_from_the_failed_step_reuses_the_steps_before_it(make_queue: Callable[..., Queue]) -> None:
    calls: Counter[str] = Counter()
    queue = make_queue(music_jobs(calls))
    async with queue:
        original = await failed_original(queue)
        child_key = next(s.key for s in await original.steps() if s.kind == "child")
        assert calls == {"probe": 1, "tag": 1, "transcode": 1}
        before = await original.steps()

        replay = await original.replay(from_step="transcode", input={"path": "a.wav"})
        assert replay.id != original.id and replay.replay_of == original.id
        out = await replay.result()

        # probe and the child job were not run again; transcode and publish were
        assert calls == {"probe": 1, "tag": 1, "transcode": 2, "publish": 1}
        assert out == {"size": 5, "tagged": "tagged:a.wav", "out": "a.ogg", "status": "published"}
        steps = {s.key: s for s in await replay.steps()}
        assert [k for k, s in steps.items() if s.job_attempt == REUSED] == ["probe", child_key]
        assert steps["transcode"].job_attempt == 0 and steps["transcode"].status == "completed"
        # the original is untouched
        await original.refresh()
        assert original.status == "failed" and await original.steps() == before
        assert [e.id for e in await queue.jobs.get_all(replay_of=original.id)] == [replay.id]
        replay_event = next(e for e in await replay.events() if e.type == "replay")
        assert replay_event.data == {"of": original.id, "from_step": "transcode", "reused": ["probe", child_key], "by": "api"}
        assert len(await queue.jobs.get_all(job_name="tag")) == 1  # no second child execution


async def test_replay_of_a_replay_and_without_from_step(make_queue: Callable[..., Queue]) -> None:
    calls: Counter[str] = Counter()
    queue = make_queue(music_jobs(calls))
    async with queue:
        original = await queue.jobs.ingest.start({"path": "b.wav"})
        await original.result()
        first = await original.replay(from_step="publish")
        await first.result()
        assert calls == {"probe": 1, "tag": 1, "transcode": 1, "publish": 2}
        second = await first.replay(from_step="publish")  # its reused steps are reused again
        assert second.replay_of == first.id
        await second.result()
        assert calls == {"probe": 1, "tag": 1, "transcode": 1, "publish": 3}
        fresh = await second.replay()  # nothing reused: everything runs, a new child too
        await fresh.result()
        assert calls == {"probe": 2, "tag": 2, "transcode": 2, "publish": 4}
        assert fresh.input == {"path": "b.wav", "fail": False}


async def test_replay_refuses_bad_requests_before_storing_anything(make_queue: Callable[..., Queue]) -> None:
    calls: Counter[str] = Counter()
    queue = make_queue(music_jobs(calls))
    async with queue:
        original = await failed_original(queue)
        count = len(await queue.jobs.get_all())
        with pytest.raises(ValueError, match=r"'nope'.*\['probe', 'tag\(.*\)', 'transcode'\]"):
            await original.replay(from_step="nope")
        with pytest.raises(ValidationError, match="path"):
            await original.replay(from_step="transcode", input={"fail": False})
        assert len(await queue.jobs.get_all()) == count
        assert await queue.jobs.get_all(replay_of=original.id) == []


async def test_replay_of_an_unfinished_execution_is_refused(make_queue: Callable[..., Queue]) -> None:
    calls: Counter[str] = Counter()
    queue = make_queue(music_jobs(calls))
    async with queue:
        await queue.jobs.ingest.pause()
        pending = await queue.jobs.ingest.start({"path": "d.wav"})
        with pytest.raises(DqError, match="only completed, failed or cancelled"):
            await pending.replay()


async def test_a_replay_created_before_a_restart_runs_after_it(
    make_queue: Callable[..., Queue], make_storage: Callable[[], Any]
) -> None:
    calls: Counter[str] = Counter()
    first = make_queue(music_jobs(calls))
    async with first:
        original = await failed_original(first)
        await first.jobs.ingest.pause()  # the replay is stored, not started
        replay = await original.replay(from_step="transcode", input={"path": "e.wav"})
        assert (await first.jobs.get(replay.id)).status in ("pending", "paused")  # type: ignore[union-attr]
    second = make_queue(music_jobs(calls))
    async with second:
        await second.jobs.ingest.resume()
        again = await second.jobs.get(replay.id)
        assert again is not None
        out = await again.result()
    assert out["out"] == "e.ogg" and out["size"] == 5  # probe's stored result, from a.wav
    # a child step is keyed by its input, which changed with the new path: it runs
    assert calls == {"probe": 1, "tag": 2, "transcode": 2, "publish": 1}
    assert out["tagged"] == "tagged:e.wav"


async def test_a_replay_counts_as_a_start_for_rate_limits(make_queue: Callable[..., Queue]) -> None:
    """Reused steps do not make a replay a resumption: it takes its own start in a window."""

    @create_job(name="rated", concurrency="1/m")
    async def rated(data: Any) -> str:
        await run("one", lambda: 1)
        return str(await run("two", lambda: 2))

    queue = make_queue([rated])
    async with queue:
        original = await queue.jobs.rated.start(None)
        assert await original.result() == "2"
        replay = await original.replay(from_step="two")

        async def queued() -> bool:
            return any(e.type == "queued" for e in await replay.events())

        await until(queued)  # held back by the window the original's start took
        await replay.refresh()
        assert replay.status == "pending" and replay.record.wait_reason is not None
