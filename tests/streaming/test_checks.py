"""streaming.checks: the one set of argument checks every layer's configs use."""

from __future__ import annotations

import math

import pytest

from streaming.checks import check_bool, check_choice, check_int, check_number, check_timeout, describe_range


class MyError(ValueError):
    pass


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: check_int("window_tokens", 8, low=16, high=1_000_000),
         "window_tokens must be an integer in [16, 1000000]; got 8"),
        (lambda: check_int("n", True, low=0, high=5), "n must be an integer in [0, 5]; got True"),
        (lambda: check_int("n", 2.0, low=0, high=5), "n must be an integer in [0, 5]; got 2.0"),
        (lambda: check_int("BankConfig.x", -1, low=0, kind="an int"), "BankConfig.x must be an int >= 0; got -1"),
        (lambda: check_int("m", "3", low=1, high=9, allow_none=True), "m must be an integer in [1, 9] or None; got '3'"),
        (lambda: check_number("tau", 1.5, low=-1.0, high=1.0), "tau must be a number in (-1.0, 1.0]; got 1.5"),
        (lambda: check_number("tau", -1.0, low=-1.0, high=1.0), "tau must be a number in (-1.0, 1.0]; got -1.0"),
        (lambda: check_number("max_fps", 0, low=0, high=1000), "max_fps must be a number in (0, 1000]; got 0"),
        (lambda: check_number("x", math.nan, low=0, high=1, low_inclusive=True), "x must be a number in [0, 1]; got nan"),
        (lambda: check_number("x", 1.0, low=0, high=1, high_inclusive=False), "x must be a number in (0, 1); got 1.0"),
        (lambda: check_number("r", -2, low=0, allow_none=True), "r must be a number > 0 or None; got -2"),
        (lambda: check_number("pts", math.inf), "pts must be a finite number; got inf"),
        (lambda: check_number("--fps", 0, low=0.1, high=30, low_inclusive=True, kind=""), "--fps must be in [0.1, 30]; got 0"),
        (lambda: check_choice("drop", "magic", ("off", "feature")), "drop must be one of off, feature; got 'magic'"),
        (lambda: check_choice("kv_bits", 16.0, (32, 16)), "kv_bits must be one of 32, 16; got 16.0"),
        (lambda: check_choice("kv_bits", True, (1, 2)), "kv_bits must be one of 1, 2; got True"),
        (lambda: check_choice("load_in", "2bit", (None, "8bit")), "load_in must be one of None, 8bit; got '2bit'"),
        (lambda: check_bool("rerank", 1), "rerank must be true or false; got 1"),
        (lambda: check_timeout("open_timeout_s", 0), "open_timeout_s must be a number in (0.0, 86400.0] or None; got 0"),
    ],
)
def test_messages_name_the_field_and_the_range(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value) == message


def test_accepted_values_come_back():
    assert check_int("n", 3, low=0, high=5) == 3 and check_int("n", None, low=0, allow_none=True) is None
    assert check_number("x", 1, low=0, high=1) == 1.0 and isinstance(check_number("x", 1, low=0, high=1), float)
    assert check_number("x", 0.0, low=0, high=1, low_inclusive=True) == 0.0
    assert check_number("x", None, low=0, allow_none=True) is None
    assert check_choice("drop", "off", ("off", "feature")) == "off" and check_choice("b", 16, (32, 16)) == 16
    assert check_choice("load_in", None, (None, "8bit")) is None
    assert check_bool("b", False) is False and check_timeout("t", None) is None and check_timeout("t", 5) == 5.0


def test_the_callers_error_class_is_raised():
    for call in (lambda: check_int("n", -1, low=0, error=MyError), lambda: check_number("x", 2, low=0, high=1, error=MyError),
                 lambda: check_choice("c", "z", ("a",), error=MyError), lambda: check_bool("b", None, error=MyError),
                 lambda: check_timeout("t", -1, error=MyError)):
        with pytest.raises(MyError):
            call()


def test_describe_range():
    assert describe_range(0, 1) == "[0, 1]" and describe_range(0, 1, low_inclusive=False) == "(0, 1]"
    assert describe_range(0, None) == ">= 0" and describe_range(None, 5, high_inclusive=False) == "< 5"
