"""craft_plugin.mcq.stats against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from craft_plugin.mcq import stats


def test_predictions_take_the_first_of_tied_maxima():
    assert stats.predictions([[0.0, 2.0, 1.0], [-1.0, -1.0], [3.0, -5.0, 3.0]]).tolist() == [1, 0, 0]


def test_margins_are_correct_minus_best_wrong():
    scores = [[-1.0, -3.0, -2.0], [-4.0, -1.5, -0.5], [0.0, 0.0]]
    # q0: -1 - (-2) = 1;  q1: -1.5 - (-0.5) = -1;  q2: 0 - 0 = 0
    assert stats.margins(scores, [0, 1, 1]).tolist() == [1.0, -1.0, 0.0]


def test_mcnemar_exact_hand_values():
    assert stats.mcnemar_exact(0, 0) == 1.0
    # n = 10, k = 1: 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024
    assert stats.mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    assert stats.mcnemar_exact(9, 1) == pytest.approx(22 / 1024)
    # n = 6, k = 0: 2 / 64
    assert stats.mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    # balanced: capped at 1
    assert stats.mcnemar_exact(5, 5) == 1.0
    # n = 3, k = 1: 2 * (1 + 3) / 8 = 1.0
    assert stats.mcnemar_exact(1, 2) == 1.0
    with pytest.raises(ValueError):
        stats.mcnemar_exact(-1, 2)


def test_bootstrap_ci_constant_values_and_seeded_reproducibility():
    assert stats.bootstrap_ci([1.0] * 7) == (1.0, 1.0)
    x = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert stats.bootstrap_ci(x, seed=3) == stats.bootstrap_ci(x, seed=3)
    lo, hi = stats.bootstrap_ci(x, seed=3)
    assert 0.0 <= lo < np.mean(x) < hi <= 1.0


def test_bootstrap_ci_follows_its_documented_recipe():
    x = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    rng = np.random.default_rng(11)
    means = x[rng.integers(0, 5, size=(500, 5))].mean(axis=1)
    expected = tuple(np.quantile(means, [0.05, 0.95]))
    assert stats.bootstrap_ci(x, level=0.9, n_resamples=500, seed=11) == pytest.approx(expected)


def test_bootstrap_ci_two_values_by_hand():
    # Two values 0 and 1, one resample each: every resampled mean is 0, 0.5 or 1.
    lo, hi = stats.bootstrap_ci([0.0, 1.0], n_resamples=4000, seed=0)
    assert (lo, hi) == (0.0, 1.0)


def test_paired_bootstrap_identical_is_zero():
    a = [1.0, 0.0, 1.0, 1.0]
    assert stats.paired_bootstrap_ci(a, a) == (0.0, 0.0)
    with pytest.raises(ValueError, match="differ in length"):
        stats.paired_bootstrap_ci(a, a[:3])


def test_summarize_hand_example():
    sums = [[-1.0, -2.0], [-3.0, -1.0], [-1.0, -5.0], [-2.0, -4.0]]
    ntok = [[1, 4], [6, 1], [1, 1], [4, 1]]
    means = [[s / n for s, n in zip(row, nr)] for row, nr in zip(sums, ntok)]
    answers = [0, 1, 1, 1]
    m = stats.summarize(sums, means, answers, normalize="none")
    # sum argmax: 0, 1, 0, 0 → hits 1, 1, 0, 0
    assert (m.correct, m.n, m.acc) == (2, 4, 0.5)
    # mean: q0 [-1, -0.5] → 1; q1 [-0.5, -1] → 0; q2 [-1, -5] → 0; q3 [-0.5, -4] → 0 → hits 0, 0, 0, 0
    assert m.acc_norm == 0.0
    # margins (sum): 1, 2, -4, -2 → mean -0.75
    assert m.avg_margin == pytest.approx(-0.75)
    ml = stats.summarize(sums, means, answers, normalize="length")
    assert ml.accuracy == 0.0 and ml.correct == 0
    # margins (mean): q0 -1-(-0.5) = -0.5; q1 -1-(-0.5) = -0.5; q2 -5-(-1) = -4; q3 -4-(-0.5) = -3.5 → -2.125
    assert ml.avg_margin == pytest.approx(-2.125)


def test_compare_hand_example():
    a = [True, True, False, False, True]
    b = [True, False, True, True, True]
    c = stats.compare(a, b, [1.0, 1.0, -1.0, -1.0, 1.0], [1.0, -1.0, 2.0, 2.0, 1.0])
    assert (c.a_only, c.b_only) == (1, 2)
    assert c.accuracy_diff == pytest.approx(0.2)
    assert c.avg_margin_diff == pytest.approx((5.0 - 1.0) / 5)
    assert c.mcnemar_p == 1.0  # n = 3, k = 1
    same = stats.compare(a, a, [0.5] * 5, [0.5] * 5)
    assert (same.accuracy_diff, same.accuracy_diff_ci, same.mcnemar_p) == (0.0, (0.0, 0.0), 1.0)
    assert not math.isnan(same.avg_margin_diff) and same.avg_margin_diff == 0.0
