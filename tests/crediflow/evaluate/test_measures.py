"""Held-out checks, prompts, speed, parameters and size on a tiny model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crediflow.errors import InputError
from crediflow.evaluate import (
    check_disjoint,
    generation_speed,
    parameter_count,
    perplexity,
    prompts_of,
    size_on_disk,
)
from crediflow.models.sft import IGNORE, TokenizedSFT

torch = pytest.importorskip("torch")


def sft(records: list[tuple[list[int], int]]) -> TokenizedSFT:
    """Records of token ids whose tokens from `prompt` on are labelled."""
    ids, labels, offsets = [], [], [0]
    for tokens, prompt in records:
        ids += tokens
        labels += [IGNORE] * prompt + tokens[prompt:]
        offsets.append(len(ids))
    return TokenizedSFT(np.array(ids, np.int64), np.array(labels, np.int64),
                        np.array(offsets, np.int64), np.arange(len(records), dtype=np.int64))


def test_perplexity_is_exp_of_the_loss():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(7.5)) == pytest.approx(7.5)
    assert perplexity(1e6) == math.inf


def test_prompts_are_the_tokens_before_the_first_label():
    data = sft([([5, 6, 7, 8], 2), ([9, 10], 0), ([11, 12, 13], 1), ([1, 2, 3], 2)])
    got = prompts_of(data, 2)
    assert [p.tolist() for p in got] == [[5, 6], [11]]  # the second record has no prompt
    with pytest.raises(InputError, match="no held-out record has a prompt"):
        prompts_of(sft([([1, 2], 0)]), 3)


def test_overlap_with_the_training_records_is_refused():
    heldout = sft([([1, 2, 3], 1), ([4, 5, 6], 1)])
    train = sft([([7, 8, 9], 1), ([4, 5, 6], 1)])
    check_disjoint(["h1"], sft([([1, 2, 3], 1)]), ["t1", "t2"], train)
    same = "'h2' has the same tokens as training record 't2'"
    with pytest.raises(InputError, match=same) as info:
        check_disjoint(["h1", "h2"], heldout, ["t1", "t2"], train, file="heldout.parquet")
    assert info.value.file == "heldout.parquet"
    with pytest.raises(InputError, match="also training records.*'t1'"):
        check_disjoint(["t1", "h2"], sft([([0], 0), ([3], 0)]), ["t1", "t2"], train)


def test_speed_parameters_and_size(tiny_lm, tmp_path):
    model, _ = tiny_lm
    prompts = [np.array([3, 4, 5]), np.array([6, 7])]
    speeds = generation_speed({"a": model, "b": model}, prompts, max_new_tokens=5, repeats=2,
                              pad_id=0)
    assert set(speeds) == {"a", "b"}
    assert speeds["a"].new_tokens == 10 and len(speeds["a"].seconds) == 2
    assert speeds["a"].tokens_per_second > 0
    unique = {id(p): p.numel() for p in model.parameters()}
    assert parameter_count(model) == sum(unique.values())
    assert size_on_disk(tmp_path / "missing") is None
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "notes.txt").write_text("not weights")
    assert size_on_disk(tmp_path / "m") == (tmp_path / "m" / "model.safetensors").stat().st_size
    with pytest.raises(InputError):
        generation_speed({"a": model}, prompts, max_new_tokens=0, repeats=1, pad_id=0)
