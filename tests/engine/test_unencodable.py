"""Text that cannot be encoded (lone UTF-16 surrogates) is refused where values enter,
naming the field, with nothing stored; error text, which cannot be refused, is stored
encodable. On every adapter."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from dq import JobError, Queue, ValidationError, create_job, create_pipe, run
from dq.engine.errors import error_to_dict
from dq.engine.serialize import UnencodableText, dump_step, plain_json
from dq.engine.text import escape, find_unencodable, scrub


class Ident(BaseModel):
    id: str


def test_find_unencodable_names_the_place() -> None:
    assert find_unencodable({"a": [1, "ok", {"b": "x\ud800"}]}) == ("['a'][2]['b']", "x\ud800")
    assert find_unencodable({"k\udc00": "\ud800"}) == ("['k\\udc00']", "k\udc00")
    assert find_unencodable("\udfff") == ("", "\udfff")
    assert find_unencodable(["fine", {"é": "😀"}]) is None
    assert scrub("a\ud800b") == "a\ufffdb" and scrub("\ud83d\ude00") == "😀"
    escaped = escape("x\ud800")
    assert escaped == "x\\ud800" and json.loads('"' + escaped + '"') == "x\ud800"  # the same JSON value


def test_plain_json_and_step_results_refuse_surrogates() -> None:
    with pytest.raises(UnencodableText, match=r"at \['id'\]: \\ud800 is a lone UTF-16 surrogate"):
        plain_json({"id": "\ud800"}, "input of job 'x'")
    with pytest.raises(UnencodableText, match="the result of step 'fetch' holds text"):
        dump_step(["\udfff"], "fetch")
    with pytest.raises(UnencodableText, match=r"at \['id'\]"):
        dump_step(Ident(id="\ud800"), "fetch")
    with pytest.raises(UnencodableText, match=r"at \['m'\]\[0\]\['id'\]"):
        plain_json({"m": [Ident(id="\ud800")]}, "input")  # a model nested in plain values
    with pytest.raises(TypeError, match="nested too deeply"):
        nested: Any = []
        for _ in range(100_000):
            nested = [nested]
        plain_json(nested, "input")


def test_error_text_is_stored_encodable() -> None:
    stored = error_to_dict(ValueError("bad \ud800 byte"))
    assert stored["message"] == "bad \ufffd byte"
    assert "args" not in stored  # args that cannot be encoded are not kept
    json.dumps(stored, ensure_ascii=False).encode()  # encodes


class Refused(Exception):
    def __init__(self, field: str, value: str) -> None:
        super().__init__(f"refused {field}")
        self.field, self.value = field, value


def test_error_attributes_that_cannot_be_encoded_are_not_kept() -> None:
    stored = error_to_dict(Refused("name", "x\ud800"))
    assert stored["attrs"] == {"field": "name"}  # the encodable attribute survives the round trip
    assert stored["message"] == "refused name"
    json.dumps(stored, ensure_ascii=False).encode()


async def test_inputs_and_messages_are_refused_at_the_call_site(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="plain")
    async def plain(data: Any) -> Any:
        return data

    @create_job(name="typed", input=Ident)
    async def typed(data: Ident) -> str:
        return data.id

    notes = create_pipe(name="notes")
    queue = make_queue([plain, typed], pipes=[notes])
    async with queue:
        with pytest.raises(ValidationError, match=r"input of job 'plain' holds text that cannot be encoded at \['id'\]"):
            await queue.jobs.plain.start({"id": "\ud800"})
        with pytest.raises(ValidationError, match=r"input of job 'typed' .* at \['id'\]"):
            await queue.jobs.typed.start({"id": "\ud800"})
        with pytest.raises(ValidationError, match=r"message for pipe 'notes' .* at \[0\]\['x'\]"):
            await queue.pipes.notes.send([{"x": "\udc80"}])
        assert await queue.jobs.get_all() == []  # nothing stored
        assert await queue.storage.read_messages("notes", 0) == []
        assert await queue.jobs.plain.run({"id": "😀 é"}) == {"id": "😀 é"}  # valid Unicode is fine


async def test_a_surrogate_in_an_output_or_a_step_result_fails_the_attempt(make_queue: Callable[..., Queue]) -> None:
    @create_job(name="out", retry=0)
    async def out(data: Any) -> Any:
        return {"text": "\ud800"}

    @create_job(name="step", retry=0)
    async def step(data: Any) -> Any:
        return await run("fetch", lambda: "\ud83d", retry=0)

    @create_job(name="err", retry=0)
    async def err(data: Any) -> Any:
        raise ValueError("cut \ud800 emoji")

    queue = make_queue([out, step, err])
    async with queue:
        with pytest.raises(JobError, match=r"output of job 'out' holds text that cannot be encoded at \['text'\]"):
            await queue.jobs.out.run(None)
        with pytest.raises(JobError, match="the result of step 'fetch' holds text that cannot be encoded"):
            await queue.jobs.step.run(None)
        with pytest.raises(JobError) as info:
            await queue.jobs.err.run(None)
        assert str(info.value.cause) == "cut \ufffd emoji"
        (failed,) = await queue.jobs.get_all(job_name="err")
        rec = await queue.storage.get_execution(failed.id)
        assert rec is not None and rec.error is not None and rec.error["message"] == "cut \ufffd emoji"
