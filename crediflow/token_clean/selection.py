"""Which response tokens to keep: the top share rho by score, over the dataset or per record.

Keeping is by rank, not by a score threshold: the top rho of the label tokens are kept even
where their scores are negative. Ties are broken by score (descending), then by token position
(ascending), so a selection is reproducible and keeps exactly floor(rho * n) tokens.
"""

from __future__ import annotations

import numbers

import numpy as np

from crediflow.errors import ConfigError, InputError
from crediflow.models.sft import IGNORE, TokenizedSFT
from crediflow.token_clean.config import GRANULARITIES


def _check_rho(rho: float) -> float:
    if isinstance(rho, bool) or not isinstance(rho, numbers.Real) or not 0 < rho <= 1:
        raise ConfigError(f"rho must be a number in (0, 1], not {rho!r}", section="token_clean",
                          key="rho")
    return float(rho)


def quota(rho: float, counts: np.ndarray) -> np.ndarray:
    """floor(rho * counts), with rho read as the decimal it was written as: 0.29 * 100 is
    28.999999999999996 in floating point, but keeps 29."""
    counts = np.asarray(counts, np.int64)
    # a few units in the last place upward absorb the rounding of rho and of the product
    return np.minimum(np.floor(rho * counts * (1 + 1e-15)).astype(np.int64), counts)


def _label_scores(scores: np.ndarray, sft: TokenizedSFT, labelled: np.ndarray) -> np.ndarray:
    """The scores of the label tokens (a copy, in position order), checked."""
    scores = np.asarray(scores)
    if scores.shape != sft.labels.shape:
        raise InputError(f"scores have shape {scores.shape}, the tokens {sft.labels.shape}",
                         field="scores")
    values = scores[labelled]
    missing = np.isnan(values)
    if missing.any():
        first = int(np.flatnonzero(labelled)[np.argmax(missing)])
        record = int(np.searchsorted(sft.offsets, first, side="right") - 1)
        raise InputError(f"{int(missing.sum())} label tokens have a NaN score (the first is "
                         f"token {first - int(sft.offsets[record])} of record {record}); every "
                         "label token needs a score", field="scores")
    return values


def _top_global(scores: np.ndarray, labelled: np.ndarray, values: np.ndarray,
                k: int) -> np.ndarray:
    """(T,) bool: the k best label tokens of all records. `values` (the label tokens' scores,
    this call's own copy) is partitioned in place, so no second copy of the scores is made;
    the keep mask is then read off the full score array."""
    n = len(values)
    if k >= n:
        return labelled.copy()
    if k == 0:
        return np.zeros_like(labelled)
    values.partition(n - k)
    threshold = values[n - k]  # the k-th highest score
    keep = labelled & (scores > threshold)
    # tokens at the threshold fill the rest in position order
    at = np.flatnonzero(labelled & (scores == threshold))[: k - int(np.count_nonzero(keep))]
    keep[at] = True
    return keep


def _top_per_record(positions: np.ndarray, values: np.ndarray, sft: TokenizedSFT,
                    rho: float) -> np.ndarray:
    """The positions of the floor(rho * n_i) best label tokens of each record."""
    record = np.searchsorted(sft.offsets, positions, side="right") - 1
    counts = np.bincount(record, minlength=len(sft))
    # score down, then position (positions ascend, the sort is stable) ...
    by_score = np.argsort(-values, kind="stable")
    rank = np.empty(len(by_score), np.int64)
    rank[by_score] = np.arange(len(by_score))
    # ... then by record: the keys are unique, so an unstable sort gives one order (about half
    # the time of np.lexsort over three keys)
    order = np.argsort(record * len(rank) + rank)
    first = np.zeros(len(sft), np.int64)
    np.cumsum(counts[:-1], out=first[1:])
    # rank of each token within its record (order keeps records contiguous and ascending)
    rank = np.arange(len(order)) - first[record[order]]
    keep = rank < quota(rho, counts)[record[order]]
    return positions[order[keep]]


def select_tokens(scores: np.ndarray, sft: TokenizedSFT, *, rho: float,
                  granularity: str = "global") -> np.ndarray:
    """(T,) bool: the label tokens to keep, by score (higher = keep first).

    - `scores`: (T,) aligned with `sft.input_ids`; read only at label tokens, where NaN is an
      InputError (other positions may hold anything, NaN included).
    - `rho`: the share to keep, in (0, 1]; rho = 1 keeps every label token.
    - `granularity`: "global" keeps the floor(rho * N) best of all N label tokens of the
      dataset (Token Cleaning); "sample" keeps the floor(rho * n_i) best of each record's n_i
      label tokens (RHO-1 style).

    Ties are broken by score descending, then token position ascending; exactly the stated
    number of tokens is kept, whatever the sign of their scores.
    """
    rho = _check_rho(rho)
    if granularity not in GRANULARITIES:
        raise ConfigError(f"{granularity!r} is not allowed; choose one of "
                          f"{', '.join(GRANULARITIES)}", section="token_clean",
                          key="granularity")
    labelled = sft.labels != IGNORE
    values = _label_scores(scores, sft, labelled)
    if granularity == "global":
        return _top_global(np.asarray(scores), labelled, values,
                           int(quota(rho, np.array([len(values)]))[0]))
    keep = np.zeros(len(sft.labels), bool)
    keep[_top_per_record(np.flatnonzero(labelled), values, sft, rho)] = True
    return keep


def apply_selection(sft: TokenizedSFT, keep: np.ndarray
                    ) -> tuple[TokenizedSFT, np.ndarray, np.ndarray]:
    """(cleaned, kept_fraction, dropped) for a keep mask from `select_tokens`.

    - cleaned: the same records and tokens, label -100 where a label token is not kept;
    - kept_fraction: (N,) float64, each record's kept share of its label tokens (0.0 for a
      record that had none);
    - dropped: (N,) bool, records left with no kept token (to be removed with `drop_records`:
      a micro-batch of only -100 labels has a NaN mean loss).

    `keep` must be (T,) bool and True only on label tokens (InputError otherwise).
    """
    keep = np.asarray(keep)
    if keep.dtype != bool or keep.shape != sft.labels.shape:
        raise InputError(f"keep must be a bool array of shape {sft.labels.shape}, not "
                         f"{keep.dtype} {keep.shape}", field="keep")
    trained = sft.trained()
    if (keep & ~trained).any():
        raise InputError("keep marks tokens that have no label", field="keep")
    record = sft.record_of_token
    labelled = np.bincount(record[trained], minlength=len(sft))
    kept = np.bincount(record[keep], minlength=len(sft))
    fraction = np.divide(kept, labelled, out=np.zeros(len(sft)), where=labelled > 0)
    cleaned = sft.with_labels(np.where(keep, sft.labels, IGNORE))
    return cleaned, fraction, kept == 0


def drop_records(sft: TokenizedSFT, dropped: np.ndarray) -> TokenizedSFT:
    """The records not marked in `dropped` (N,) bool, in order; their count is added to
    `stats["no_kept_token"]`."""
    dropped = np.asarray(dropped, bool)
    if dropped.shape != (len(sft),):
        raise InputError(f"dropped has shape {dropped.shape}, not ({len(sft)},)",
                         field="dropped")
    out = sft.subset(np.flatnonzero(~dropped))
    out.stats["no_kept_token"] = out.stats.get("no_kept_token", 0) + int(dropped.sum())
    return out
