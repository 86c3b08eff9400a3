import numpy as np
import pytest

from crediflow.errors import InputError
from crediflow.select.selection import (
    budget_count,
    class_ratings,
    long_tail_scores,
    rating_classes,
    select_top,
)


def test_rating_classes_by_edges():
    edges = [0.5, 1.5, 2.5, 3.5, 4.5, 5.5]
    assert rating_classes(np.array([1, 2, 3, 4, 5, 0.5, 5.5]), edges).tolist() == [
        0, 1, 2, 3, 4, 0, 4]


def test_ratings_outside_the_bins_name_the_first_row():
    with pytest.raises(InputError, match=r"2 rating\(s\) outside the bins \[1, 10\], first at "
                                         r"row 2 \(11.0\)"):
        rating_classes(np.array([3, 11, np.nan]), [1, 5, 10])


def test_class_ratings_are_the_median_of_members():
    classes = np.array([0, 0, 0, 2, 2])
    assert class_ratings(classes, np.array([1, 2, 9, 7, 8]), 3).tolist()[::2] == [2, 7.5]


def test_long_tail_is_zero_for_duplicates_and_grows_with_distance():
    sims = np.array([[1.0, 1.0], [0.5, 0.5], [-1.0, -1.0]])
    lt = long_tail_scores(sims)
    assert lt[0] == 0 and lt[0] < lt[1] < lt[2]
    assert lt[2] == pytest.approx(2 / (1 + np.exp(-2)) - 1)


@pytest.mark.parametrize(("budget", "count"), [(3, 3), (0.5, 5), (10, 10), (0.01, 1)])
def test_budget_count(budget, count):
    assert budget_count(budget, 10) == count


@pytest.mark.parametrize(("budget", "message"), [(0, "positive"), (-1, "positive"),
                                                 (11, "larger than the data"),
                                                 (2.5, "row count")])
def test_bad_budgets(budget, message):
    with pytest.raises(InputError, match=message):
        budget_count(budget, 10)


def test_selection_takes_buckets_top_down_and_orders_the_crossing_bucket_by_long_tail():
    scores = np.array([2, 1, 2, 0, 1, 1, 2])
    long_tail = np.array([0.1, 0.9, 0.2, 0.99, 0.5, 0.7, 0.3])
    selected = select_top(scores, long_tail, 5)
    # all of bucket 2 (rows 0, 2, 6), then the two most long-tail of bucket 1 (rows 1, 5)
    assert np.flatnonzero(selected).tolist() == [0, 1, 2, 5, 6]


def test_selection_ties_are_seeded():
    scores, long_tail = np.zeros(100), np.zeros(100)
    a, b = select_top(scores, long_tail, 10, seed=1), select_top(scores, long_tail, 10, seed=1)
    assert (a == b).all() and a.sum() == 10
    assert not (select_top(scores, long_tail, 10, seed=2) == a).all()
