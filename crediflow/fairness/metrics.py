"""Group fairness of a classifier from its predictions, the true labels and the groups.

Every metric is a gap between the per-group rate matrices H[a, k] = P(f = k | A = a) (or the
same within a true-label slice Y = y). With M groups and K classes:

- demographic parity (DP): the gap of H over all rows;
- equalized odds (EOd): the gap of H_y within each true-label slice Y = y, aggregated over y;
- equal opportunity (EOp): the gap of the rate P(f = c | A = a, Y = c) of the positive class c.

Two aggregates (`aggregate=`):

- `"mean"` (Zhu et al.): the mean over ordered pairs of distinct groups (a, a') and classes k
  of |H[a, k] - H[a', k]|, averaged over the slices for EOd. For two groups and binary
  predictions, DP is |P(f=1 | a) - P(f=1 | a')| and EOd the mean of the TPR and FPR gaps.
- `"max"` (fairlearn's `demographic_parity_difference`, `equalized_odds_difference`,
  `equal_opportunity_difference`): the largest max-minus-min over groups, over classes (and
  slices for EOd).

Arrays in, floats out; classes and groups are integer indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crediflow.errors import InputError

AGGREGATES = ("mean", "max")


@dataclass(frozen=True)
class FairnessGaps:
    """Demographic parity, equalized odds and equal opportunity gaps (0 = fair)."""

    dp: float
    eod: float
    eop: float

    def to_dict(self) -> dict[str, float | None]:
        """The three gaps by name; a value that is not finite becomes None (JSON null)."""
        return {k: (float(v) if np.isfinite(v) else None)
                for k, v in (("dp", self.dp), ("eod", self.eod), ("eop", self.eop))}

    def normalized_error(self, true: FairnessGaps) -> FairnessGaps:
        """|self - true| / true for each gap (0 when both are 0, inf when only true is 0)."""
        return FairnessGaps(*(_relative(est, ref) for est, ref in
                              zip(self.astuple(), true.astuple(), strict=True)))

    def astuple(self) -> tuple[float, float, float]:
        """(dp, eod, eop)."""
        return self.dp, self.eod, self.eop


def _relative(est: float, ref: float) -> float:
    diff = abs(est - ref)
    if ref == 0:
        return 0.0 if diff == 0 else float("inf")
    return diff / abs(ref)


def as_classes(values: np.ndarray, field: str, num: int | None = None) -> np.ndarray:
    """`values` as a 1-D int64 array of class indices in [0, num); an InputError otherwise."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise InputError(f"expected a 1-D array, got shape {arr.shape}", field=field)
    if arr.size == 0:
        raise InputError("no rows", field=field)
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"expected integer class indices, got dtype {arr.dtype}", field=field)
    if arr.min() < 0 or (num is not None and arr.max() >= num):
        bound = f"[0, {num})" if num is not None else "[0, ...)"
        raise InputError(f"class indices must lie in {bound}, got values in "
                         f"[{arr.min()}, {arr.max()}]", field=field)
    return arr.astype(np.int64, copy=False)


def count_classes(*arrays: np.ndarray, given: int | None = None) -> int:
    """`given`, or one more than the largest index in `arrays` (at least 2)."""
    if given is not None:
        if given < 2:
            raise InputError(f"the number of classes must be at least 2, got {given}")
        return int(given)
    return max(2, *(int(np.max(a)) + 1 for a in arrays))


def check_same_length(**arrays: np.ndarray) -> int:
    """The common length of `arrays`; an InputError naming the first that differs."""
    names = list(arrays)
    n = len(arrays[names[0]])
    for name in names[1:]:
        if len(arrays[name]) != n:
            raise InputError(f"{len(arrays[name])} rows, but {names[0]} has {n}", field=name)
    return n


def joint_counts(pred: np.ndarray, groups: np.ndarray, num_classes: int,
                 num_groups: int) -> np.ndarray:
    """(M, K) counts of rows with group a and prediction k."""
    flat = np.bincount(groups * num_classes + pred, minlength=num_groups * num_classes)
    return flat.reshape(num_groups, num_classes)


