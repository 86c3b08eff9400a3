"""Token selection: exact counts, deterministic ties, a ratio and not a threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crediflow.errors import ConfigError, InputError
from crediflow.models.sft import IGNORE, TokenizedSFT
from crediflow.token_clean import apply_selection, drop_records, quota, select_tokens


def make_sft(lengths, response_from, seed: int = 0) -> TokenizedSFT:
    """Records of `lengths` tokens whose labels start at `response_from[i]` (record-relative;
    a value >= the length means no label)."""
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths, np.int64)
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = rng.integers(3, 300, offsets[-1]).astype(np.int64)
    within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
    labels = np.where(within >= np.repeat(response_from, lengths), ids, IGNORE)
    return TokenizedSFT(ids, labels, offsets, np.arange(len(lengths)) + 100)


def brute_force(scores, sft, rho, granularity):
    """The definition, one token at a time."""
    keep = np.zeros(len(sft.labels), bool)
    positions = np.flatnonzero(sft.trained())
    if granularity == "global":
        groups = [positions]
    else:
        record = sft.record_of_token[positions]
        groups = [positions[record == i] for i in range(len(sft))]
    for group in groups:
        ranked = sorted(group.tolist(), key=lambda t: (-scores[t], t))
        keep[ranked[: math.floor(round(rho * len(group), 9))]] = True
    return keep


@pytest.fixture
def sft():
    return make_sft([12, 30, 7, 19, 3, 25], [4, 10, 7, 2, 1, 20])


@pytest.mark.parametrize("granularity", ["global", "sample"])
@pytest.mark.parametrize("rho", [0.05, 0.3, 0.6, 0.61, 0.99, 1.0])
def test_matches_the_definition_with_ties(sft, rho, granularity):
    rng = np.random.default_rng(1)
    scores = rng.integers(-3, 4, len(sft.labels)).astype(np.float64)  # many ties
    scores[~sft.trained()] = np.nan  # ignored off the labels
    keep = select_tokens(scores, sft, rho=rho, granularity=granularity)
    np.testing.assert_array_equal(keep, brute_force(scores, sft, rho, granularity))
    assert not (keep & ~sft.trained()).any()


def test_global_keeps_exactly_floor_rho_n(sft):
    scores = np.random.default_rng(2).normal(size=len(sft.labels))
    n = int(sft.trained().sum())
    for rho in (0.01, 0.29, 0.5, 0.6, 0.7, 0.999):
        assert select_tokens(scores, sft, rho=rho).sum() == math.floor(round(rho * n, 9))


def test_sample_keeps_floor_rho_n_i_per_record(sft):
    scores = np.random.default_rng(3).normal(size=len(sft.labels))
    keep = select_tokens(scores, sft, rho=0.6, granularity="sample")
    record = sft.record_of_token
    n_i = np.bincount(record[sft.trained()], minlength=len(sft))
    expected = [math.floor(round(0.6 * n, 9)) for n in n_i]
    np.testing.assert_array_equal(np.bincount(record[keep], minlength=len(sft)), expected)


def test_quota_reads_rho_as_written():
    assert quota(0.29, np.array([100]))[0] == 29  # 0.29 * 100 = 28.999999999999996
    assert quota(0.7, np.array([10]))[0] == 7
    np.testing.assert_array_equal(quota(0.5, np.array([0, 1, 3, 7])), [0, 0, 1, 3])
    np.testing.assert_array_equal(quota(1.0, np.array([0, 5])), [0, 5])


def test_ties_resolved_by_position(sft):
    scores = np.zeros(len(sft.labels))
    keep = select_tokens(scores, sft, rho=0.5)
    positions = np.flatnonzero(sft.trained())
    k = len(positions) // 2
    np.testing.assert_array_equal(np.flatnonzero(keep), positions[:k])
    np.testing.assert_array_equal(select_tokens(scores, sft, rho=0.5), keep)


def test_rho_one_reproduces_the_labels(sft):
    scores = np.random.default_rng(4).normal(size=len(sft.labels))
    for granularity in ("global", "sample"):
        keep = select_tokens(scores, sft, rho=1.0, granularity=granularity)
        cleaned, fraction, dropped = apply_selection(sft, keep)
        np.testing.assert_array_equal(cleaned.labels, sft.labels)
        np.testing.assert_array_equal(fraction, [1, 1, 0, 1, 1, 1])  # record 2 has no label
        np.testing.assert_array_equal(dropped, [False, False, True, False, False, False])


def test_a_ratio_not_a_threshold(sft):
    """All scores negative: the top rho are still kept, and the best (least negative) ones."""
    scores = -1.0 - np.random.default_rng(5).random(len(sft.labels))
    keep = select_tokens(scores, sft, rho=0.6)
    positions = np.flatnonzero(sft.trained())
    assert keep.sum() == math.floor(0.6 * len(positions)) > 0
    assert scores[keep].min() > scores[positions][~keep[positions]].max()


def test_records_without_kept_tokens_are_dropped_and_counted(sft):
    scores = np.zeros(len(sft.labels))
    scores[sft.offsets[1]:sft.offsets[2]] = 1.0  # record 1 has the 20 best tokens
    keep = select_tokens(scores, sft, rho=0.2)
    cleaned, fraction, dropped = apply_selection(sft, keep)
    n = int(sft.trained().sum())
    assert keep.sum() == math.floor(0.2 * n) <= 20
    assert dropped.tolist() == [True, False, True, True, True, True]
    assert fraction[1] == pytest.approx(keep.sum() / 20) and fraction[0] == 0
    np.testing.assert_array_equal(cleaned.labels, np.where(keep, sft.labels, IGNORE))
    np.testing.assert_array_equal(cleaned.input_ids, sft.input_ids)
    kept = drop_records(cleaned, dropped)
    assert len(kept) == 1 and kept.rows.tolist() == [101]
    assert kept.stats["no_kept_token"] == 5
    np.testing.assert_array_equal(kept.labels, cleaned.labels[sft.offsets[1]:sft.offsets[2]])


def test_million_tokens_global_and_sample():
    rng = np.random.default_rng(6)
    lengths = rng.integers(20, 400, 5000)
    sft = make_sft(lengths, rng.integers(0, 20, len(lengths)))
    scores = np.round(rng.normal(size=len(sft.labels)), 3)  # rounding makes ties
    positions = np.flatnonzero(sft.trained())
    assert len(positions) > 1_000_000
    keep = select_tokens(scores, sft, rho=0.6)
    k = math.floor(0.6 * len(positions))
    assert keep.sum() == k
    order = np.lexsort((positions, -scores[positions]))  # score down, then position
    np.testing.assert_array_equal(np.flatnonzero(keep), np.sort(positions[order[:k]]))
    per_record = select_tokens(scores, sft, rho=0.6, granularity="sample")
    record = sft.record_of_token
    n_i = np.bincount(record[sft.trained()], minlength=len(sft))
    np.testing.assert_array_equal(np.bincount(record[per_record], minlength=len(sft)),
                                  quota(0.6, n_i))


@pytest.mark.parametrize("rho", [0, -0.1, 1.01, float("nan"), True, "0.5"])
def test_rho_out_of_range_is_a_config_error(sft, rho):
    with pytest.raises(ConfigError) as info:
        select_tokens(np.zeros(len(sft.labels)), sft, rho=rho)
    assert (info.value.section, info.value.key) == ("token_clean", "rho")


def test_input_errors(sft):
    scores = np.zeros(len(sft.labels))
    with pytest.raises(ConfigError, match="granularity"):
        select_tokens(scores, sft, rho=0.5, granularity="batch")
    bad = scores.copy()
    bad[sft.offsets[1] + 12] = np.nan
    with pytest.raises(InputError, match="token 12 of record 1"):
        select_tokens(bad, sft, rho=0.5)
    with pytest.raises(InputError, match="shape"):
        select_tokens(scores[:-1], sft, rho=0.5)
    with pytest.raises(InputError, match="no label"):
        apply_selection(sft, np.ones(len(sft.labels), bool))
    with pytest.raises(InputError, match="bool"):
        apply_selection(sft, sft.trained().astype(int))
