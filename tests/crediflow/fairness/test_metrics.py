"""Fairness metrics: hand-computed values on tiny tables, and agreement with fairlearn."""

from __future__ import annotations

import numpy as np
import pytest

from crediflow.errors import InputError
from crediflow.fairness import (
    FairnessGaps,
    demographic_parity,
    equal_opportunity,
    equalized_odds,
    fairness_gaps,
    group_rates,
    rate_gap,
)

# Two groups of four rows. Group 0 predicts 1 on all four rows, group 1 on one of four.
# True-positive rates (label 1): group 0 2/2, group 1 1/2 -> gap 0.5.
# False-positive rates (label 0): group 0 2/2, group 1 0/2 -> gap 1.0.
GROUPS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
LABELS = np.array([1, 1, 0, 0, 1, 1, 0, 0])
PRED = np.array([1, 1, 1, 1, 1, 0, 0, 0])


def test_hand_computed_gaps_of_a_tiny_table():
    np.testing.assert_allclose(group_rates(PRED, GROUPS), [[0.0, 1.0], [0.75, 0.25]])
    assert demographic_parity(PRED, GROUPS) == pytest.approx(0.75)
    assert equalized_odds(PRED, LABELS, GROUPS) == pytest.approx((0.5 + 1.0) / 2)
    assert equalized_odds(PRED, LABELS, GROUPS, aggregate="max") == pytest.approx(1.0)
    assert equal_opportunity(PRED, LABELS, GROUPS) == pytest.approx(0.5)
    gaps = fairness_gaps(PRED, LABELS, GROUPS)
    assert gaps.astuple() == pytest.approx((0.75, 0.75, 0.5))


def test_three_groups_mean_of_pairs_and_max_minus_min():
    # positive rates 1/5, 3/5, 4/5: pair gaps 0.4, 0.6, 0.2 -> mean 0.4; max - min 0.6
    groups = np.repeat([0, 1, 2], 5)
    pred = np.array([1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0])
    assert demographic_parity(pred, groups) == pytest.approx(0.4)
    assert demographic_parity(pred, groups, aggregate="max") == pytest.approx(0.6)


def test_multi_class_predictions_average_the_class_columns():
    # group 0: classes 0,1,2 at 1/2, 1/2, 0; group 1: 0, 1/2, 1/2 -> |diff| 1/2, 0, 1/2
    rates = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    assert rate_gap(rates) == pytest.approx(1 / 3)
    assert rate_gap(rates, aggregate="max") == pytest.approx(0.5)
    pred, groups = np.array([0, 1, 1, 2]), np.array([0, 0, 1, 1])
    assert demographic_parity(pred, groups, num_classes=3) == pytest.approx(1 / 3)
    labels = np.array([2, 2, 2, 2])  # one label slice: equalized odds equals DP there
    assert equalized_odds(pred, labels, groups) == pytest.approx(1 / 3)
    assert equal_opportunity(pred, labels, groups, positive=2) == pytest.approx(0.5)


def random_table(seed: int, n: int = 400, groups: int = 2):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, n)
    y = rng.integers(0, 2, n)
    pred = (rng.random(n) < 0.3 + 0.15 * g + 0.2 * y).astype(np.int64)
    return pred, y, g


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("groups", [2, 3])
def test_agrees_with_fairlearn(seed, groups):
    metrics = pytest.importorskip("fairlearn.metrics")
    pred, y, g = random_table(seed, groups=groups)
    assert demographic_parity(pred, g, aggregate="max") == pytest.approx(
        metrics.demographic_parity_difference(y, pred, sensitive_features=g))
    assert equalized_odds(pred, y, g, aggregate="max") == pytest.approx(
        metrics.equalized_odds_difference(y, pred, sensitive_features=g))
    assert equal_opportunity(pred, y, g, aggregate="max") == pytest.approx(
        metrics.equal_opportunity_difference(y, pred, sensitive_features=g))
    if groups == 2:  # with two groups the paper's mean gaps are fairlearn's too
        assert demographic_parity(pred, g) == pytest.approx(
            metrics.demographic_parity_difference(y, pred, sensitive_features=g))
        assert equalized_odds(pred, y, g) == pytest.approx(
            metrics.equalized_odds_difference(y, pred, sensitive_features=g, agg="mean"))


def test_normalized_error_and_json_values():
    est, true = FairnessGaps(0.1, 0.3, 0.0), FairnessGaps(0.2, 0.2, 0.0)
    assert est.normalized_error(true).astuple() == pytest.approx((0.5, 0.5, 0.0))
    inf = FairnessGaps(0.1, 0.1, 0.1).normalized_error(FairnessGaps(0.0, 0.1, 0.1))
    assert inf.to_dict() == {"dp": None, "eod": 0.0, "eop": 0.0}


@pytest.mark.parametrize(("call", "message"), [
    (lambda: demographic_parity(PRED, GROUPS, num_groups=3), "group 2 has no rows"),
    (lambda: equalized_odds(PRED, LABELS, np.array([0, 0, 0, 0, 1, 1, 0, 0])),
     "group 1 has no rows among rows with label 0"),
    (lambda: demographic_parity(PRED[:5], GROUPS), "8 rows, but pred has 5"),
    (lambda: demographic_parity(PRED.astype(float), GROUPS), "integer class indices"),
    (lambda: demographic_parity(PRED - 1, GROUPS), "must lie in"),
    (lambda: equal_opportunity(PRED, LABELS, GROUPS, positive=2), "positive class"),
    (lambda: rate_gap(np.ones((2, 2)), aggregate="median"), "aggregate must be one of"),
])
def test_bad_input_is_refused_with_a_clear_message(call, message):
    with pytest.raises(InputError, match=message):
        call()
