
from pathlib import Path

import numpy as np
import pytest
import torch

from crediflow.core.hoc import (
    _loss_and_grad,
    consensus_from_graph,
    consensus_from_triplets,
    credibility_score,
    fit_transition,
)
from crediflow.core.knn import KnnGraph, knn_graph
from crediflow.errors import InputError
from crediflow.synthetic.noise import clustered_embeddings, noisy_labels

# MIT licence: tests/data/hoc_three_labels.LICENSE.md
REFERENCE = Path(__file__).resolve().parents[2] / "data" / "hoc_three_labels.csv"


def symmetric(k: int, e: float) -> np.ndarray:
    t = np.full((k, k), e / (k - 1))
    np.fill_diagonal(t, 1 - e)
    return t


def next_class(k: int, e: float) -> np.ndarray:
    """Asymmetric noise: a wrong label is always the next class."""
    t = (1 - e) * np.eye(k)
    t[np.arange(k), (np.arange(k) + 1) % k] += e
    return t


def test_reference_triplets_give_the_published_transition_matrix():
    triplets = np.loadtxt(REFERENCE, delimiter=",", skiprows=1, dtype=np.int64)
    assert triplets.shape == (200, 3)
    T, p = fit_transition(*consensus_from_triplets(triplets, 2))
    np.testing.assert_allclose(T, [[0.877, 0.123], [0.144, 0.856]], atol=0.01)
    assert p.shape == (2,) and abs(p.sum() - 1) < 1e-9


@pytest.mark.parametrize("k", [2, 3, 6])
def test_closed_form_gradient_matches_torch_autograd(k):
    rng = np.random.default_rng(k)
    a, b = rng.normal(size=(k, k)), rng.normal(size=k)
    target = [c / c.sum() for c in (rng.random((k,) * o) for o in (1, 2, 3))]
    loss, _, _, (grad_a, grad_b) = _loss_and_grad(a, b, target)

    at = torch.tensor(a, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    t, p = torch.softmax(at, dim=1), torch.softmax(bt, dim=0)
    implied = (p @ t, torch.einsum("i,ij,il->jl", p, t, t),
               torch.einsum("i,ij,il,im->jlm", p, t, t, t))
    ref = sum(torch.linalg.vector_norm(m - torch.tensor(c))
              for m, c in zip(implied, target, strict=True))
    ref.backward()
    assert loss == pytest.approx(ref.item(), abs=1e-12)
    np.testing.assert_allclose(grad_a, at.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(grad_b, bt.grad.numpy(), atol=1e-12)


def test_exact_consensus_recovers_t_and_p_in_label_order():
    # the consensus that T and p imply, fitted back: no sampling noise at all
    T = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.25, 0.05, 0.7]])
    p = np.array([0.5, 0.3, 0.2])
    c = (p @ T, np.einsum("i,ij,il->jl", p, T, T), np.einsum("i,ij,il,im->jlm", p, T, T, T))
    T_hat, p_hat = fit_transition(*c, steps=3000)
    np.testing.assert_allclose(T_hat, T, atol=0.01)
    np.testing.assert_allclose(p_hat, p, atol=0.01)


def test_credibility_score():
    assert credibility_score(np.eye(4)) == pytest.approx(1.0)
    assert credibility_score(np.eye(3)[[1, 2, 0]]) == pytest.approx(0.0)
    assert credibility_score(symmetric(2, 0.2)) == pytest.approx(0.8)


def test_graph_consensus_counts_each_row_with_its_two_nearest_neighbours():
    labels = np.array([0, 1, 1, 0, 1])
    indices = np.array([[1, 2, 3], [2, 0, 4], [0, 4, 1], [4, 0, 2], [3, 1, 0]])
    graph = KnnGraph(indices, np.ones(indices.shape, np.float32), "exact", None)
    c1, c2, c3 = consensus_from_graph(labels, graph, 2, rounds=3, sample_fraction=1.0)
    triplets = np.stack([labels, labels[indices[:, 0]], labels[indices[:, 1]]], axis=1)
    for got, want in zip((c1, c2, c3), consensus_from_triplets(triplets, 2), strict=True):
        np.testing.assert_allclose(got, want)


