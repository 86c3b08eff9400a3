"""Data credibility of a label column: one call from labels and embeddings to the noise
transition matrix, a credibility score and per-row label issues (cleanlab-like, numpy in
and out)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from crediflow.audit.config import AuditConfig
from crediflow.core.detect import (
    Detection,
    combine_detections,
    knn_detect,
    out_of_fold_probs,
    probe_detect,
)
from crediflow.core.hoc import (
    consensus_from_graph,
    consensus_from_triplets,
    credibility_score,
    fit_transition,
)
from crediflow.core.knn import graph_warnings, knn_graph
from crediflow.errors import InputError


@dataclass
class AuditResult:
    """The audit of one label column."""

    T: np.ndarray  # (K, K) T[i, j] = P(observed label j | true label i)
    p: np.ndarray  # (K,) true class prior
    credibility: float  # 1 - ||T - I||_F / sqrt(2K): 1 clean, 0 permuted
    detection: Detection  # per-row verdicts; class indices refer to `classes`
    classes: list[str]
    knn_method: str  # "exact" or "ivf"
    knn_recall: float | None  # measured recall@k of the IVF search (None when exact)
    counts: dict  # per class: rows, flagged, and the classes suggested for its flagged rows
    warnings: list[str] = field(default_factory=list)  # the data cannot support the estimates


# Weight of the probe's class probabilities next to the unit embedding in the probe graph.
PROBE_WEIGHT = 4.0


def audit_labels(
    labels: Sequence[str] | np.ndarray,
    embeddings: np.ndarray,
    *,
    k: int = 10,
    rounds: int = 50,
    epochs: int = 21,
    detector: str = "probe",
    seed: int = 0,
    classes: Sequence[str] | None = None,
) -> AuditResult:
    """Estimate how trustworthy `labels` are and which of them look wrong.

    `labels` (N,) are class names (compared as strings); `classes` fixes the class order
    (default: the sorted distinct labels). `embeddings` (N, d) are one vector per row; the
    k-NN graph over them is built once and serves HOC (`rounds`) and the k-NN detector
    (`epochs`). `detector`: "knn", "probe" (cross-validated linear probe) or "both"
    (`combine_detections` rule "mean").
    """
    names, y = _encode_labels(labels, classes)
    AuditConfig(k=k, rounds=rounds, epochs=epochs, detector=detector, seed=seed)
    shape = getattr(embeddings, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != y.size:
        raise InputError(f"{y.size} labels but embeddings of shape {shape}; need one "
                         "embedding row per label", field="embeddings")
    sizes = np.bincount(y, minlength=len(names))
    small = [f"{names[j]!r} ({sizes[j]} rows)" for j in np.flatnonzero(sizes < k + 1)]
    if small:
        raise InputError(f"every class needs at least k+1={k + 1} rows; too few in "
                         f"{', '.join(small)}", field="label")

    probs = None
    features = embeddings
    if detector != "knn":
        # Deviation from the paper, for labels the embedding does not cluster by (sentiment
        # in a topic embedding): the graph that HOC and the votes use is built on the
        # embedding joined with the probe's out-of-fold class probabilities, so that
        # neighbours share the true label more often and 2-NN clusterability holds better.
        probs = out_of_fold_probs(y, embeddings, len(names), seed=seed)
        features = np.concatenate([np.asarray(embeddings, np.float32),
                                   PROBE_WEIGHT * probs.astype(np.float32)], axis=1)
        features /= np.linalg.norm(features, axis=1, keepdims=True)
    graph = knn_graph(features, k, seed=seed)
    consensus = consensus_from_graph(y, graph, len(names), rounds=rounds, seed=seed)
    T, p = fit_transition(*consensus, seed=seed)
    if detector == "knn":
        detection = knn_detect(y, graph, T, p, epochs=epochs, seed=seed)
    elif detector == "probe":
        detection = probe_detect(y, embeddings, T, p, seed=seed, probs=probs)
    else:
        detection = combine_detections(knn_detect(y, graph, T, p, epochs=epochs, seed=seed),
                                       probe_detect(y, embeddings, T, p, seed=seed,
                                                    probs=probs), y, seed=seed)
    return AuditResult(T, p, credibility_score(T), detection, names, graph.method,
                       graph.recall, _counts(y, detection, names), graph_warnings(graph))


def transition_from_triplets(triplets: np.ndarray, num_classes: int,
                             **fit_kwargs) -> tuple[np.ndarray, np.ndarray]:
    """T and p from (M, 3) rows of three noisy labels of the same item (HOC without a
    graph); `fit_kwargs` go to `fit_transition`."""
    return fit_transition(*consensus_from_triplets(triplets, num_classes), **fit_kwargs)


def _encode_labels(labels: Sequence[str] | np.ndarray,
                   classes: Sequence[str] | None) -> tuple[list[str], np.ndarray]:
    """Class names and each row's class index; errors for missing or unknown labels."""
    if labels is None:
        raise InputError("no label column to audit", field="label")
    values = np.asarray(labels, dtype=object)
    if values.ndim != 1:
        raise InputError(f"labels must be 1-D, got shape {values.shape}", field="label")
    missing = np.asarray(pd.isna(values), dtype=bool)
    if missing.any():
        raise InputError(f"{int(missing.sum())} of {values.size} rows have no label (None/NaN)"
                         f", e.g. row {int(np.flatnonzero(missing)[0])}; drop or label them",
                         field="label")
    text = values.astype(str)
    if classes is None:
        names, y = np.unique(text, return_inverse=True)
        names = [str(c) for c in names]
    else:
        names = [str(c) for c in classes]
        if len(set(names)) != len(names):
            raise InputError(f"classes has duplicates: {names}", field="classes")
        lookup = np.asarray(sorted(names))
        pos = np.clip(np.searchsorted(lookup, text), 0, len(lookup) - 1)
        unknown = lookup[pos] != text
        if unknown.any():
            shown = sorted(set(text[unknown].tolist()))[:5]
            raise InputError(f"{int(unknown.sum())} rows have labels outside classes "
                             f"{names}: {shown}", field="label")
        y = np.asarray([names.index(c) for c in lookup])[pos]
    if len(names) < 2:
        raise InputError(f"need at least 2 classes to audit, got {names}", field="label")
    return names, np.asarray(y, dtype=np.int64)


def _counts(y: np.ndarray, detection: Detection, names: list[str]) -> dict:
    k = len(names)
    rows = np.bincount(y, minlength=k)
    flagged = np.bincount(y[detection.is_issue], minlength=k)
    moves = np.bincount(y[detection.is_issue] * k + detection.suggested[detection.is_issue],
                        minlength=k * k).reshape(k, k)
    return {names[j]: {"rows": int(rows[j]), "flagged": int(flagged[j]),
                       "suggested": {names[m]: int(moves[j, m]) for m in range(k)
                                     if m != j and moves[j, m]}}
            for j in range(k)}
