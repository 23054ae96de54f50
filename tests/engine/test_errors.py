"""Errors come back from storage as the same types, with their messages and causes."""

from __future__ import annotations

import builtins

from dq import CancelledError, JobError, TimeoutError, ValidationError
from dq.engine.errors import StoredError, error_from_dict, error_to_dict


class Declined(Exception):
    def __init__(self, card: str, code: int) -> None:
        super().__init__(card, code)
        self.card, self.code = card, code


class Weird(Exception):
    def __init__(self) -> None:
        super().__init__(object())


def roundtrip(exc: BaseException) -> BaseException:
    return error_from_dict(error_to_dict(exc))


def test_builtin_and_custom_errors_keep_type_message_and_fields() -> None:
    key = roundtrip(KeyError("k"))
    assert type(key) is KeyError and str(key) == str(KeyError("k"))
    assert str(roundtrip(roundtrip(KeyError("k")))) == "'k'"
    declined = roundtrip(Declined("visa", 51))
    assert isinstance(declined, Declined) and (declined.card, declined.code) == ("visa", 51)
    weird = roundtrip(Weird())
    assert isinstance(weird, Weird)


def test_engine_errors_and_causes() -> None:
    err = roundtrip(JobError("job 'x' failed", ValueError("bad")))
    assert isinstance(err, JobError) and isinstance(err.cause, ValueError)
    assert str(err.cause) == "bad"
    t = roundtrip(TimeoutError("slow"))
    assert isinstance(t, TimeoutError) and isinstance(t, builtins.TimeoutError)
    c = roundtrip(CancelledError("stop", "user asked"))
    assert isinstance(c, CancelledError) and c.reason == "user asked"
    v = roundtrip(ValidationError("input of job 'x' is invalid"))
    assert isinstance(v, ValidationError) and isinstance(v, ValueError)


def test_unknown_classes_become_stored_errors_with_traceback() -> None:
    data = {"type": "nowhere.Missing", "message": "gone", "traceback": "Traceback ..."}
    err = error_from_dict(data)
    assert isinstance(err, StoredError) and err.type_name == "nowhere.Missing" and str(err) == "gone"
    assert error_to_dict(err)["type"] == "nowhere.Missing"
    assert error_to_dict(err)["traceback"] == "Traceback ..."
