"""Fairness of a classifier when the groups are missing, from three weak proxies of the group
(Zhu et al., "Weak Proxies are Sufficient and Preferable for Fairness with Missing Sensitive
Attributes").

A proxy's group Ã is a noisy copy of the true group A with transition matrix
T[a, j] = P(Ã = j | A = a). Measured with a proxy, the per-group prediction rates
H̃[j, k] = P(f = k | Ã = j) mix the groups, so a raw-proxy gap is usually too small. With
three proxies that are conditionally independent given the group, HOC (the same fit as the
audit's, fed the proxies' label triplets) estimates T and the group prior p, and

    H[:, k] = diag(p)⁻¹ (T_kᵀ)⁻¹ (H̃[:, k] ⊙ p̃),   p̃[j] = P(Ã = j),

undoes the mixing. `global` mode uses one T for every predicted class k; `local` mode fits
T_k on the rows predicted k, which drops the assumption that the proxies' noise is
independent of the prediction. Equalized odds and equal opportunity run the same
calibration within each true-label slice (T and p fitted on the slice). Calibrated rates can
be clipped to [clip_low, 1] with each group's row renormalised.

The three proxies are treated as exchangeable noisy copies: HOC counts their triplets in all
six orders, and H̃ and p̃ pool the three proxies' rows. The raw estimate uses proxy 1 alone.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from crediflow.core.hoc import consensus_from_triplets, fit_transition
from crediflow.errors import InputError
from crediflow.fairness.config import FairnessConfig
from crediflow.fairness.metrics import (
    FairnessGaps,
    as_classes,
    check_same_length,
    count_classes,
    fairness_gaps,
    gaps_from_rates,
    joint_counts,
    opportunity_gap,
    present_labels,
    rate_gap,
    rates_from_counts,
    slice_rates,
    slices_gap,
)

NUM_PROXIES = 3
PAIRS = ((0, 1), (0, 2), (1, 2))


@dataclass(frozen=True)
class ProxyEstimate:
    """What `estimate_fairness` found.

    `raw`: the gaps measured with proxy 1 as the group; `calibrated`: with the HOC-calibrated
    rates; `true`: with the true groups, when given. `T` (M, M) and `p` (M,) are the
    whole-table HOC estimate, `condition` T's condition number, `kappa` the pairwise Cohen's
    kappa of the proxies (pairs 1-2, 1-3, 2-3). `fallback` names the gaps ("dp", "eod",
    "eop") whose T could not calibrate (singular or not diagonally dominant) and whose
    calibrated value is the raw one (`on_singular: raw`).
    """

    raw: FairnessGaps
    calibrated: FairnessGaps
    true: FairnessGaps | None
    T: np.ndarray
    p: np.ndarray
    condition: float
    kappa: np.ndarray
    mode: str
    fallback: tuple[str, ...]
    warnings: tuple[str, ...]
    raw_rates: np.ndarray = field(repr=False)
    calibrated_rates: np.ndarray = field(repr=False)

    @property
    def raw_error(self) -> FairnessGaps | None:
        """|raw - true| / true per gap; None without true groups."""
        return None if self.true is None else self.raw.normalized_error(self.true)

    @property
    def calibrated_error(self) -> FairnessGaps | None:
        """|calibrated - true| / true per gap; None without true groups."""
        return None if self.true is None else self.calibrated.normalized_error(self.true)

    def to_dict(self) -> dict:
        """JSON-ready: per gap (dp, eod, eop) its raw, calibrated and (with groups) true value
        and normalized errors; then T, p, the condition number, kappa, mode and warnings."""
        parts = {"raw": self.raw, "calibrated": self.calibrated, "true": self.true,
                 "raw_error": self.raw_error, "calibrated_error": self.calibrated_error}
        out: dict = {name: {key: gaps.to_dict()[name] for key, gaps in parts.items()
                            if gaps is not None} for name in ("dp", "eod", "eop")}
        out.update(T=np.round(self.T, 6).tolist(), p=np.round(self.p, 6).tolist(),
                   condition=float(self.condition),
                   kappa={f"{a + 1}-{b + 1}": float(k)
                          for (a, b), k in zip(PAIRS, self.kappa, strict=True)},
                   mode=self.mode, fallback=list(self.fallback), warnings=list(self.warnings))
        return out


class TransitionError(InputError):
    """The proxies' transition matrix cannot calibrate: it is singular (condition number past
    `max_condition`), not diagonally dominant (HOC could not tell the groups apart), or the
    proxies agree only by chance (then T is singular under the method's model)."""


def check_proxies(proxies: np.ndarray, num_groups: int | None = None) -> tuple[np.ndarray, int]:
    """(N, 3) proxy groups as int64 and the number of groups M.

    Refuses fewer (or more) than three proxies, and a proxy whose number of classes differs
    from M (the groups' count when given, else the largest proxy class + 1).
    """
    arr = np.asarray(proxies)
    if arr.ndim != 2:
        raise InputError(f"proxies must be an (N, 3) array, got shape {arr.shape}",
                         field="proxies")
    if arr.shape[1] != NUM_PROXIES:
        few = "fewer" if arr.shape[1] < NUM_PROXIES else "more"
        raise InputError(f"{few} than three proxies: got {arr.shape[1]}; the method needs "
                         f"exactly three weak proxies of the group", field="proxies")
    cols = [as_classes(arr[:, i], f"proxy {i + 1}") for i in range(NUM_PROXIES)]
    m = count_classes(*cols, given=num_groups)
    for i, col in enumerate(cols):
        seen = np.unique(col)
        if seen.size != m or seen[-1] >= m:
            raise InputError(f"proxy {i + 1} has {seen.size} classes "
                             f"({', '.join(map(str, seen))}) but the groups have {m} "
                             f"(0..{m - 1}); each proxy must predict the same classes as "
                             f"the groups", field=f"proxy {i + 1}")
    return np.stack(cols, axis=1), m


def proxy_triplets(proxies: np.ndarray) -> np.ndarray:
    """(6N, 3) label triplets: every row's three proxies in all six orders."""
    return np.concatenate([proxies[:, list(order)]
                           for order in itertools.permutations(range(NUM_PROXIES))])


def estimate_transition(proxies: np.ndarray, num_groups: int, *,
                        steps: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    """HOC estimate of the proxies' transition matrix T (M, M) and the group prior p (M,)."""
    consensus = consensus_from_triplets(proxy_triplets(proxies), num_groups)
    return fit_transition(*consensus, steps=steps)


def proxy_kappa(proxies: np.ndarray, num_groups: int) -> np.ndarray:
    """Cohen's kappa of each pair of proxies (1-2, 1-3, 2-3): agreement beyond chance."""
    n = proxies.shape[0]
    shares = np.stack([np.bincount(proxies[:, i], minlength=num_groups) / n
                       for i in range(NUM_PROXIES)])
    out = []
    for a, b in PAIRS:
        agree = float(np.mean(proxies[:, a] == proxies[:, b]))
        chance = float(shares[a] @ shares[b])
        out.append((agree - chance) / (1 - chance) if chance < 1 else 0.0)
    return np.asarray(out)


def calibrate_rates(joint: np.ndarray, T: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Calibrated per-group rates H (M, K) from the noisy joint shares.

    `joint[j, k]` = P(Ã = j, f = k) = H̃[j, k] p̃[j]; `T` is one (M, M) matrix (global) or
    (K, M, M), one per predicted class (local); H[:, k] = diag(p)⁻¹ (T_kᵀ)⁻¹ joint[:, k].
    """
    joint = np.asarray(joint, dtype=np.float64)
    t = np.asarray(T, dtype=np.float64)
    k = joint.shape[1]
    ts = np.broadcast_to(t, (k, *t.shape[-2:])) if t.ndim == 2 else t
    cols = np.linalg.solve(np.transpose(ts, (0, 2, 1)), joint.T[:, :, None])[:, :, 0]
    return cols.T / np.asarray(p, dtype=np.float64)[:, None]


def clip_rates(rates: np.ndarray, low: float) -> np.ndarray:
    """Rates clipped to [low, 1], each row renormalised to sum to 1."""
    clipped = np.clip(rates, low, 1.0)
    return clipped / clipped.sum(axis=1, keepdims=True)


_FIT_WARNINGS = {
    "rows": "HOC ran on fewer than min_rows ({min_rows}) rows on {scopes}: T is uncertain there",
    "condition": "the proxies' transition matrix T is near-singular (condition number up to "
                 "{worst:.1f} > warn_condition {warn:g}) on {scopes}: the proxies say little "
                 "about the group and the calibrated estimate is unstable",
}


class _Calibration:
    """Runs the HOC fits and calibrations of one estimate, collecting its warnings (each kind
    of fit warning once, listing the row sets it concerns)."""

    def __init__(self, cfg: FairnessConfig, num_classes: int, num_groups: int) -> None:
        self.cfg, self.k, self.m = cfg, num_classes, num_groups
        self.notes: list[str] = []
        self.scopes: dict[str, list[str]] = {kind: [] for kind in _FIT_WARNINGS}
        self.worst = 0.0
        self.table_fit: tuple[np.ndarray, np.ndarray, float] | None = None
        self.kappa_floor = (1.0, 0.0)  # (largest pairwise kappa, floor) of all rows

    def warn(self, text: str) -> None:
        """Add a warning (once)."""
        if text not in self.notes:
            self.notes.append(text)

    @property
    def warnings(self) -> list[str]:
        """The warnings so far: the notes, then one line per kind of fit warning."""
        fits = [text.format(scopes="; ".join(self.scopes[kind]), min_rows=self.cfg.min_rows,
                            worst=self.worst, warn=self.cfg.warn_condition)
                for kind, text in _FIT_WARNINGS.items() if self.scopes[kind]]
        return [*self.notes, *fits]

    def fit(self, proxies: np.ndarray, scope: str) -> tuple[np.ndarray, np.ndarray, float]:
        """T, p and T's condition number on `proxies` (the rows of `scope`)."""
        if proxies.shape[0] < self.cfg.min_rows:
            self.scopes["rows"].append(f"{scope} ({proxies.shape[0]})")
        t, p = estimate_transition(proxies, self.m, steps=self.cfg.hoc_steps)
        cond = float(np.linalg.cond(t))
        if scope == "all rows":
            self.table_fit = (t, p, cond)
        largest, floor = self.kappa_floor  # a verdict on all rows, so for every fit
        if largest < floor:
            raise TransitionError(
                f"the proxies agree no more than chance (largest pairwise Cohen's kappa "
                f"{largest:.3f} < {floor:.3f}): under the method's model T is then singular, "
                f"and the proxies carry no usable information about the group; use better "
                f"proxies, or on_singular: raw to report the raw proxy estimate",
                field="proxies")
        where = "" if scope == "all rows" else f" on {scope}"
        if not np.isfinite(cond) or cond > self.cfg.max_condition:
            raise TransitionError(
                f"the proxies' transition matrix T{where} is singular (condition number "
                f"{cond:.3g} > max_condition {self.cfg.max_condition:g}): the proxies carry "
                f"too little information about the group to calibrate; use better proxies, "
                f"or on_singular: raw to report the raw proxy estimate", field="proxies")
        if not np.all(np.argmax(t, axis=1) == np.arange(self.m)):
            raise TransitionError(
                f"the proxies' transition matrix T{where} is not diagonally dominant (HOC "
                f"finds a true group proxied more often as another): the proxies are too "
                f"weak or depend on each other given the group, and cannot calibrate; use "
                f"better proxies, or on_singular: raw to report the raw proxy estimate",
                field="proxies")
        if cond > self.cfg.warn_condition:
            self.scopes["condition"].append(scope)
            self.worst = max(self.worst, cond)
        return t, p, cond

    def rates(self, pred: np.ndarray, proxies: np.ndarray, scope: str) -> np.ndarray:
        """Calibrated (M, K) rates of the rows given (`scope` names them in warnings)."""
        t, p, _ = self.fit(proxies, scope)
        ts = np.broadcast_to(t, (self.k, self.m, self.m)).copy()
        if self.cfg.mode == "local":
            for c in range(self.k):
                rows = pred == c
                if rows.any():
                    ts[c] = self.fit(proxies[rows], f"{scope} predicted {c}")[0]
        counts = sum(joint_counts(pred, proxies[:, i], self.k, self.m)
                     for i in range(NUM_PROXIES))
        h = calibrate_rates(counts / counts.sum(), ts, p)
        return clip_rates(h, self.cfg.clip_low) if self.cfg.clip else h


def _raw(run: _Calibration, pred: np.ndarray, labels: np.ndarray, proxy: np.ndarray
         ) -> tuple[FairnessGaps, np.ndarray]:
    k, m, cfg = run.k, run.m, run.cfg
    rates = rates_from_counts(joint_counts(pred, proxy, k, m), field="proxy 1")
    slices = slice_rates(pred, labels, proxy, num_classes=k, num_groups=m, field="proxy 1")
    gaps = gaps_from_rates(rates, slices, present_labels(labels, k), cfg.positive_class,
                           cfg.aggregate)
    return gaps, rates


def _calibrated(run: _Calibration, pred: np.ndarray, labels: np.ndarray,
                proxies: np.ndarray, raw: tuple[FairnessGaps, np.ndarray]
                ) -> tuple[FairnessGaps, np.ndarray, tuple[str, ...]]:
    """Calibrated gaps and (M, K) rates, and which gaps fell back to the raw estimate.

    Demographic parity is calibrated on all rows, equalized odds and equal opportunity on the
    label slices; when a T of one part cannot calibrate and `on_singular` is `raw`, that
    part keeps the raw estimate (with a warning), else the TransitionError stands.
    """
    cfg, (raw_gaps, raw_rates) = run.cfg, raw
    fallback: list[str] = []
    try:
        rates = run.rates(pred, proxies, "all rows")
        dp = rate_gap(rates, aggregate=cfg.aggregate)
    except TransitionError as exc:
        _fall_back(run, exc, "demographic parity")
        rates, dp = raw_rates, raw_gaps.dp
        fallback.append("dp")
    present = present_labels(labels, run.k)
    try:
        slices = np.stack([run.rates(pred[labels == y], proxies[labels == y],
                                     f"rows with label {y}") for y in present])
        eod = slices_gap(slices, aggregate=cfg.aggregate)
        eop = opportunity_gap(slices, present, cfg.positive_class, aggregate=cfg.aggregate)
    except TransitionError as exc:
        _fall_back(run, exc, "equalized odds and equal opportunity")
        eod, eop = raw_gaps.eod, raw_gaps.eop
        fallback += ["eod", "eop"]
    return FairnessGaps(dp, eod, eop), rates, tuple(fallback)


def _fall_back(run: _Calibration, exc: TransitionError, what: str) -> None:
    if run.cfg.on_singular == "error":
        raise exc
    reason = exc.reason.split(": ")[0].split(" (HOC")[0]
    run.warn(f"{reason}; the calibrated {what} fall(s) back to the raw proxy estimate")


def _prepare(pred: np.ndarray, labels: np.ndarray, proxies: np.ndarray,
             groups: np.ndarray | None, *, num_classes: int | None, num_groups: int | None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, int, int]:
    pred, labels = as_classes(pred, "pred"), as_classes(labels, "labels")
    if groups is not None:
        groups = as_classes(groups, "groups")
        num_groups = count_classes(groups, given=num_groups)
    proxies, m = check_proxies(proxies, num_groups)
    arrays = {"pred": pred, "labels": labels, "proxies": proxies}
    if groups is not None:
        arrays["groups"] = as_classes(groups, "groups", m)
    check_same_length(**arrays)
    k = count_classes(pred, labels, given=num_classes)
    as_classes(pred, "pred", k)
    as_classes(labels, "labels", k)
    return pred, labels, proxies, groups, k, m


def estimate_fairness(
    pred: np.ndarray,
    labels: np.ndarray,
    proxies: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    config: FairnessConfig | None = None,
    num_classes: int | None = None,
    num_groups: int | None = None,
) -> ProxyEstimate:
    """Demographic parity, equalized odds and equal opportunity of predictions `pred` (N,)
    against true labels `labels` (N,), with the groups known only through `proxies` (N, 3):
    the raw-proxy estimate (proxy 1 as the group), the HOC-calibrated estimate and, when the
    true `groups` (N,) are given, the true gaps (and so the normalized errors).

    Classes and groups are integer indices (`num_classes`, `num_groups` default to the
    largest index + 1). Settings, warnings thresholds and the singular-T policy come from
    `config` (defaults: `FairnessConfig()`). Raises InputError for fewer than three proxies,
    a proxy with another number of classes than the groups, a group (true or proxy 1) with
    no rows in a label slice, and — unless `on_singular` is `raw` — a T that cannot
    calibrate (singular, or not diagonally dominant).
    """
    cfg = config or FairnessConfig()
    pred, labels, proxies, groups, k, m = _prepare(
        pred, labels, proxies, groups, num_classes=num_classes, num_groups=num_groups)
    if not 0 <= cfg.positive_class < k:
        raise InputError(f"positive_class {cfg.positive_class} is not a class index "
                         f"(0..{k - 1})", field="positive_class")
    true = None if groups is None else fairness_gaps(
        pred, labels, groups, positive=cfg.positive_class, num_classes=k, num_groups=m,
        aggregate=cfg.aggregate)
    run = _Calibration(cfg, k, m)
    raw, raw_rates = _raw(run, pred, labels, proxies[:, 0])
    kappa = proxy_kappa(proxies, m)
    _agreement_warnings(run, kappa, pred.size)
    run.kappa_floor = (float(kappa.max()), kappa_floor(pred.size, cfg.min_kappa))
    calibrated, rates, fallback = _calibrated(run, pred, labels, proxies, (raw, raw_rates))
    t, p, cond = run.table_fit  # the first fit, kept even when it could not calibrate
    return ProxyEstimate(raw=raw, calibrated=calibrated, true=true, T=t, p=p, condition=cond,
                         kappa=kappa, mode=cfg.mode, fallback=fallback,
                         warnings=tuple(run.warnings), raw_rates=raw_rates,
                         calibrated_rates=rates)


def kappa_floor(rows: int, min_kappa: float) -> float:
    """The pairwise kappa below which two proxies count as agreeing only by chance: min_kappa,
    or three standard errors of kappa under independence (about 3 / sqrt(rows)) if larger."""
    return max(min_kappa, 3.0 / np.sqrt(max(rows, 1)))


def _agreement_warnings(run: _Calibration, kappa: np.ndarray, rows: int) -> None:
    floor = kappa_floor(rows, run.cfg.min_kappa)
    for (a, b), value in zip(PAIRS, kappa, strict=True):
        if value < floor:
            run.warn(f"proxies {a + 1} and {b + 1} agree barely beyond chance (Cohen's kappa "
                     f"{value:.3f} < {floor:.3f}, the larger of min_kappa and 3 standard "
                     f"errors): at least one says little about the group")
        elif value > run.cfg.max_kappa:
            run.warn(f"proxies {a + 1} and {b + 1} agree almost always (Cohen's kappa "
                     f"{value:.3f} > max_kappa {run.cfg.max_kappa:g}): they are likely not "
                     f"independent given the group, which the calibration assumes; build "
                     f"them from different features")
