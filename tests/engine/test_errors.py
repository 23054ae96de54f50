"""Errors come back from storage as the same types, with their messages and attributes;
stored data never chooses what gets imported."""

from __future__ import annotations

import builtins
import json
import sys
from pathlib import Path

import pytest

from dq import CancelledError, JobError, TimeoutError, ValidationError
from dq.engine.errors import StoredError, allow_error_module, error_from_dict, error_to_dict

# As a module that defines jobs registers itself when its jobs are created.
allow_error_module(__name__)


class Declined(Exception):
    def __init__(self, card: str, code: int) -> None:
        super().__init__(card, code)
        self.card, self.code = card, code


class DeclinedWithCode(Exception):
    """An __init__ that builds the message: calling it with the stored args again
    would feed the message in as the code."""

    def __init__(self, code: int) -> None:
        super().__init__(f"declined with code {code}")
        self.code = code


class Weird(Exception):
    def __init__(self) -> None:
        super().__init__(object())


def roundtrip(exc: BaseException) -> BaseException:
    return error_from_dict(json.loads(json.dumps(error_to_dict(exc))))


def test_builtin_and_custom_errors_keep_type_message_and_fields() -> None:
    key = roundtrip(KeyError("k"))
    assert type(key) is KeyError and str(key) == str(KeyError("k"))
    assert str(roundtrip(roundtrip(KeyError("k")))) == "'k'"
    declined = roundtrip(Declined("visa", 51))
    assert isinstance(declined, Declined) and (declined.card, declined.code) == ("visa", 51)
    weird = roundtrip(Weird())
    assert isinstance(weird, Weird)


def test_a_custom_init_that_builds_its_message_is_not_called_again() -> None:
    err = roundtrip(DeclinedWithCode(51))
    assert type(err) is DeclinedWithCode
    assert str(err) == "declined with code 51"
    assert err.code == 51
    twice = roundtrip(err)
    assert str(twice) == "declined with code 51" and twice.code == 51  # type: ignore[attr-defined]


def test_engine_errors_and_causes() -> None:
    err = roundtrip(JobError("job 'x' failed", ValueError("bad")))
    assert isinstance(err, JobError) and isinstance(err.cause, ValueError)
    assert str(err.cause) == "bad"
    t = roundtrip(TimeoutError("slow"))
    assert isinstance(t, TimeoutError) and isinstance(t, builtins.TimeoutError)
    c = roundtrip(CancelledError("stop", "user asked"))
    assert isinstance(c, CancelledError) and c.reason == "user asked" and str(c) == "stop"
    v = roundtrip(ValidationError("input of job 'x' is invalid"))
    assert isinstance(v, ValidationError) and isinstance(v, ValueError)


def test_unknown_classes_become_job_errors_with_type_message_and_traceback() -> None:
    data = {"type": "nowhere.Missing", "message": "gone", "traceback": "Traceback ..."}
    err = error_from_dict(data)
    assert isinstance(err, StoredError) and isinstance(err, JobError)
    assert err.type_name == "nowhere.Missing" and str(err) == "gone" and err.traceback == "Traceback ..."
    assert error_to_dict(err)["type"] == "nowhere.Missing"
    assert error_to_dict(err)["traceback"] == "Traceback ..."


def test_stored_data_never_imports_a_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: the stored type name was passed to importlib, so whoever could
    write an error row chose a module to import (and run) in every reader."""
    marker = tmp_path / "imported"
    (tmp_path / "dq_planted_module.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nclass Boom(Exception):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    err = error_from_dict({"type": "dq_planted_module.Boom", "message": "hi", "traceback": "tb"})
    assert "dq_planted_module" not in sys.modules and not marker.exists()
    assert isinstance(err, StoredError) and err.type_name == "dq_planted_module.Boom"


def test_loaded_classes_outside_the_jobs_modules_are_not_rebuilt() -> None:
    # json is imported, but no job module uses its error class: not rebuilt.
    err = roundtrip(json.JSONDecodeError("bad", "doc", 0))
    assert isinstance(err, StoredError) and err.type_name == "json.decoder.JSONDecodeError"
    assert str(err).startswith("bad")
