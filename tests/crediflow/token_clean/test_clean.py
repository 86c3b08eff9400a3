"""Token Cleaning's modes on a tiny Llama: influence ranks learned tokens above noise, a reference
equal to the base scores nothing, self-evolving chunks, the warm-up subset."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from crediflow.errors import InputError
from crediflow.models.sft import IGNORE, TokenizedSFT
from crediflow.models.token_loss import token_losses
from crediflow.models.training import TrainSettings, train_sft
from crediflow.token_clean.clean import (
    _influence,
    clean_fixed,
    clean_self_evolving,
    warmup_records,
)
from crediflow.token_clean.config import TokenCleanConfig
from crediflow.token_clean.selection import quota, select_tokens

PROMPT = 4  # unlabelled prompt tokens per record
PATTERN = 6  # distinct tokens of the repeated pattern
CONFIG = dataclasses.replace(TokenCleanConfig(), precision="fp32", rho=0.5,
                             granularity="global", batch_size=8)
# Full fine-tuning, fast enough to learn a 6-token cycle in a few dozen steps on a CPU.
REFERENCE = TrainSettings(learning_rate=1e-2, batch_size=4, max_steps=40, warmup_ratio=0.0,
                          scheduler="constant", device="cpu", logging_steps=10, seed=0)


@dataclass
class PatternData:
    """Records whose response tokens are either a fixed cyclic pattern or random ids."""

    sft: TokenizedSFT
    pattern: np.ndarray  # (T,) bool: label tokens that are pattern tokens
    random: np.ndarray  # (T,) bool: label tokens that are random ids
    warmup: np.ndarray  # records whose responses are pattern only


def pattern_data(vocab: int, *, warmup: int = 8, mixed: int = 16, seed: int = 0
                 ) -> PatternData:
    """`warmup` records whose response is the pattern twice (12 tokens), then `mixed` records
    whose response is the pattern once and 12 random ids; every record starts with 4 random,
    unlabelled prompt tokens. Pattern and random label tokens are as many (192 each with the
    defaults), so a global rho of 0.5 can drop exactly the random ones."""
    rng = np.random.default_rng(seed)
    others = np.arange(3, vocab)  # no special tokens
    cycle = rng.choice(others, PATTERN, replace=False)
    noise = np.setdiff1d(others, cycle)
    ids, pattern, random = [], [], []
    for i in range(warmup + mixed):
        prompt = rng.choice(noise, PROMPT)
        if i < warmup:
            response, is_pattern = np.tile(cycle, 2), np.ones(2 * PATTERN, bool)
        else:
            response = np.concatenate([cycle, rng.choice(noise, 2 * PATTERN)])
            is_pattern = np.arange(3 * PATTERN) < PATTERN
        ids.append(np.concatenate([prompt, response]))
        pattern.append(np.r_[np.zeros(PROMPT, bool), is_pattern])
        random.append(np.r_[np.zeros(PROMPT, bool), ~is_pattern])
    lengths = np.array([len(r) for r in ids])
    offsets = np.zeros(len(ids) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(ids).astype(np.int64)
    pattern_mask, random_mask = np.concatenate(pattern), np.concatenate(random)
    labels = np.where(pattern_mask | random_mask, flat, IGNORE)
    sft = TokenizedSFT(flat, labels, offsets, np.arange(len(ids), dtype=np.int64))
    return PatternData(sft, pattern_mask, random_mask, np.arange(warmup))


def random_sft(vocab: int, records: int, *, seed: int = 0) -> TokenizedSFT:
    """`records` records of 8-15 random tokens, the first 3 unlabelled."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, 16, records)
    offsets = np.zeros(records + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = rng.integers(3, vocab, offsets[-1]).astype(np.int64)
    within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
    return TokenizedSFT(ids, np.where(within >= 3, ids, IGNORE), offsets,
                        np.arange(records, dtype=np.int64))


def state(model: Any) -> dict[str, torch.Tensor]:
    """A detached copy of the model's weights."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two weight copies are equal."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_influence_ranks_learned_pattern_above_random_tokens(tiny_lm, tmp_path: Path) -> None:
    """The reference learns a repeated pattern from the warm-up records: pattern tokens get
    higher influence than random tokens, and a global rho of 0.5 drops mostly random tokens.
    The base model is left untouched."""
    model, tokenizer = tiny_lm
    before = state(model)
    data = pattern_data(len(tokenizer))
    result = clean_fixed(model, tokenizer, data.sft, data.warmup, config=CONFIG,
                         settings=REFERENCE, workdir=tmp_path)
    assert same_weights(state(model), before)

    labelled = data.sft.trained()
    assert np.isfinite(result.scores[labelled]).all()
    assert np.isnan(result.scores[~labelled]).all()
    pattern_mean = float(result.scores[data.pattern].mean())
    random_mean = float(result.scores[data.random].mean())
    assert random_mean < pattern_mean, (random_mean, pattern_mean)

    assert result.keep.sum() == int(labelled.sum()) // 2  # floor(0.5 * N), N even
    dropped = labelled & ~result.keep
    share = float(data.random[dropped].mean())
    print(f"\nrandom share of the dropped tokens: {share:.3f} ({int(dropped.sum())} dropped); "
          f"mean influence: pattern {pattern_mean:.3f}, random {random_mean:.3f}")
    assert share >= 0.8, f"only {share:.1%} of the dropped tokens are random (want >= 80%)"
    assert result.metrics["warmup_records"] == len(data.warmup)
    assert result.metrics["reference_train"]["steps"] == REFERENCE.max_steps


def test_reference_equal_to_base_scores_zero(tiny_lm) -> None:
    """A reference that is an untrained copy of the base gives influence 0 on every label token
    (NaN elsewhere), and per-token losses equal to the base's."""
    model, tokenizer = tiny_lm
    sft = random_sft(len(tokenizer), 10)
    reference = copy.deepcopy(model)
    scores = _influence(model, reference, sft, CONFIG)
    labelled = sft.trained()
    labelled[sft.offsets[:-1]] = False  # a record's first token is never scored
    assert scores.shape == sft.labels.shape
    np.testing.assert_array_equal(scores[labelled], 0.0)
    assert np.isnan(scores[~labelled]).all()
    np.testing.assert_array_equal(token_losses(reference, sft), token_losses(model, sft))


def test_self_evolving_chunks(tiny_lm, tmp_path: Path) -> None:
    """chunks=3: the records are cut into chunks by the seed; chunk 0 keeps every label token
    and has NaN scores; chunks 1 and 2 have finite scores on their label tokens, each keeps the
    floor(rho * n) best of its own label tokens (a ranking within the chunk); chunk 1's scores
    are loss(base) - loss(theta_1), theta_1 trained on chunk 0 alone; the returned reference
    is trained (differs from the base) and the base is untouched."""
    model, tokenizer = tiny_lm
    before = state(model)
    sft = random_sft(len(tokenizer), 12, seed=3)
    config = dataclasses.replace(CONFIG, mode="self_evolving", chunks=3, rho=0.6, seed=5)
    settings = dataclasses.replace(REFERENCE, max_steps=3)
    result = clean_self_evolving(model, tokenizer, sft, config=config, settings=settings,
                                 workdir=tmp_path)
    assert same_weights(state(model), before)
    assert not same_weights(state(result.reference), before)

    chunks = [np.sort(c) for c in
              np.array_split(np.random.default_rng(config.seed).permutation(len(sft)), 3)]
    assert result.metrics["chunk_records"] == [4, 4, 4]
    assert len(result.metrics["chunk_trainings"]) == 3
    assert not np.array_equal(chunks[0], np.arange(4))  # the seed shuffled the records
    record = sft.record_of_token
    labelled = sft.trained()
    scored_records = np.unique(record[np.isfinite(result.scores)])
    np.testing.assert_array_equal(scored_records, np.sort(np.concatenate(chunks[1:])))

    first = np.isin(record, chunks[0])
    assert np.isnan(result.scores[first]).all()
    np.testing.assert_array_equal(result.keep[first], labelled[first])
    assert not result.dropped[chunks[0]].any()
    np.testing.assert_array_equal(result.kept_fraction[chunks[0]], 1.0)

    for chunk in chunks[1:]:
        inside = np.isin(record, chunk)
        tokens = inside & labelled
        # every label token but a record's first has a preceding token, so all are scored
        assert np.isfinite(result.scores[tokens]).all()
        assert np.isnan(result.scores[inside & ~labelled]).all()
        kept = result.keep & inside
        assert not (kept & ~labelled).any()
        assert kept.sum() == quota(config.rho, np.array([tokens.sum()]))[0]
        # global within the chunk: no dropped token outranks a kept one
        assert result.scores[kept].min() >= result.scores[tokens & ~kept].max()
        part = sft.subset(chunk)
        np.testing.assert_array_equal(
            result.keep[inside],
            select_tokens(result.scores[inside], part, rho=config.rho))

    # chunk 1 is scored by theta_1: the base trained on all tokens of chunk 0 alone
    theta_1 = train_sft(copy.deepcopy(model), tokenizer, sft.subset(chunks[0]), settings,
                        output_dir=tmp_path / "check").model
    part = sft.subset(chunks[1])
    expected = token_losses(model, part) - token_losses(theta_1, part)
    inside = np.isin(record, chunks[1])
    np.testing.assert_allclose(result.scores[inside], expected, rtol=1e-5, atol=1e-5)


def test_self_evolving_needs_a_record_per_chunk(tiny_lm, tmp_path: Path) -> None:
    """Fewer records than chunks is an InputError naming `chunks`, before any training."""
    model, tokenizer = tiny_lm
    sft = random_sft(len(tokenizer), 2)
    config = dataclasses.replace(CONFIG, mode="self_evolving", chunks=3)
    with pytest.raises(InputError, match="chunks") as caught:
        clean_self_evolving(model, tokenizer, sft, config=config, settings=REFERENCE,
                            workdir=tmp_path)
    assert caught.value.field == "chunks"


@pytest.mark.parametrize(("ratings", "size", "expected"), [
    ([3, 5, 5, 1, 4], 2, [1, 2]),
    ([3, 5, 5, 1, 4], 3, [1, 2, 4]),
    ([2, 2, 2, 2], 2, [0, 1]),  # ties: the earlier record
    ([1, 4, 4, 4, 2], 2, [1, 2]),
    ([np.nan, 1, 2], 2, [1, 2]),  # no rating ranks last
    ([5, 1, 3], 3, [0, 1, 2]),  # the whole data, in record order
])
def test_warmup_records_takes_the_highest_ratings(ratings: list[float], size: int,
                                                 expected: list[int]) -> None:
    """The `size` highest-rated records, ties to the earlier record, in record order."""
    np.testing.assert_array_equal(warmup_records(np.array(ratings, float), size), expected)


@pytest.mark.parametrize("size", [0, -1, 4])
def test_warmup_records_size_out_of_range(size: int) -> None:
    """A warm-up size of 0 or more than the data holds is an InputError naming warmup_size."""
    with pytest.raises(InputError, match="warm-up") as caught:
        warmup_records(np.array([1.0, 2.0, 3.0]), size)
    assert caught.value.field == "warmup_size"
