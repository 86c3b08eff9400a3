"""Weak-proxy estimation: synthetic data whose three proxies are conditionally independent
given the group with a known T; the calibration identity; warnings; bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crediflow.errors import ConfigError, InputError
from crediflow.fairness import (
    FairnessConfig,
    TransitionError,
    calibrate_rates,
    check_proxies,
    clip_rates,
    estimate_fairness,
    estimate_transition,
    group_rates,
    proxy_kappa,
    proxy_triplets,
)

T2 = np.array([[0.8, 0.2], [0.25, 0.75]])
T3 = np.array([[0.8, 0.1, 0.1], [0.15, 0.75, 0.1], [0.1, 0.15, 0.75]])


def noisy_copies(groups: np.ndarray, T: np.ndarray, rng: np.random.Generator,
                 copies: int = 3) -> np.ndarray:
    """`copies` independent draws of each row's proxy group through T."""
    cum = np.cumsum(T, axis=1)[groups]
    return np.stack([(rng.random((groups.size, 1)) > cum).sum(axis=1)
                     for _ in range(copies)], axis=1)


def synthetic(seed: int, T: np.ndarray, prior: list[float], n: int = 20000):
    """Predictions that favour higher groups, labels, the true groups and three proxies
    drawn independently of everything else given the group."""
    rng = np.random.default_rng(seed)
    m = len(prior)
    groups = rng.choice(m, size=n, p=prior)
    labels = (rng.random(n) < np.linspace(0.3, 0.5, m)[groups]).astype(np.int64)
    rate = np.linspace(0.1, 0.5, m)[groups] + 0.3 * labels
    pred = (rng.random(n) < rate).astype(np.int64)
    return pred, labels, groups, noisy_copies(groups, T, rng)


@pytest.mark.parametrize(("T", "prior"), [(T2, [0.6, 0.4]), (T3, [0.5, 0.3, 0.2])])
@pytest.mark.parametrize("mode", ["global", "local"])
def test_calibration_cuts_the_raw_proxy_error_by_two_thirds_and_recovers_T(T, prior, mode):
    pred, labels, groups, proxies = synthetic(0, T, prior)
    est = estimate_fairness(pred, labels, proxies, groups=groups,
                            config=FairnessConfig(mode=mode))
    assert np.abs(est.T - T).max() <= 0.05
    assert np.abs(est.p - prior).max() <= 0.05
    raw, cal = est.raw_error, est.calibrated_error
    assert raw.dp > 0.3 and raw.eod > 0.3  # proxy noise hides a third or more of the gap
    assert cal.dp <= raw.dp / 3
    assert cal.eod <= raw.eod / 3
    assert cal.eop <= raw.eop / 3
    assert est.warnings == () and est.fallback == ()


def test_calibration_undoes_an_exact_mixture():
    rates = np.array([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]])  # H[a, k]
    p = np.array([0.5, 0.3, 0.2])
    joint = T3.T @ (p[:, None] * rates)  # P(proxy = j, f = k)
    np.testing.assert_allclose(calibrate_rates(joint, T3, p), rates, atol=1e-12)
    per_class = np.stack([T3, T3])
    np.testing.assert_allclose(calibrate_rates(joint, per_class, p), rates, atol=1e-12)


def test_clipping_bounds_rates_and_renormalises_rows():
    clipped = clip_rates(np.array([[-0.2, 1.1], [0.5, 0.5]]), 1e-3)
    np.testing.assert_allclose(clipped.sum(axis=1), 1.0)
    assert clipped.min() > 0 and clipped[0, 0] == pytest.approx(1e-3 / 1.001)


def test_triplets_kappa_and_transition_of_proxies():
    rng = np.random.default_rng(3)
    groups = rng.integers(0, 2, 20000)
    proxies = noisy_copies(groups, T2, rng)
    triplets = proxy_triplets(proxies)
    assert triplets.shape == (6 * 20000, 3)
    T, p = estimate_transition(proxies, 2)
    assert np.abs(T - T2).max() <= 0.05
    agree = float(np.sum(np.diag(T2) ** 2 * 0.5) + np.sum((1 - np.diag(T2)) ** 2 * 0.5))
    assert proxy_kappa(proxies, 2) == pytest.approx(np.full(3, (agree - 0.5) / 0.5), abs=0.03)


def test_to_dict_is_json_with_the_three_gaps():
    pred, labels, groups, proxies = synthetic(1, T2, [0.6, 0.4], n=4000)
    out = estimate_fairness(pred, labels, proxies, groups=groups).to_dict()
    json.dumps(out, allow_nan=False)
    for key in ("dp", "eod", "eop"):
        assert set(out[key]) == {"raw", "calibrated", "true", "raw_error", "calibrated_error"}
    no_truth = estimate_fairness(pred, labels, proxies).to_dict()
    assert set(no_truth["dp"]) == {"raw", "calibrated"}


def test_proxies_that_agree_too_much_or_too_little_are_warned_about():
    pred, labels, groups, proxies = synthetic(2, T2, [0.6, 0.4], n=4000)
    copies = np.stack([proxies[:, 0], proxies[:, 0], proxies[:, 1]], axis=1)
    est = estimate_fairness(pred, labels, copies, groups=groups,
                            config=FairnessConfig(on_singular="raw"))
    assert any("proxies 1 and 2 agree almost always" in w for w in est.warnings)
    weak = np.array([[0.58, 0.42], [0.42, 0.58]])
    rng = np.random.default_rng(4)
    est = estimate_fairness(pred, labels, noisy_copies(groups, weak, rng), groups=groups,
                            config=FairnessConfig(warn_condition=2, min_kappa=0.1,
                                                  on_singular="raw"))
    assert any("agree barely beyond chance" in w for w in est.warnings)
    assert any("near-singular" in w or "falls" in w or "fall(s)" in w for w in est.warnings)


