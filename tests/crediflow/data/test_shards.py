"""Which rows belong to which shard: a partition that depends only on the texts and N."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from crediflow.data.shards import shard_of, shard_rows
from crediflow.errors import InputError

TEXTS = [f"question {i}\nanswer {i % 97}" for i in range(3000)]


@pytest.mark.parametrize("of", [1, 2, 3, 7])
def test_every_row_is_in_exactly_one_shard(of: int) -> None:
    parts = [shard_rows(TEXTS, shard=i, of=of) for i in range(of)]
    joined = np.concatenate(parts)
    assert len(joined) == len(TEXTS)
    np.testing.assert_array_equal(np.sort(joined), np.arange(len(TEXTS)))
    for part in parts:
        assert part.dtype == np.int64 and (np.diff(part) > 0).all()  # ascending row numbers


def test_shards_are_balanced_and_do_not_follow_the_row_order() -> None:
    counts = np.bincount(shard_of(TEXTS, of=4), minlength=4)
    assert counts.min() > 0.85 * len(TEXTS) / 4  # a hash: about N/4 each
    first = shard_rows(TEXTS, shard=0, of=4)
    assert first[-1] > len(TEXTS) / 2 and first[0] < len(TEXTS) / 4  # not a contiguous slice


def test_a_text_has_the_same_shard_wherever_and_however_it_is_given() -> None:
    of = 5
    shards = shard_of(TEXTS, of=of)
    reversed_shards = shard_of(TEXTS[::-1], of=of)[::-1]
    np.testing.assert_array_equal(shards, reversed_shards)  # by content, not by position
    np.testing.assert_array_equal(shards, shard_of(pa.array(TEXTS), of=of))
    np.testing.assert_array_equal(shards, shard_of(pa.chunked_array([TEXTS[:10], TEXTS[10:]]),
                                                   of=of))
    np.testing.assert_array_equal(shards, shard_of(np.array(TEXTS), of=of))
    repeated = shard_of(TEXTS[:3] * 4, of=of)  # duplicates fall in one shard
    np.testing.assert_array_equal(repeated.reshape(4, 3), np.tile(shards[:3], (4, 1)))
    # fixed values: a change of the hash would split one DAG run's shards differently
    assert shard_of(["a", "b", "c", "d"], of=3).tolist() == [0, 1, 2, 0]


def test_one_shard_is_everything_and_empty_input_is_empty() -> None:
    np.testing.assert_array_equal(shard_rows(TEXTS, shard=0, of=1), np.arange(len(TEXTS)))
    assert shard_rows([], shard=1, of=2).tolist() == []


@pytest.mark.parametrize(("shard", "of", "field"), [
    (0, 0, "of"), (0, True, "of"), (0, 2.0, "of"), (2, 2, "shard"), (-1, 2, "shard"),
    (True, 2, "shard"),
])
def test_bad_shard_arguments_name_the_field(shard, of, field: str) -> None:
    with pytest.raises(InputError) as info:
        shard_rows(TEXTS, shard=shard, of=of)
    assert info.value.field == field


def test_a_single_string_is_refused() -> None:
    with pytest.raises(InputError, match="single string"):
        shard_of("abc", of=2)