def test_subsampled_rounds_take_neighbours_from_the_drawn_rows_only():
    # row i's neighbours are i+1, ..., i+6 and labels alternate, so the nearest neighbour
    # always has the other label; a same-label pair can only come from skipping an undrawn one
    n = 200
    labels = np.arange(n) % 2
    indices = np.stack([(np.arange(n) + s) % n for s in (1, 2, 3, 4, 5, 6)], axis=1)
    graph = KnnGraph(indices, np.ones(indices.shape, np.float32), "exact", None)
    c1, c2, c3 = consensus_from_graph(labels, graph, 2, rounds=20, sample_fraction=0.5)
    assert c1.sum() == pytest.approx(1.0) and c3.sum() == pytest.approx(1.0)
    same_label = c2[0, 0] + c2[1, 1]
    # first drawn neighbour at an even distance: 1/2 * (1/2 + 1/8 + 1/32) = 1/3
    assert 0.28 < same_label < 0.39
    full = consensus_from_graph(labels, graph, 2, rounds=1, sample_fraction=1.0)[1]
    assert full[0, 0] == full[1, 1] == 0


@pytest.fixture(scope="module")
def two_classes():
    x, y = clustered_embeddings(10_000, 32, 2, clusters_per_class=4, latent_dim=4,
                                prior=[0.6, 0.4], seed=1)
    return y, knn_graph(x, 10)


@pytest.fixture(scope="module")
def six_classes():
    x, y = clustered_embeddings(16_000, 32, 6, clusters_per_class=3, latent_dim=4, seed=1)
    return y, knn_graph(x, 10)


CASES = [
    ("two_classes", symmetric(2, 0.1)),
    ("two_classes", symmetric(2, 0.3)),
    ("two_classes", np.array([[0.9, 0.1], [0.25, 0.75]])),
    ("two_classes", np.array([[0.7, 0.3], [0.1, 0.9]])),
    ("six_classes", symmetric(6, 0.1)),
    ("six_classes", symmetric(6, 0.3)),
    ("six_classes", next_class(6, 0.2)),
    ("six_classes", next_class(6, 0.3)),
]


@pytest.mark.parametrize(("data", "T"), CASES,
                         ids=[f"{d}-{i}" for i, (d, _) in enumerate(CASES)])
def test_hoc_recovers_known_noise_from_a_graph(request, data, T):
    y, graph = request.getfixturevalue(data)
    k = T.shape[0]
    noisy = noisy_labels(y, T, seed=5)
    T_hat, p_hat = fit_transition(*consensus_from_graph(noisy, graph, k, seed=0))
    assert np.abs(T_hat - T).sum() / k <= 0.05
    assert abs(credibility_score(T_hat) - credibility_score(T)) <= 0.03
    np.testing.assert_allclose(p_hat, np.bincount(y, minlength=k) / y.size, atol=0.03)


def test_graph_consensus_is_deterministic_for_a_seed(two_classes):
    y, graph = two_classes
    noisy = noisy_labels(y, symmetric(2, 0.2), seed=1)
    a = consensus_from_graph(noisy, graph, 2, rounds=5, seed=3)
    b = consensus_from_graph(noisy, graph, 2, rounds=5, seed=3)
    c = consensus_from_graph(noisy, graph, 2, rounds=5, seed=4)
    for x, z in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, z)
    assert not np.array_equal(a[2], c[2])


@pytest.mark.parametrize(("triplets", "k", "message"), [
    (np.zeros((5, 2), dtype=int), 2, r"shape \(M, 3\)"),
    (np.array([[0, 1, 2]]), 2, r"lie in \[0, 2\)"),
    (np.array([[0.0, 1.0, 1.0]]), 2, "integer"),
    (np.zeros((3, 3), dtype=int), 1, "num_classes"),
])
def test_bad_triplets_are_rejected(triplets, k, message):
    with pytest.raises(InputError, match=message):
        consensus_from_triplets(triplets, k)


def test_bad_consensus_shapes_are_rejected():
    with pytest.raises(InputError, match="consensus shapes"):
        fit_transition(np.ones(2) / 2, np.ones((3, 3)), np.ones((2, 2, 2)))
