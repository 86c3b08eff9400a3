import numpy as np
import pytest

from crediflow.errors import InputError
from crediflow.select.curation import curate_and_select, integer_bins
from crediflow.synthetic.noise import clustered_embeddings, noisy_labels


def test_integer_bins():
    assert integer_bins(np.array([1, 3, 5])) == [0.5, 1.5, 2.5, 3.5, 4.5, 5.5]
    with pytest.raises(InputError, match="not all integers"):
        integer_bins(np.array([1.5, 2.0]))


@pytest.fixture(scope="module")
def rated():
    """Five rating classes on clustered embeddings, 25% of ratings moved to a neighbour class."""
    x, true = clustered_embeddings(8000, 32, 5, clusters_per_class=3, latent_dim=4, seed=4)
    T = np.zeros((5, 5))
    for i in range(5):
        T[i, i] = 0.75
        nbrs = [j for j in (i - 1, i + 1) if 0 <= j < 5]
        T[i, nbrs] = 0.25 / len(nbrs)
    observed = noisy_labels(true, T, seed=5)
    return x, true + 1, observed + 1, T  # ratings 1..5


def test_curated_ratings_agree_with_the_truth_more_often(rated):
    x, true, observed, T = rated
    result = curate_and_select(observed.astype(float), x, 0.2, rounds=20, epochs=11)
    raw_agree = np.mean(observed == true)
    curated_agree = np.mean(result.curated_rating == true)
    assert raw_agree == pytest.approx(0.75, abs=0.02)
    assert curated_agree > 0.95 > raw_agree
    assert np.abs(result.T - T).sum() / 5 <= 0.05
    assert sum(result.moves.values()) == int(np.sum(result.curated_class != result.raw_class))


def test_selection_respects_budget_and_curated_order(rated):
    x, _, observed, _ = rated
    result = curate_and_select(observed.astype(float), x, 1000, rounds=5, epochs=3)
    assert result.selected.sum() == 1000
    chosen, rest = result.curated_class[result.selected], result.curated_class[~result.selected]
    assert chosen.min() >= rest.max()
    crossing = chosen.min()
    taken = result.long_tail[result.selected & (result.curated_class == crossing)]
    left = result.long_tail[~result.selected & (result.curated_class == crossing)]
    assert taken.min() >= left.max()
    again = curate_and_select(observed.astype(float), x, 1000, rounds=5, epochs=3)
    assert (again.selected == result.selected).all()
