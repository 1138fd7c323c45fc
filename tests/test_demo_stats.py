"""open_clip_c2lip.demo.stats: intervals and tests against scipy, published tables, brute force and
hand-computed cases."""
import itertools
import math

import numpy as np
import pytest

from open_clip_c2lip.demo import stats


def test_t_interval_matches_published_quantiles_and_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    # two-sided 95 % critical values of Student's t (NIST/SEMATECH e-Handbook, Table 1.3.6.7.2)
    for dof, value in {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 7: 2.365, 9: 2.262}.items():
        values = np.zeros(dof + 1)
        values[0], values[1] = 1.0, -1.0
        low, high = stats.t_interval(values)
        half = value * values.std(ddof=1) / math.sqrt(len(values))
        assert (low, high) == pytest.approx((values.mean() - half, values.mean() + half), abs=1e-3 * half)
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 8):
        control = rng.uniform(0.4, 0.9, n)
        treated = control + rng.normal(0.05, 0.1, n)
        got = stats.paired_difference(list(treated), list(control))
        interval = scipy_stats.ttest_rel(treated, control).confidence_interval(0.95)
        assert got["mean"] == pytest.approx(float(np.mean(treated - control)))
        assert got["std"] == pytest.approx(float(np.std(treated - control, ddof=1)))
        assert (got["ci_low"], got["ci_high"]) == pytest.approx((interval.low, interval.high))
        assert got["p_t"] == pytest.approx(scipy_stats.ttest_rel(treated, control).pvalue)
    assert stats.t_interval([0.3]) is None


def _sign_flip_brute_force(values):
    observed = abs(np.mean(values))
    hits = [abs(np.mean([s * v for s, v in zip(signs, values)])) >= observed - 1e-12
            for signs in itertools.product((1, -1), repeat=len(values))]
    return sum(hits) / len(hits)


def test_sign_flip_p_is_the_exact_enumeration():
    rng = np.random.default_rng(1)
    for n in (3, 5, 8):
        for _ in range(5):
            values = rng.normal(0.1, 0.2, n)
            assert stats.sign_flip_p(values) == pytest.approx(_sign_flip_brute_force(values))
    assert stats.sign_flip_p([0.2] * 8) == pytest.approx(2 / 2 ** 8)  # the floor with 8 worlds
    assert stats.sign_flip_p([0.2] * 5) == pytest.approx(0.0625)
    assert stats.sign_flip_p([0.0, 0.0, 0.0]) == 1.0


def test_sign_flip_p_by_hand():
    # [1, 2, 3]: the 8 signed sums are ±6, ±4, ±2, 0, 0; only ±6 reach |6|: p = 2/8
    assert stats.sign_flip_p([1.0, 2.0, 3.0]) == pytest.approx(0.25)
    # [1, -2, 3]: observed |sum| 2; |sum| >= 2 for ±6, ±4, ±2 (6 of 8): p = 0.75
    assert stats.sign_flip_p([1.0, -2.0, 3.0]) == pytest.approx(0.75)
    # [0.1, 0.1, 0.1, -0.3]: observed sum 0; every pattern is as extreme: p = 1
    assert stats.sign_flip_p([0.1, 0.1, 0.1, -0.3]) == pytest.approx(1.0)
    # 4 equal positives: only all + and all − reach 4d: p = 2/16, however large d is
    assert stats.sign_flip_p([5.0] * 4) == pytest.approx(0.125)
    # ties that hold in exact arithmetic hold here too, whatever the float rounding of the differences
    assert stats.sign_flip_p([0.1, 0.2, -0.3]) == 1.0  # 0.1 + 0.2 - 0.3 is 5.6e-17 in floats
    tied = [0.6 - 0.55, 0.6 - 0.65] * 4  # +-0.05 up to rounding; 70 of the 256 patterns sum to 0
    assert stats.sign_flip_p(tied) == 1.0
    assert stats.sign_flip_p([0.6 - 0.55] * 3 + [0.6 - 0.65]) == pytest.approx(_sign_flip_brute_force([1, 1, 1, -1]))


def test_bootstrap_interval_by_hand_and_against_the_t_interval():
    # [0, 1]: a resample's mean is 0, 0.5 or 1 with probability 1/4, 1/2, 1/4, so the 2.5 % and
    # 97.5 % percentiles are the extremes
    assert stats.bootstrap_interval([0.0, 1.0]) == pytest.approx((0.0, 1.0))
    # for many normal values the percentile interval approaches the t interval (both ~ mean ± 1.96 sd/sqrt(n))
    values = np.random.default_rng(3).normal(0.2, 1.0, 400)
    boot, t = stats.bootstrap_interval(values), stats.t_interval(values)
    half = t[1] - np.mean(values)
    assert abs(boot[0] - t[0]) < 0.1 * half and abs(boot[1] - t[1]) < 0.1 * half


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    values = [0.3, 0.1, -0.05, 0.2, 0.25, 0.1, 0.15, 0.2]
    first, again = stats.bootstrap_interval(values), stats.bootstrap_interval(values)
    assert first == again and first[0] < np.mean(values) < first[1]
    # a percentile interval lies inside the range of the data
    assert min(values) <= first[0] and first[1] <= max(values)
    assert stats.bootstrap_interval([0.2, 0.2, 0.2]) == (0.2, 0.2)
    assert stats.bootstrap_interval([0.2]) is None


def test_holm_by_hand():
    # sorted: 0.005 (x4), 0.01 (x3), 0.03 (x2), 0.04 (x1) -> 0.02, 0.03, 0.06, max(0.06, 0.04)
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, None, 0.01]) == [pytest.approx(0.5), None, pytest.approx(0.02)]
    assert stats.holm([0.6, 0.7]) == [pytest.approx(1.0), pytest.approx(1.0)]  # capped at 1
    assert stats.holm([]) == []


def test_t_test_p_of_degenerate_data():
    assert stats.t_test_p([0.0, 0.0, 0.0]) == 1.0
    assert stats.t_test_p([0.1, 0.1]) == 0.0
    assert stats.t_test_p([0.1]) is None


def test_nested_spread_by_hand():
    values = {0: [0.5, 0.7], 1: [0.8, 0.8], 2: [0.2, 0.4]}  # world means 0.6, 0.8, 0.3
    got = stats.nested_spread(values)
    assert got["mean"] == pytest.approx((0.6 + 0.8 + 0.3) / 3)
    assert got["sd_worlds"] == pytest.approx(np.std([0.6, 0.8, 0.3], ddof=1))
    within = np.mean([np.var([0.5, 0.7], ddof=1), 0.0, np.var([0.2, 0.4], ddof=1)])
    assert got["sd_within"] == pytest.approx(math.sqrt(within))
    assert got["var_world"] == pytest.approx(np.var([0.6, 0.8, 0.3], ddof=1) - within / 2)
    assert stats.nested_spread({0: [0.5], 1: [0.7]})["sd_within"] is None


def test_paired_difference_counts_and_rejects():
    got = stats.paired_difference([0.7, 0.6, 0.5], [0.5, 0.6, 0.6])
    assert (got["positive"], got["negative"], got["n"]) == (1, 1, 3)
    assert got["differences"] == pytest.approx([0.2, 0.0, -0.1])
    one = stats.paired_difference([0.7], [0.5])
    assert one["mean"] == pytest.approx(0.2) and one["ci_low"] is None and one["p_t"] is None
    assert stats.paired_difference([0.7, None], [0.5, 0.5])["mean"] is None
    with pytest.raises(ValueError):
        stats.paired_difference([0.1, 0.2], [0.1])