def rates_from_counts(counts: np.ndarray, *, field: str = "groups",
                      where: str = "") -> np.ndarray:
    """Row-normalised counts: H[a, k] = count[a, k] / rows of group a.

    An InputError names the first group with no rows (`where` says which rows were counted).
    """
    totals = counts.sum(axis=-1, keepdims=True)
    empty = np.flatnonzero(totals.reshape(-1) == 0)
    if empty.size:
        scope = f" among {where}" if where else ""
        raise InputError(f"group {empty[0]} has no rows{scope}; every group needs rows",
                         field=field)
    return counts / totals


def group_rates(pred: np.ndarray, groups: np.ndarray, *, num_classes: int | None = None,
                num_groups: int | None = None) -> np.ndarray:
    """(M, K) per-group prediction rates H[a, k] = P(f = k | A = a)."""
    pred, groups = as_classes(pred, "pred"), as_classes(groups, "groups")
    check_same_length(pred=pred, groups=groups)
    k = count_classes(pred, given=num_classes)
    m = count_classes(groups, given=num_groups)
    as_classes(pred, "pred", k)
    as_classes(groups, "groups", m)
    return rates_from_counts(joint_counts(pred, groups, k, m))


def slice_counts(pred: np.ndarray, labels: np.ndarray, groups: np.ndarray, num_classes: int,
                 num_groups: int) -> np.ndarray:
    """(K, M, K) counts: [y, a, k] = rows with true label y, group a and prediction k."""
    size = num_groups * num_classes
    flat = np.bincount(labels * size + groups * num_classes + pred,
                       minlength=num_classes * size)
    return flat.reshape(num_classes, num_groups, num_classes)


def slice_rates(pred: np.ndarray, labels: np.ndarray, groups: np.ndarray, *,
                num_classes: int, num_groups: int, field: str = "groups") -> np.ndarray:
    """(K, M, K) rates H_y[a, k] = P(f = k | A = a, Y = y); every (y, a) cell needs rows.

    Label classes with no rows at all are left out of the first axis, which then has one
    entry per label class present (see `present_labels`).
    """
    counts = slice_counts(pred, labels, groups, num_classes, num_groups)
    present = present_labels(labels, num_classes)
    return np.stack([rates_from_counts(counts[y], field=field, where=f"rows with label {y}")
                     for y in present])


