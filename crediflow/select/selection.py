"""DS2 selection pieces: rating classes, long-tail diversity, and budgeted selection.

Ratings are mapped to K ordinal classes by bin edges; the curated class of a sample comes
from the score-curation step (HOC + detection, in `crediflow.core`). Selection takes
samples by curated class from the top bucket down; the bucket that crosses the budget is
ordered by long-tail score (rarer samples first).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from crediflow.errors import InputError


def rating_classes(ratings: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """The ordinal class (0 = lowest) of each rating; bins are [e0, e1), [e1, e2), ..., [.., eK]."""
    edges = np.asarray(edges, dtype=float)
    if edges.ndim != 1 or len(edges) < 3 or np.any(np.diff(edges) <= 0):
        raise InputError("rating bins must be at least three increasing edges", field="bins")
    ratings = np.asarray(ratings, dtype=float)
    bad = ~np.isfinite(ratings) | (ratings < edges[0]) | (ratings > edges[-1])
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(f"{int(bad.sum())} rating(s) outside the bins [{edges[0]:g}, "
                         f"{edges[-1]:g}], first at row {first + 1} ({ratings[first]})",
                         field="rating")
    return np.clip(np.searchsorted(edges, ratings, side="right") - 1, 0, len(edges) - 2)


def class_ratings(classes: np.ndarray, ratings: np.ndarray, num_classes: int) -> np.ndarray:
    """A rating on the input scale for each class: the median raw rating of its members."""
    ratings = np.asarray(ratings, dtype=float)
    out = np.full(num_classes, np.nan)
    for c in np.unique(classes):  # K iterations, not N
        out[c] = np.median(ratings[classes == c])
    return out


def long_tail_scores(neighbour_sims: np.ndarray) -> np.ndarray:
    """2 / (1 + e^(-x)) - 1 with x the mean cosine distance to a sample's k nearest neighbours."""
    x = np.mean(1.0 - np.asarray(neighbour_sims, dtype=np.float64), axis=1)
    return 2.0 / (1.0 + np.exp(-x)) - 1.0


def budget_count(budget: float, n: int) -> int:
    """A budget as a row count: a count (>= 1) or a fraction of `n` (0 < budget < 1)."""
    if not np.isfinite(budget) or budget <= 0:
        raise InputError(f"the budget must be positive, got {budget}", field="budget")
    count = int(round(budget * n)) if budget < 1 else int(budget)
    if budget >= 1 and budget != int(budget):
        raise InputError(f"a budget of 1 or more is a row count, got {budget}", field="budget")
    if count > n:
        raise InputError(f"the budget ({count}) is larger than the data ({n} rows)",
                         field="budget")
    return max(count, 1)


def select_top(scores: np.ndarray, long_tail: np.ndarray, budget: float, *,
               seed: int = 0) -> np.ndarray:
    """Mark `budget` samples: highest score class first, within a class the highest long-tail
    score first; exact ties are broken by a seeded random order."""
    n = len(scores)
    count = budget_count(budget, n)
    tie = np.random.default_rng(seed).permutation(n)
    order = np.lexsort((tie, -np.asarray(long_tail, float), -np.asarray(scores, float)))
    selected = np.zeros(n, bool)
    selected[order[:count]] = True
    return selected
