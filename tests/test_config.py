"""The one parser of numeric tuning knobs (ops.config.env_int)."""

from __future__ import annotations

import pytest

from ops.config import env_int


def test_unset_or_blank_gives_the_default(monkeypatch):
    monkeypatch.delenv("KNOB", raising=False)
    assert env_int("KNOB", 7) == 7
    monkeypatch.setenv("KNOB", "  ")
    assert env_int("KNOB", 7) == 7


def test_a_value_within_bounds_is_used(monkeypatch):
    monkeypatch.setenv("KNOB", " 42 ")
    assert env_int("KNOB", 7, low=10, high=60) == 42


@pytest.mark.parametrize(
    ("raw", "kwargs", "message"),
    [
        ("fifteen", {}, "KNOB must be a positive whole number, got 'fifteen'"),
        ("-1", {}, "KNOB must be a positive whole number, got '-1'"),
        ("1.5", {}, "KNOB must be a positive whole number"),
        ("9", {"low": 10, "high": 60}, "KNOB must be a whole number from 10 to 60, got '9'"),
        ("61", {"low": 10, "high": 60}, "KNOB must be a whole number from 10 to 60, got '61'"),
        ("-1", {"low": 0}, "KNOB must be a whole number from 0 up"),
    ],
)
def test_anything_else_is_a_clear_error(monkeypatch, raw, kwargs, message):
    monkeypatch.setenv("KNOB", raw)
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        env_int("KNOB", 7, **kwargs)
