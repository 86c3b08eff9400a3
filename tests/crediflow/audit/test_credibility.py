
from pathlib import Path

import numpy as np
import pytest

from crediflow.audit.credibility import AuditResult, audit_labels, transition_from_triplets
from crediflow.core.hoc import credibility_score
from crediflow.errors import ConfigError, InputError
from crediflow.synthetic.noise import clustered_embeddings, noisy_labels

# MIT licence: tests/data/hoc_three_labels.LICENSE.md
REFERENCE = Path(__file__).resolve().parents[2] / "data" / "hoc_three_labels.csv"
NAMES = np.array(["harmful", "harmless"])


@pytest.fixture(scope="module")
def dataset():
    x, y = clustered_embeddings(8000, 32, 2, clusters_per_class=4, latent_dim=4, seed=11)
    return x, y


@pytest.fixture(scope="module")
def noisy_audit(dataset):
    x, y = dataset
    T = np.array([[0.8, 0.2], [0.2, 0.8]])
    noisy = noisy_labels(y, T, seed=1)
    return noisy, audit_labels(NAMES[noisy].tolist(), x, seed=0), T


def test_audit_of_noisy_labels(dataset, noisy_audit):
    x, y = dataset
    noisy, result, T = noisy_audit
    assert isinstance(result, AuditResult)
    assert result.classes == ["harmful", "harmless"]  # sorted distinct labels
    assert result.knn_method == "exact" and result.knn_recall is None
    assert np.abs(result.T - T).sum() / 2 <= 0.05
    assert abs(result.credibility - credibility_score(T)) <= 0.03
    det = result.detection
    wrong = noisy != y
    assert (det.is_issue & wrong).sum() / det.is_issue.sum() >= 0.9
    assert (det.is_issue & wrong).sum() / wrong.sum() >= 0.9
    assert np.mean(det.suggested[det.is_issue & wrong] == y[det.is_issue & wrong]) >= 0.95
    assert result.counts["harmful"]["rows"] == int((noisy == 0).sum())
    assert sum(c["flagged"] for c in result.counts.values()) == int(det.is_issue.sum())
    flagged_harmful = int((det.is_issue & (noisy == 0)).sum())
    assert result.counts["harmful"]["suggested"] == {"harmless": flagged_harmful}


def test_audit_of_clean_labels_is_credible_and_flags_little(dataset):
    x, y = dataset
    result = audit_labels(NAMES[y], x)
    assert result.credibility >= 0.95
    assert result.detection.is_issue.mean() < 0.02


def test_audit_is_deterministic_for_a_seed(dataset, noisy_audit):
    x, _ = dataset
    noisy, first, _ = noisy_audit
    again = audit_labels(NAMES[noisy].tolist(), x, seed=0)
    np.testing.assert_array_equal(first.T, again.T)
    np.testing.assert_array_equal(first.detection.is_issue, again.detection.is_issue)
    np.testing.assert_array_equal(first.detection.confidence, again.detection.confidence)


def test_classes_fix_the_order_of_t_and_of_suggestions(dataset, noisy_audit):
    x, _ = dataset
    noisy, default, _ = noisy_audit
    result = audit_labels(NAMES[noisy], x, classes=["harmless", "harmful"], rounds=10,
                          epochs=5)
    assert result.classes == ["harmless", "harmful"]
    np.testing.assert_allclose(result.T, default.T[::-1, ::-1], atol=0.03)
    flagged = result.detection.is_issue
    assert (NAMES[noisy][flagged] != np.array(result.classes)[result.detection.suggested[
        flagged]]).all()


@pytest.mark.parametrize("detector", ["probe", "both"])
def test_other_detectors(dataset, noisy_audit, detector):
    x, y = dataset
    noisy, _, _ = noisy_audit
    det = audit_labels(NAMES[noisy], x, detector=detector, rounds=10, epochs=5).detection
    wrong = noisy != y
    assert (det.is_issue & wrong).sum() / det.is_issue.sum() >= 0.9
    assert (det.is_issue & wrong).sum() / wrong.sum() >= 0.9


def test_transition_from_triplets_matches_the_reference():
    triplets = np.loadtxt(REFERENCE, delimiter=",", skiprows=1, dtype=np.int64)
    T, p = transition_from_triplets(triplets, 2)
    np.testing.assert_allclose(T, [[0.877, 0.123], [0.144, 0.856]], atol=0.01)


def test_noisy_labels_follow_t():
    y = np.repeat([0, 1, 2], 20_000)
    T = np.array([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0], [0.3, 0.3, 0.4]])
    noisy = noisy_labels(y, T, seed=0)
    realised = np.stack([np.bincount(noisy[y == i], minlength=3) / 20_000 for i in range(3)])
    np.testing.assert_allclose(realised, T, atol=0.01)
    np.testing.assert_array_equal(noisy, noisy_labels(y, T, seed=0))


def test_clustered_embeddings_are_unit_rows_of_known_classes():
    x, y = clustered_embeddings(500, 16, 3, prior=[0.5, 0.3, 0.2], seed=0)
    assert x.dtype == np.float32 and x.shape == (500, 16)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert set(np.unique(y)) == {0, 1, 2}
    x2, y2 = clustered_embeddings(500, 16, 3, prior=[0.5, 0.3, 0.2], seed=0)
    np.testing.assert_array_equal(x, x2)


SMALL = np.random.default_rng(0).standard_normal((30, 4))


@pytest.mark.parametrize(("labels", "embeddings", "kwargs", "message"), [
    (["a", None, "b", float("nan")] + ["a", "b"] * 13, SMALL, {}, r"2 of 30 rows have no label"),
    (["a"] * 30, SMALL, {}, "at least 2 classes"),
    (["a"] * 25 + ["b"] * 5, SMALL, {}, r"too few in 'b' \(5 rows\)"),
    (["a", "b"] * 15, SMALL[:20], {}, "one embedding row per label"),
    (["a", "b", "c"] * 10, SMALL, {"classes": ["a", "b"], "k": 3}, r"outside classes"),
    (["a", "b"] * 15, SMALL, {"classes": ["a", "b", "c"], "k": 3}, r"too few in 'c' \(0 rows\)"),
    (None, SMALL, {}, "no label column"),
])
def test_bad_input_names_the_cause(labels, embeddings, kwargs, message):
    with pytest.raises(InputError, match=message) as err:
        audit_labels(labels, embeddings, **kwargs)
    assert err.value.field in {"label", "embeddings", "detector", "classes"}


def test_an_unknown_detector_is_a_config_error():
    with pytest.raises(ConfigError, match="field 'detector': 'svm' is not allowed; choose one "
                                          "of knn, probe, both"):
        audit_labels(["a", "b"] * 15, SMALL, detector="svm")


def test_audit_warns_when_t_is_not_diagonally_dominant():
    import dataclasses

    from crediflow.audit.table import audit_label_column, audit_warnings

    clustered, y = clustered_embeddings(600, 16, 2, clusters_per_class=3, latent_dim=4, seed=1)
    audit = audit_label_column(np.array(["a", "b"], dtype=object)[y], clustered)
    assert audit.warnings == []
    swapped = dataclasses.replace(audit.result, T=np.array([[0.3, 0.7], [0.2, 0.8]]))
    (warning,) = audit_warnings(swapped)
    assert "not diagonally dominant for a:" in warning
