"""ltcore.stats: the paired Student-t interval, checked against independent computations."""
import math
import statistics

import numpy as np
import pytest
from scipy import stats as scipy_stats

from ltcore.stats import paired_ci

# Student's sleep data (Cushny & Peebles; Student 1908), R's `sleep` data set: extra hours of sleep of ten
# patients under two drugs. R 4.x, `t.test(extra ~ group, data = sleep, paired = TRUE)` prints
# "95 percent confidence interval: -2.4598858 -0.7001142", "mean difference -1.58".
SLEEP_DRUG_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_DRUG_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_matches_r_paired_t_test_on_student_sleep_data():
    ci = paired_ci(SLEEP_DRUG_1, SLEEP_DRUG_2)
    assert ci.n == 10 and ci.confidence == 0.95
    assert ci.mean == pytest.approx(-1.58, abs=1e-12)
    assert ci.low == pytest.approx(-2.4598858, abs=1e-7)
    assert ci.high == pytest.approx(-0.7001142, abs=1e-7)


def test_exact_small_example_with_table_quantile():
    # d = (1, 2, 3): mean 2, s = 1, n = 3; t_{0.975, 2} = 4.303 in every t table, so the interval is
    # 2 -+ 4.303 / sqrt(3) = [-0.484, 4.484].
    ci = paired_ci([1, 2, 3], [0, 0, 0])
    assert ci.mean == 2.0 and ci.diffs == (1.0, 2.0, 3.0)
    assert ci.low == pytest.approx(2 - 4.303 / math.sqrt(3), abs=1e-3)
    assert ci.high == pytest.approx(2 + 4.303 / math.sqrt(3), abs=1e-3)
    assert ci.low == pytest.approx(-0.484, abs=1e-3) and ci.high == pytest.approx(4.484, abs=1e-3)


def test_fifteen_runs_use_the_t_quantile_2_145():
    diffs = np.random.default_rng(0).normal(0.5, 1.0, size=15)
    ci = paired_ci(diffs, np.zeros(15))
    half_width = (ci.high - ci.low) / 2
    assert half_width * math.sqrt(15) / statistics.stdev(diffs.tolist()) == pytest.approx(2.145, abs=1e-3)
    assert ci.mean == pytest.approx(statistics.fmean(diffs.tolist()), abs=1e-12)


@pytest.mark.parametrize("confidence", [0.8, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("n", [2, 5, 15, 40])
def test_matches_scipy_ttest_rel_interval(confidence, n):
    rng = np.random.default_rng(n)
    a, b = rng.normal(80, 3, size=n), rng.normal(79, 3, size=n)
    ci = paired_ci(a.tolist(), b.tolist(), confidence)
    expected = scipy_stats.ttest_rel(a, b).confidence_interval(confidence)
    assert (ci.low, ci.high) == pytest.approx((expected.low, expected.high), abs=1e-9)
    assert ci.mean == pytest.approx((ci.low + ci.high) / 2, abs=1e-9)


def test_differences_are_a_minus_b_in_run_order():
    ci = paired_ci([70.0, 60.0, 50.0], [69.0, 62.0, 50.5])
    assert ci.diffs == pytest.approx((1.0, -2.0, -0.5))
    assert ci.n == 3


def test_all_equal_differences_give_a_zero_width_interval():
    identical = paired_ci([81.3, 77.0, 79.9], [81.3, 77.0, 79.9])
    assert identical.low == identical.mean == identical.high == 0.0
    # fsum(0.1, 0.1, 0.1) / 3 is 0.10000000000000002, not 0.1: equal differences must still have no spread.
    shifted = paired_ci([0.1, 0.1, 0.1], [0, 0, 0])
    assert shifted.low == shifted.mean == shifted.high == 0.1


def test_result_is_frozen():
    ci = paired_ci([1, 2], [0, 0])
    with pytest.raises(AttributeError):
        ci.mean = 0.0


@pytest.mark.parametrize("a, b, kwargs, message", [
    ([1.0], [0.0], {}, r"at least 2 runs.*got 1"),
    ([], [], {}, r"at least 2 runs.*got 0"),
    ([1.0, 2.0, 3.0], [0.0, 0.0], {}, r"paired run by run, got 3 and 2"),
    ([1.0, True], [0.0, 0.0], {}, r"a\[1\] must be a finite number"),
    ([1.0, "2"], [0.0, 0.0], {}, r"a\[1\] must be a finite number"),
    ("12", [0.0, 0.0], {}, r"a must be a sequence of numbers"),
    ([1.0, 2.0], 3.0, {}, r"b must be a sequence of numbers"),
    ([1.0, 2.0], [0.0, 0.0], {"confidence": 0.0}, r"confidence must be a finite number in \(0.0, 1.0\)"),
    ([1.0, 2.0], [0.0, 0.0], {"confidence": 1.0}, r"confidence must be a finite number in \(0.0, 1.0\)"),
    ([1.0, 2.0], [0.0, 0.0], {"confidence": 95}, r"confidence must be a finite number in \(0.0, 1.0\)"),
])
def test_refuses_bad_arguments(a, b, kwargs, message):
    with pytest.raises(ValueError, match=message):
        paired_ci(a, b, **kwargs)


@pytest.mark.hostile
@pytest.mark.parametrize("a, b, named", [
    ([1.0, math.nan, 3.0], [0.0, 0.0, 0.0], r"a\[1\]"),
    ([1.0, 2.0, 3.0], [0.0, 0.0, math.inf], r"b\[2\]"),
    (np.array([1.0, -np.inf]), np.zeros(2), r"a\[1\]"),
    ([1.0, 2.0], [0.0, 0.0], r"confidence"),
])
def test_refuses_non_finite_values_naming_them(a, b, named):
    confidence = math.nan if named == "confidence" else 0.95
    with pytest.raises(ValueError, match=named + r".* must be a finite number"):
        paired_ci(a, b, confidence)