def test_few_rows_in_local_mode_are_warned_about():
    pred, labels, groups, proxies = synthetic(5, T2, [0.6, 0.4], n=3000)
    est = estimate_fairness(pred, labels, proxies, groups=groups,
                            config=FairnessConfig(mode="local", min_rows=1000))
    assert any("fewer than min_rows (1000)" in w and "predicted 1" in w
               for w in est.warnings)


def uninformative(seed: int = 6):
    rng = np.random.default_rng(seed)
    n = 3000
    groups = rng.integers(0, 2, n)
    labels = rng.integers(0, 2, n)
    pred = (rng.random(n) < 0.3 + 0.3 * groups).astype(np.int64)
    return pred, labels, groups, rng.integers(0, 2, (n, 3))


def test_proxies_that_agree_only_by_chance_are_an_error_or_fall_back_to_raw():
    pred, labels, groups, proxies = uninformative()
    with pytest.raises(TransitionError, match="the proxies agree no more than chance"):
        estimate_fairness(pred, labels, proxies, groups=groups)
    est = estimate_fairness(pred, labels, proxies, groups=groups,
                            config=FairnessConfig(on_singular="raw"))
    assert est.fallback == ("dp", "eod", "eop")
    assert est.calibrated == est.raw
    assert any("fall(s) back to the raw proxy estimate" in w for w in est.warnings)
    assert np.isfinite(est.T).all()


def test_a_singular_T_is_an_error_or_falls_back_to_raw():
    pred, labels, groups, proxies = synthetic(9, T2, [0.6, 0.4], n=4000)
    strict = FairnessConfig(warn_condition=1.1, max_condition=1.2)  # T2's is about 1.8
    with pytest.raises(TransitionError, match="T is singular \\(condition number"):
        estimate_fairness(pred, labels, proxies, groups=groups, config=strict)
    lenient = FairnessConfig(warn_condition=1.1, max_condition=1.2, on_singular="raw")
    est = estimate_fairness(pred, labels, proxies, groups=groups, config=lenient)
    assert est.fallback == ("dp", "eod", "eop") and est.calibrated == est.raw


def test_a_T_that_is_not_diagonally_dominant_cannot_calibrate(monkeypatch):
    import crediflow.fairness.proxies as module

    flipped = np.array([[0.3, 0.7], [0.8, 0.2]])
    monkeypatch.setattr(module, "estimate_transition",
                        lambda proxies, m, steps: (flipped, np.array([0.5, 0.5])))
    pred, labels, groups, proxies = synthetic(10, T2, [0.6, 0.4], n=2000)
    with pytest.raises(TransitionError, match="not diagonally dominant"):
        estimate_fairness(pred, labels, proxies, groups=groups)


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: {**d, "proxies": d["proxies"][:, :2]}, "fewer than three proxies: got 2"),
    (lambda d: {**d, "proxies": np.column_stack([d["proxies"], d["proxies"][:, 0]])},
     "more than three proxies"),
    (lambda d: {**d, "proxies": np.where(np.arange(len(d["pred"]))[:, None] == 0, 2,
                                         d["proxies"])},
     "proxy 1 has 3 classes .* but the groups have 2"),
    (lambda d: {**d, "proxies": np.column_stack([d["proxies"][:, :2],
                                                 np.zeros(len(d["pred"]), np.int64)])},
     "proxy 3 has 1 classes"),
    (lambda d: {**d, "num_groups": 3}, "proxy 1 has 2 classes .* but the groups have 3"),
    (lambda d: {**d, "groups": np.where(d["labels"] == 1, 0, d["groups"])},
     "group 1 has no rows among rows with label 1"),
    (lambda d: {**d, "proxies": np.column_stack([np.where(d["labels"] == 0, 1, d["proxies"][:, 0]),
                                                 d["proxies"][:, 1:]])},
     "field 'proxy 1': group 0 has no rows among rows with label 0"),
    (lambda d: {**d, "pred": d["pred"][:-1]}, "rows, but pred has"),
])
def test_bad_input_is_refused_with_one_clear_line(change, message):
    pred, labels, groups, proxies = synthetic(7, T2, [0.6, 0.4], n=2000)
    args = change({"pred": pred, "labels": labels, "groups": groups, "proxies": proxies})
    pred, labels, proxies = args.pop("pred"), args.pop("labels"), args.pop("proxies")
    with pytest.raises(InputError, match=message) as info:
        estimate_fairness(pred, labels, proxies, **args)
    assert "\n" not in str(info.value)


def test_check_proxies_counts_the_groups():
    proxies, m = check_proxies(np.array([[0, 1, 2], [2, 0, 1], [1, 2, 0]]))
    assert m == 3 and proxies.dtype == np.int64
    with pytest.raises(InputError, match="proxies must be an \\(N, 3\\) array"):
        check_proxies(np.array([0, 1, 0]))


def test_group_rates_of_true_groups_match_the_synthetic_design():
    pred, _, groups, _ = synthetic(8, T2, [0.6, 0.4], n=20000)
    rates = group_rates(pred, groups)
    assert rates.shape == (2, 2) and rates[1, 1] > rates[0, 1]


@pytest.mark.parametrize(("values", "key"), [
    ({"mode": "both"}, "mode"),
    ({"clip_low": 0.7}, "clip_low"),
    ({"min_kappa": 0.5, "max_kappa": 0.4}, "max_kappa"),
    ({"warn_condition": 500.0}, "max_condition"),
    ({"on_singular": "ignore"}, "on_singular"),
])
def test_config_refuses_bad_settings(values, key):
    with pytest.raises(ConfigError, match=f"section 'fairness', key '{key}'"):
        FairnessConfig.from_mapping(values)
