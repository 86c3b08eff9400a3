"""DS2 score curation and selection: rating classes are audited like labels (HOC transition
matrix over the k-NN graph, k-NN vote detection), confident suggestions replace flagged
ratings, and a budget is filled from the top curated class down, by long-tail score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from crediflow.core.detect import knn_detect
from crediflow.core.hoc import consensus_from_graph, credibility_score, fit_transition
from crediflow.core.knn import graph_warnings, knn_graph
from crediflow.errors import InputError
from crediflow.select.config import SelectConfig
from crediflow.select.selection import class_ratings, long_tail_scores, rating_classes, select_top


@dataclass
class Curation:
    """Curated ratings, diversity and the selection, with the score transition matrix."""

    T: np.ndarray  # (K, K) estimated P(observed class j | true class i)
    p: np.ndarray  # (K,) estimated true class prior
    credibility: float
    raw_class: np.ndarray  # (N,) int
    curated_class: np.ndarray  # (N,) int
    curated_rating: np.ndarray  # (N,) float, on the scale of the input ratings
    long_tail: np.ndarray  # (N,) float in [0, 1)
    selected: np.ndarray  # (N,) bool
    moves: dict[str, int]  # "raw class -> curated class": count
    warnings: list[str] = field(default_factory=list)  # the data cannot support the estimates


def integer_bins(ratings: np.ndarray) -> list[float]:
    """Bin edges with one class per integer rating between the smallest and largest."""
    ratings = np.asarray(ratings, dtype=float)
    if not np.all(np.isfinite(ratings)) or np.any(ratings != np.round(ratings)):
        raise InputError("ratings are not all integers: give the rating class edges (bins) "
                         "explicitly", field="rating")
    lo, hi = int(ratings.min()), int(ratings.max())
    return [v - 0.5 for v in range(lo, max(hi, lo + 2) + 2)]


def curate_and_select(
    ratings: np.ndarray,
    embeddings: np.ndarray,
    budget: float,
    *,
    bins: Sequence[float] | None = None,
    k: int = 10,
    rounds: int = 50,
    epochs: int = 21,
    threshold: float = 0.5,
    seed: int = 0,
) -> Curation:
    """Curate `ratings` with the score transition matrix and select `budget` samples
    (a count, or a fraction below 1) from the top curated class down."""
    SelectConfig(budget=budget, k=k, rounds=rounds, epochs=epochs, threshold=threshold,
                 seed=seed, **({"bins": tuple(bins)} if bins is not None else {}))
    edges = list(bins) if bins is not None else integer_bins(ratings)
    raw = rating_classes(ratings, edges)
    num_classes = len(edges) - 1
    graph = knn_graph(embeddings, k, seed=seed)
    T, p = fit_transition(*consensus_from_graph(raw, graph, num_classes, rounds=rounds,
                                                seed=seed), seed=seed)
    detection = knn_detect(raw, graph, T, p, epochs=epochs, seed=seed)
    move = detection.is_issue & (detection.confidence >= threshold)
    curated = np.where(move, detection.suggested, raw)
    representative = class_ratings(raw, ratings, num_classes)
    # classes nobody rated have no median: fall back to the bin centre
    centres = (np.asarray(edges[:-1]) + np.asarray(edges[1:])) / 2
    representative = np.where(np.isnan(representative), centres, representative)
    curated_rating = np.where(move, representative[curated], np.asarray(ratings, float))
    long_tail = long_tail_scores(graph.sims)
    selected = select_top(curated, long_tail, budget, seed=seed)
    pairs = np.bincount(raw[move] * num_classes + curated[move],
                        minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    moves = {f"{a}->{b}": int(pairs[a, b]) for a, b in zip(*np.nonzero(pairs), strict=True)}
    return Curation(T, p, credibility_score(T), raw, curated, curated_rating, long_tail,
                    selected, moves, graph_warnings(graph, raw))
