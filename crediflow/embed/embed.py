"""Embed the texts of many records, each distinct text encoded once and cached by content."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from crediflow.data.cache import EmbeddingCache
from crediflow.data.texts import check_texts, text_keys
from crediflow.errors import InputError
from crediflow.models.encoder import Encoder


def embed_texts(
    texts: Sequence[str],
    encoder: Encoder,
    *,
    cache: EmbeddingCache | None = None,
    batch_size: int = 64,
) -> tuple[np.ndarray, int]:
    """Vectors aligned with `texts`, and how many rows came from the cache.

    Each distinct text is encoded at most once: repeats within `texts` share one forward pass,
    and with a cache only texts it does not hold are encoded (then added to it).
    """
    array = check_texts(texts)
    texts = array.to_pylist()
    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    if not texts:
        return out, 0
    if cache is not None:
        if cache.model_id != encoder.model_id:
            raise InputError(
                f"the cache is for {cache.model_id!r}, the encoder is {encoder.model_id!r}",
                field="cache",
            )
        keys = text_keys(array, encoder.model_id)
        found, vectors = cache.lookup(keys)
        if found.any():
            out[found] = vectors
        todo = np.flatnonzero(~found)
        groups, uniques = pd.factorize(keys[todo])
    else:
        todo = np.arange(len(texts))
        groups, uniques = pd.factorize(np.asarray(texts, dtype=object))
    if len(todo):
        _, first = np.unique(groups, return_index=True)  # first row of each distinct text
        fresh = encoder.encode(array.take(pa.array(todo[first])), batch_size=batch_size)
        out[todo] = fresh[groups]
        if cache is not None:
            cache.add(np.asarray(uniques), fresh)
    return out, int(len(texts) - len(todo))
