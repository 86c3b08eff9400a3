import numpy as np
import pytest

from crediflow.core.knn import knn_graph, unit_rows
from crediflow.errors import InputError
from crediflow.synthetic.noise import clustered_embeddings


def brute_force(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(sims, idx, axis=1)


def test_exact_matches_brute_force_and_excludes_self():
    x = np.random.default_rng(0).standard_normal((400, 16))  # float64, not unit: normalised
    graph = knn_graph(x, 7)
    idx, sims = brute_force(x, 7)
    assert graph.method == "exact" and graph.recall is None
    assert graph.indices.dtype == np.int64 and graph.sims.dtype == np.float32
    np.testing.assert_array_equal(graph.indices, idx)
    np.testing.assert_allclose(graph.sims, sims, atol=1e-5)
    assert np.all(np.diff(graph.sims, axis=1) <= 0)


@pytest.fixture(scope="module")
def clustered():
    x, _ = clustered_embeddings(6000, 24, 2, clusters_per_class=4, latent_dim=4, seed=3)
    return x


def test_ivf_reports_recall_it_achieves(clustered):
    exact = knn_graph(clustered, 10, method="exact")
    ivf = knn_graph(clustered, 10, method="ivf", recall_sample=500)
    assert ivf.method == "ivf" and ivf.nlist > 1 and 1 <= ivf.nprobe < ivf.nlist
    assert ivf.recall >= 0.95
    # a found neighbour is a hit when it is at least as similar as the exact k-th one
    actual = np.mean(ivf.sims >= exact.sims[:, -1:] - 1e-5)
    assert actual >= 0.95
    assert abs(actual - ivf.recall) < 0.02  # the sample estimate is honest
    assert not (ivf.indices == np.arange(len(clustered))[:, None]).any()
    assert np.all(np.diff(ivf.sims, axis=1) <= 0)
    np.testing.assert_allclose(  # reported similarities are the true ones
        ivf.sims, np.einsum("ij,ikj->ik", clustered, clustered[ivf.indices]), atol=1e-5)


def test_auto_switches_to_ivf_above_exact_max_rows(clustered):
    assert knn_graph(clustered[:500], 5, exact_max_rows=1000).method == "exact"
    assert knn_graph(clustered, 5, exact_max_rows=1000, recall_sample=200).method == "ivf"


def test_ivf_is_deterministic_for_a_seed(clustered):
    a = knn_graph(clustered, 5, method="ivf", seed=7, recall_sample=200)
    b = knn_graph(clustered, 5, method="ivf", seed=7, recall_sample=200)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.sims, b.sims)
    assert a.recall == b.recall


@pytest.mark.parametrize("method", ["exact", "ivf"])
def test_duplicates_are_neighbours_but_a_row_never_is_its_own(method):
    base = np.random.default_rng(1).standard_normal((120, 8)).astype(np.float32)
    x = np.repeat(base, 15, axis=0)  # 15 copies of each vector: more than k + 1
    graph = knn_graph(x, 10, method=method, recall_sample=300)
    rows = np.arange(len(x))[:, None]
    assert not (graph.indices == rows).any()
    assert (graph.indices // 15 == rows // 15).all()  # all neighbours are copies
    np.testing.assert_allclose(graph.sims, 1.0, atol=1e-5)


def test_unit_rows_uses_unit_float32_input_as_is():
    x = np.random.default_rng(2).standard_normal((50, 4)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert unit_rows(x) is x
    y = unit_rows(3 * x.astype(np.float64))
    assert y.dtype == np.float32 and np.allclose(y, x, atol=1e-6)


@pytest.mark.parametrize(("change", "message"), [
    (lambda x: x.__setitem__((3, 1), np.nan), r"NaN or inf: rows 3\b"),
    (lambda x: x.__setitem__((5, 0), np.inf), r"NaN or inf: rows 5\b"),
    (lambda x: x.__setitem__(slice(7, 9), 0.0), r"all zeros .*rows 7, 8\b"),
])
def test_bad_rows_are_named(change, message):
    x = np.random.default_rng(3).standard_normal((20, 4))
    change(x)
    with pytest.raises(InputError, match=message) as err:
        knn_graph(x, 3)
    assert err.value.field == "embeddings"


@pytest.mark.parametrize(("x", "k", "message"), [
    (np.ones(10), 3, "2-D"),
    (np.ones((10, 3), dtype=np.int64), 3, "floating point"),
    (np.random.default_rng(0).random((4, 3)), 4, "need at least 5"),
    (np.random.default_rng(0).random((10, 3)), 0, "positive integer"),
])
def test_bad_input_is_rejected(x, k, message):
    with pytest.raises(InputError, match=message):
        knn_graph(x, k)


def test_unknown_method_is_rejected():
    with pytest.raises(InputError, match="unknown k-NN method"):
        knn_graph(np.eye(5), 2, method="hnsw")
