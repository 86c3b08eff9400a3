"""What every rater shares: the Ratings result, the rater error, input checks, and
reading cached ratings back."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from crediflow.data.cache import RatingCache
from crediflow.errors import CrediflowError, InputError

log = logging.getLogger(__name__)

DEFAULT_SCORES: tuple[int, ...] = (1, 2, 3, 4, 5)
# The criteria are DS2's (rarity, complexity, informativeness), folded into one overall score


class RaterError(CrediflowError):
    """A rater could not rate some texts; the message names the endpoint, the count and why."""

    def __init__(self, message: str, *, failed: int = 0, reason: str = "") -> None:
        self.failed, self.reason = failed, reason
        super().__init__(message)


@dataclass
class Ratings:
    """Ratings of N texts over S score values, in the order the texts were given."""

    expected: np.ndarray  # (N,) float: expected score under the model's score distribution
    argmax: np.ndarray  # (N,) int: most likely score
    probs: np.ndarray  # (N, S) probabilities over the score values (rows sum to 1)
    from_cache: np.ndarray | None = None  # (N,) bool: read from the rating cache, not rated

    def __len__(self) -> int:
        return len(self.expected)


def check_scores(scores: Sequence[int]) -> tuple[int, ...]:
    """At least two distinct integer score values."""
    values = tuple(scores)
    if (len(values) < 2 or len(set(values)) != len(values)
            or not all(isinstance(s, int | np.integer) and not isinstance(s, bool)
                       for s in values)):
        raise InputError(f"scores must be two or more distinct integers, got {values}",
                         field="scores")
    return tuple(int(s) for s in values)


def positive(value: float, name: str, *, allow_zero: bool = False) -> None:
    """An InputError unless `value` is > 0 (or >= 0 with `allow_zero`)."""
    if not (value >= 0 if allow_zero else value > 0):
        raise InputError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}",
                         field=name)


def one_hot(argmax: np.ndarray, scores: tuple[int, ...]) -> np.ndarray:
    """(N, S) one-hot rows of the given score values."""
    index = pd.Index(scores).get_indexer(argmax)
    probs = np.zeros((len(argmax), len(scores)))
    probs[np.arange(len(argmax)), index] = 1.0
    return probs


def ratings_from_cache(
    cache: RatingCache, keys: np.ndarray, scores: tuple[int, ...]
) -> tuple[np.ndarray, Ratings]:
    """(found mask, Ratings whose found rows are filled in) for `keys`."""
    found, expected, argmax, stored = cache.lookup(keys)
    probs = np.zeros((len(keys), len(scores)))
    has_probs = found & (np.sum(~np.isnan(stored), axis=1) == len(scores))
    if has_probs.any():
        probs[has_probs] = stored[has_probs, :len(scores)]
    no_probs = found & ~has_probs
    probs[no_probs] = one_hot(argmax[no_probs], scores)
    return found, Ratings(expected=expected, argmax=argmax, probs=probs)


def unique_texts(texts: list[str]) -> tuple[np.ndarray, list[str]]:
    """(inverse index of each text into the unique texts, the unique texts)."""
    codes, uniques = pd.factorize(pd.Series(texts, dtype=object), sort=False)
    return codes, list(uniques)
