import numpy as np
import pytest

from crediflow.core.detect import (
    Detection,
    combine_detections,
    flag_rates,
    knn_detect,
    out_of_fold_probs,
    probe_detect,
)
from crediflow.core.hoc import consensus_from_graph, fit_transition
from crediflow.core.knn import knn_graph
from crediflow.errors import InputError
from crediflow.synthetic.noise import clustered_embeddings, noisy_labels


def symmetric(k: int, e: float) -> np.ndarray:
    t = np.full((k, k), e / (k - 1))
    np.fill_diagonal(t, 1 - e)
    return t


def quality(detection: Detection, noisy: np.ndarray, true: np.ndarray) -> dict[str, float]:
    wrong, flagged = noisy != true, detection.is_issue
    hits = flagged & wrong
    return {"precision": hits.sum() / max(flagged.sum(), 1),
            "recall": hits.sum() / wrong.sum(),
            "fixed": np.mean(detection.suggested[hits] == true[hits])}


@pytest.fixture(scope="module")
def data():
    """Embeddings, true labels and graph, per number of classes."""
    out = {}
    for k, n, clusters in ((2, 10_000, 4), (6, 12_000, 3)):
        x, y = clustered_embeddings(n, 32, k, clusters_per_class=clusters, latent_dim=4, seed=2)
        out[k] = (x, y, knn_graph(x, 10))
    return out


def estimate(noisy, graph, k):
    return fit_transition(*consensus_from_graph(noisy, graph, k, seed=0))


def test_flag_rates_follow_hoc_and_are_clipped():
    T = symmetric(2, 0.2)
    np.testing.assert_allclose(flag_rates(T, [0.5, 0.5], [0.5, 0.5]), [0.2, 0.2])
    # rows labelled 0: 0.9*0.6 of 0.62 are right
    T = np.array([[0.9, 0.1], [0.2, 0.8]])
    p = np.array([0.6, 0.4])
    np.testing.assert_allclose(flag_rates(T, p, p @ T), 1 - np.diag(T) * p / (p @ T))
    np.testing.assert_allclose(flag_rates(np.eye(3), [0.5, 0.5, 0.0], [0.5, 0.5, 0.0]),
                               [0.05, 0.05, 0.05])  # clean classes and an absent one
    np.testing.assert_allclose(flag_rates(np.eye(2)[[1, 0]], [0.5, 0.5], [0.5, 0.5]),
                               [0.95, 0.95])


@pytest.mark.parametrize("k", [2, 6])
def test_knn_finds_and_fixes_20_percent_symmetric_noise(data, k):
    x, y, graph = data[k]
    noisy = noisy_labels(y, symmetric(k, 0.2), seed=3)
    T, p = estimate(noisy, graph, k)
    det = knn_detect(noisy, graph, T, p, seed=0)
    q = quality(det, noisy, y)
    assert q["precision"] >= 0.9 and q["recall"] >= 0.9, q
    assert q["fixed"] >= 0.95, q
    assert det.suggested.dtype == np.int64
    np.testing.assert_array_equal(det.suggested[~det.is_issue], noisy[~det.is_issue])
    assert (det.suggested[det.is_issue] != noisy[det.is_issue]).all()
    for score in (det.label_score, det.confidence):
        assert score.shape == (y.size,) and score.min() >= 0 and score.max() <= 1
    assert det.label_score[noisy != y].mean() < 0.4 < det.label_score[noisy == y].mean()
    assert det.class_scores.shape == (y.size, k)


def test_knn_flags_almost_nothing_on_clean_labels(data):
    x, y, graph = data[2]
    T, p = estimate(y, graph, 2)
    det = knn_detect(y, graph, T, p)
    assert det.is_issue.mean() < 0.02
    # even when told to flag 5% of each class (the floor), it flags no row whose own label
    # wins its vote
    det = knn_detect(y, graph, np.eye(2), np.bincount(y) / y.size)
    np.testing.assert_allclose(det.flag_rates, [0.05, 0.05])
    assert det.is_issue.mean() < 0.02


def test_knn_detection_is_deterministic_for_a_seed(data):
    x, y, graph = data[2]
    noisy = noisy_labels(y, symmetric(2, 0.3), seed=4)
    T, p = estimate(noisy, graph, 2)
    a, b = (knn_detect(noisy, graph, T, p, epochs=5, seed=1) for _ in range(2))
    for field in ("is_issue", "label_score", "suggested", "confidence"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_probe_finds_20_percent_symmetric_noise(data):
    x, y, graph = data[2]
    noisy = noisy_labels(y, symmetric(2, 0.2), seed=3)
    T, p = estimate(noisy, graph, 2)
    det = probe_detect(noisy, x, T, p, seed=0)
    q = quality(det, noisy, y)
    assert q["precision"] >= 0.9 and q["recall"] >= 0.9, q
    assert det.class_scores.shape == (y.size, 2)
    np.testing.assert_allclose(det.class_scores.sum(axis=1), 1.0, atol=1e-5)
    again = probe_detect(noisy, x, T, p, seed=0)
    np.testing.assert_array_equal(det.is_issue, again.is_issue)


def test_out_of_fold_probs_are_seeded_and_cover_absent_classes(data):
    x, y, graph = data[6]
    noisy = noisy_labels(y, symmetric(6, 0.2), seed=3)
    noisy[noisy == 5] = 4  # class 5 absent: its column stays 0
    probs = out_of_fold_probs(noisy, x, 6, folds=3, seed=1)
    assert probs.shape == (y.size, 6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert (probs[:, 5] == 0).all()
    assert np.mean(probs.argmax(axis=1) == noisy) > 0.7
    np.testing.assert_array_equal(probs, out_of_fold_probs(noisy, x, 6, folds=3, seed=1))
    assert not np.array_equal(probs, out_of_fold_probs(noisy, x, 6, folds=3, seed=2))


def test_combined_detectors(data):
    x, y, graph = data[2]
    noisy = noisy_labels(y, symmetric(2, 0.2), seed=3)
    T, p = estimate(noisy, graph, 2)
    knn, probe = knn_detect(noisy, graph, T, p), probe_detect(noisy, x, T, p)
    agree = combine_detections(knn, probe, noisy, rule="agree")
    either = combine_detections(knn, probe, noisy, rule="any")
    mean = combine_detections(knn, probe, noisy, rule="mean")
    np.testing.assert_array_equal(agree.is_issue, knn.is_issue & probe.is_issue)
    np.testing.assert_array_equal(either.is_issue, knn.is_issue | probe.is_issue)
    q = quality(mean, noisy, y)
    assert q["precision"] >= 0.9 and q["recall"] >= 0.9, q
    for det in (agree, either, mean):
        np.testing.assert_array_equal(det.suggested[~det.is_issue], noisy[~det.is_issue])
    with pytest.raises(InputError, match="unknown combine rule"):
        combine_detections(knn, probe, noisy, rule="vote")


def test_bad_detector_input_is_rejected(data):
    x, y, graph = data[2]
    T, p = np.eye(2), np.array([0.5, 0.5])
    with pytest.raises(InputError, match="labels for a graph"):
        knn_detect(y[:-1], graph, T, p)
    with pytest.raises(InputError, match=r"lie in \[0, 2\)"):
        knn_detect(y + 1, graph, T, p)
    with pytest.raises(InputError, match="epochs"):
        knn_detect(y, graph, T, p, epochs=0)
    with pytest.raises(InputError, match="p must have shape"):
        knn_detect(y, graph, T, np.ones(3) / 3)
    with pytest.raises(InputError, match="embeddings must have shape"):
        probe_detect(y, x[:-1], T, p)
