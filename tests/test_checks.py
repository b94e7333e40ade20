"""The shared argument checks: what they accept, and messages that name the argument and what it got."""
import math

import numpy as np
import pytest
import torch

from ltcore.checks import check_choice, check_float, check_int, check_labels


@pytest.mark.parametrize("value, low, high, expected", [
    (3, None, None, 3), (np.int64(4), 0, None, 4), (0, 0, 0, 0), (-2, None, 5, -2),
])
def test_check_int_accepts_integers_within_bounds(value, low, high, expected):
    result = check_int("count", value, low, high)
    assert result == expected and type(result) is int


@pytest.mark.parametrize("value, low, high, says", [
    (True, None, None, "count must be an integer, got True"),
    (np.bool_(False), None, None, "count must be an integer, got"),
    (2.0, None, None, "count must be an integer, got 2.0"),
    (float("nan"), None, None, "count must be an integer, got nan"),
    ("3", None, None, "count must be an integer, got '3'"),
    (None, None, None, "count must be an integer, got None"),
    (0, 1, None, "count must be an integer >= 1, got 0"),
    (11, None, 10, "count must be an integer <= 10, got 11"),
    (-1, 0, 10, r"count must be an integer in \[0, 10\], got -1"),
])
def test_check_int_refuses_naming_the_argument(value, low, high, says):
    with pytest.raises(ValueError, match=says):
        check_int("count", value, low, high)


@pytest.mark.parametrize("value, kwargs, expected", [
    (0.5, {}, 0.5), (2, {}, 2.0), (np.float32(0.25), dict(low=0.0, high=1.0), 0.25), (np.int64(3), {}, 3.0),
    (0.0, dict(low=0.0), 0.0), (1.0, dict(high=1.0), 1.0), (-1e308, {}, -1e308),
])
def test_check_float_accepts_finite_numbers_within_bounds(value, kwargs, expected):
    result = check_float("rate", value, **kwargs)
    assert result == expected and type(result) is float


@pytest.mark.parametrize("value, kwargs, says", [
    (float("nan"), {}, "rate must be a finite number, got nan"),
    (float("inf"), {}, "rate must be a finite number, got inf"),
    (-math.inf, dict(low=0.0), "rate must be a finite number >= 0.0, got -inf"),
    (np.float32("nan"), dict(low=0.0, high=1.0), r"rate must be a finite number in \[0.0, 1.0\], got"),
    (np.float64("inf"), {}, "rate must be a finite number, got"),
    (True, {}, "rate must be a finite number, got True"),
    ("0.1", {}, "rate must be a finite number, got '0.1'"),
    (torch.tensor(0.1), {}, "rate must be a finite number, got tensor"),
    (None, {}, "rate must be a finite number, got None"),
    (-0.1, dict(low=0.0), "rate must be a finite number >= 0.0, got -0.1"),
    (0.0, dict(low=0.0, low_open=True), "rate must be a finite number > 0.0, got 0.0"),
    (1.0, dict(low=0.0, high=1.0, high_open=True), r"rate must be a finite number in \[0.0, 1.0\), got 1.0"),
    (2.0, dict(high=1.0), "rate must be a finite number <= 1.0, got 2.0"),
    (1.5, dict(high=1.5, high_open=True), "rate must be a finite number < 1.5, got 1.5"),
])
def test_check_float_refuses_non_finite_and_out_of_range_naming_the_argument(value, kwargs, says):
    with pytest.raises(ValueError, match=says):
        check_float("rate", value, **kwargs)


def test_check_choice_returns_a_known_value():
    assert check_choice("mode", "sum", ("mean", "sum")) == "sum"
    assert check_choice("mode", 2, {1: "a", 2: "b"}) == 2


@pytest.mark.parametrize("value, choices, says", [
    ("median", ("mean", "sum"), r"mode must be one of \['mean', 'sum'\], got 'median'"),
    (None, ("mean", "sum"), r"mode must be one of \['mean', 'sum'\], got None"),
    ("x", {}, r"mode must be one of \[\], got 'x'"),
])
def test_check_choice_refuses_naming_the_argument_and_the_choices(value, choices, says):
    with pytest.raises(ValueError, match=says):
        check_choice("mode", value, choices)


def test_check_labels_returns_long_labels_on_the_device():
    labels = check_labels(np.array([0, 2, 1], dtype=np.int32), 3, length=3, device="cpu")
    assert labels.dtype == torch.long and labels.tolist() == [0, 2, 1]
    assert check_labels(torch.empty(0, dtype=torch.int64), 3).shape == (0,)


@pytest.mark.parametrize("labels, length, says", [
    (torch.tensor([0.0, 1.0]), None, r"targets must be an integer tensor of shape \[B\], got torch.float32"),
    (torch.tensor([True, False]), None, "targets must be an integer tensor of shape .B., got torch.bool"),
    (torch.tensor([[0, 1]]), None, r"targets must be an integer tensor of shape \[B\], got torch.int64 \(1, 2\)"),
    (torch.tensor([0, 1]), 3, r"targets must be an integer tensor of shape \[3\]"),
    (torch.tensor([0, 3]), None, r"targets must lie in \[0, 3\), got values in \[0, 3\]"),
    (torch.tensor([-1, 0]), None, r"targets must lie in \[0, 3\), got values in \[-1, 0\]"),
])
def test_check_labels_refuses_naming_the_argument(labels, length, says):
    with pytest.raises(ValueError, match=says):
        check_labels(labels, 3, length=length, name="targets")


@pytest.mark.hostile
@pytest.mark.parametrize("call, says", [
    (lambda: check_float("rate", 10**400), "rate must be a finite number, got 1000"),    # beyond the float range
    (lambda: check_choice("mode", ["mean"], {"mean", "sum"}), r"mode must be one of \['mean', 'sum'\], got \['mean'\]"),
    (lambda: check_labels("0 1 2", 3, name="targets"), "targets must be an integer tensor, got str"),
    (lambda: check_labels([object()], 3, name="targets"), "targets must be an integer tensor, got list"),
])
def test_inputs_that_raised_raw_errors_get_the_argument_named(call, says):
    """An int too large for a float (OverflowError), an unhashable choice (TypeError) and labels torch cannot
    convert get the same ``ValueError`` naming the argument as any other bad value."""
    with pytest.raises(ValueError, match=says):
        call()