def present_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The label classes that have rows, in order."""
    return np.flatnonzero(np.bincount(labels, minlength=num_classes))


def rate_gap(rates: np.ndarray, *, aggregate: str = "mean",
             column: int | None = None) -> float:
    """The gap of an (M, K) rate matrix between groups (all columns, or one `column`)."""
    h = np.asarray(rates, dtype=np.float64)
    if column is not None:
        h = h[:, [column]]
    m = h.shape[0]
    if aggregate == "max":
        return float(np.max(h.max(axis=0) - h.min(axis=0)))
    if aggregate == "mean":
        diff = np.abs(h[:, None, :] - h[None, :, :])
        return float(diff.sum() / (m * (m - 1) * h.shape[1]))
    raise InputError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}",
                     field="aggregate")


def slices_gap(rates: np.ndarray, *, aggregate: str = "mean") -> float:
    """Equalized-odds gap of (Y, M, K) slice rates: mean (or max) over y of `rate_gap`."""
    gaps = [rate_gap(r, aggregate=aggregate) for r in rates]
    return float(np.max(gaps) if aggregate == "max" else np.mean(gaps))


def opportunity_gap(rates: np.ndarray, labels_present: np.ndarray, positive: int, *,
                    aggregate: str = "mean") -> float:
    """Equal-opportunity gap from (Y, M, K) slice rates: the gap of column `positive` in the
    slice of true label `positive`."""
    where = np.flatnonzero(labels_present == positive)
    if where.size == 0:
        raise InputError(f"no row has the positive label {positive}; equal opportunity "
                         f"needs some", field="labels")
    return rate_gap(rates[where[0]], aggregate=aggregate, column=positive)


def _prepare(pred: np.ndarray, labels: np.ndarray | None, groups: np.ndarray,
             num_classes: int | None, num_groups: int | None
             ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, int, int]:
    pred, groups = as_classes(pred, "pred"), as_classes(groups, "groups")
    arrays = {"pred": pred, "groups": groups}
    if labels is not None:
        labels = as_classes(labels, "labels")
        arrays["labels"] = labels
    check_same_length(**arrays)
    k = count_classes(*(a for a in (pred, labels) if a is not None), given=num_classes)
    m = count_classes(groups, given=num_groups)
    for name, arr in arrays.items():
        as_classes(arr, name, m if name == "groups" else k)
    return pred, labels, groups, k, m


def demographic_parity(pred: np.ndarray, groups: np.ndarray, *,
                       num_classes: int | None = None, num_groups: int | None = None,
                       aggregate: str = "mean") -> float:
    """Demographic-parity gap of predictions `pred` across `groups` (see module doc)."""
    pred, _, groups, k, m = _prepare(pred, None, groups, num_classes, num_groups)
    return rate_gap(rates_from_counts(joint_counts(pred, groups, k, m)), aggregate=aggregate)


def equalized_odds(pred: np.ndarray, labels: np.ndarray, groups: np.ndarray, *,
                   num_classes: int | None = None, num_groups: int | None = None,
                   aggregate: str = "mean") -> float:
    """Equalized-odds gap: the demographic-parity gap within each true-label slice,
    averaged (`"mean"`) or maximised (`"max"`) over the label classes present."""
    pred, labels, groups, k, m = _prepare(pred, labels, groups, num_classes, num_groups)
    return slices_gap(slice_rates(pred, labels, groups, num_classes=k, num_groups=m),
                      aggregate=aggregate)


def equal_opportunity(pred: np.ndarray, labels: np.ndarray, groups: np.ndarray, *,
                      positive: int = 1, num_classes: int | None = None,
                      num_groups: int | None = None, aggregate: str = "mean") -> float:
    """Equal-opportunity gap: the gap of P(f = positive | A, Y = positive) across groups
    (the true-positive rate of class `positive`, one-vs-rest for more classes)."""
    pred, labels, groups, k, m = _prepare(pred, labels, groups, num_classes, num_groups)
    _check_positive(positive, k)
    rates = slice_rates(pred, labels, groups, num_classes=k, num_groups=m)
    return opportunity_gap(rates, present_labels(labels, k), positive, aggregate=aggregate)


def fairness_gaps(pred: np.ndarray, labels: np.ndarray, groups: np.ndarray, *,
                  positive: int = 1, num_classes: int | None = None,
                  num_groups: int | None = None, aggregate: str = "mean") -> FairnessGaps:
    """Demographic parity, equalized odds and equal opportunity together."""
    pred, labels, groups, k, m = _prepare(pred, labels, groups, num_classes, num_groups)
    _check_positive(positive, k)
    return gaps_from_rates(rates_from_counts(joint_counts(pred, groups, k, m)),
                           slice_rates(pred, labels, groups, num_classes=k, num_groups=m),
                           present_labels(labels, k), positive, aggregate)


def gaps_from_rates(rates: np.ndarray, slices: np.ndarray, labels_present: np.ndarray,
                    positive: int, aggregate: str) -> FairnessGaps:
    """The three gaps from (M, K) rates and (Y, M, K) slice rates."""
    return FairnessGaps(rate_gap(rates, aggregate=aggregate),
                        slices_gap(slices, aggregate=aggregate),
                        opportunity_gap(slices, labels_present, positive, aggregate=aggregate))


def _check_positive(positive: int, num_classes: int) -> None:
    if not 0 <= positive < num_classes:
        raise InputError(f"the positive class must lie in [0, {num_classes}), got {positive}",
                         field="positive")
