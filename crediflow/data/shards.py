"""Which rows of a dataset belong to which of N shards, so that N processes can share the work
of a stage whose cost grows with the data (embedding, LLM rating).

A row's shard is a keyed SipHash of its text, modulo N. The choice depends only on the text
and N: it is the same in every process and on every run, every row is in exactly one shard,
and rows with the same text fall in the same shard, so no two shards ever compute the same
text. Hashing (rather than contiguous slices) also spreads long and short texts, or the files
of different sources, evenly over the shards, whatever order the rows come in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from crediflow.errors import InputError

_SHARD_KEY = "crediflow-shards"  # 16 bytes, the key of pandas' SipHash


def _check_count(of: int) -> int:
    if isinstance(of, bool) or not isinstance(of, int | np.integer) or of < 1:
        raise InputError(f"the shard count must be an integer >= 1, got {of!r}", field="of")
    return int(of)


def shard_of(texts: Sequence[str] | pa.Array | pa.ChunkedArray, *, of: int) -> np.ndarray:
    """The shard (int64 in 0..of-1) of each text, aligned with `texts` (which are not checked
    otherwise: that is the stage's business)."""
    of = _check_count(of)
    if isinstance(texts, str):
        raise InputError("expected a sequence of texts, got a single string", field="text")
    if isinstance(texts, pa.ChunkedArray | pa.Array):
        values = np.asarray(texts.to_numpy(zero_copy_only=False), dtype=object)
    else:
        values = np.asarray(texts if isinstance(texts, list | tuple) else list(texts),
                            dtype=object)
    if of == 1:
        return np.zeros(len(values), dtype=np.int64)
    hashes = pd.util.hash_array(values, hash_key=_SHARD_KEY, categorize=False)
    return (hashes % np.uint64(of)).astype(np.int64)


def shard_rows(texts: Sequence[str] | pa.Array | pa.ChunkedArray, *, shard: int,
               of: int) -> np.ndarray:
    """The row numbers (int64, ascending) of the texts in shard `shard` of `of`."""
    of = _check_count(of)
    if isinstance(shard, bool) or not isinstance(shard, int | np.integer) or not 0 <= shard < of:
        raise InputError(f"the shard must be an integer in 0..{of - 1}, got {shard!r}",
                         field="shard")
    return np.flatnonzero(shard_of(texts, of=of) == shard).astype(np.int64)
