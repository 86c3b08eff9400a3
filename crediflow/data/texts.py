"""The text of a record (the turns of chosen roles) and content keys of texts."""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crediflow.core.cpus import available_cpus
from crediflow.errors import CrediflowError, InputError
from crediflow.data.formats import hash_strings
from crediflow.data.cache import write_shard


def check_texts(texts: Sequence[str] | pa.Array | pa.ChunkedArray) -> pa.StringArray:
    """`texts` as an Arrow string array; every text must be a non-blank string."""
    if isinstance(texts, str):
        raise InputError("expected a sequence of texts, got a single string", field="text")
    try:
        if isinstance(texts, (pa.Array, pa.ChunkedArray)):
            array = pc.cast(texts, pa.string())
            if isinstance(array, pa.ChunkedArray):
                array = array.combine_chunks()
        else:
            array = pa.array(texts if isinstance(texts, (list, tuple)) else list(texts),
                             pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as err:
        raise InputError(f"every text must be a string ({err})", field="text") from None
    blank = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(array)), 0), True)
    bad = np.flatnonzero(blank.to_numpy(zero_copy_only=False))
    if len(bad):
        raise InputError(
            f"{len(bad)} text(s) are missing or blank, rows {bad[:10].tolist()}; "
            "drop or fill them before embedding",
            field="text",
        )
    return array



def conversation_texts(
    messages: pa.ListArray | pa.ChunkedArray,
    roles: Sequence[str] = ("user", "assistant"),
) -> list[str]:
    """The text of each record: the contents of its turns in `roles`, joined by a newline.

    A record without such a turn gives an empty string (which `embed_texts` refuses).
    """
    if isinstance(messages, pa.ChunkedArray):
        messages = (messages.combine_chunks() if messages.num_chunks
                    else pa.array([], messages.type))
    if not pa.types.is_list(messages.type) and not pa.types.is_large_list(messages.type):
        raise InputError(f"expected a list<struct<role, content>> column, got {messages.type}",
                         field="messages")
    n = len(messages)
    flat = messages.flatten()
    parents = pc.list_parent_indices(messages).to_numpy()
    # struct_field, unlike .field(), masks the fields of null turns
    content = pc.struct_field(flat, "content")
    keep = pc.and_(
        pc.is_in(pc.struct_field(flat, "role"), value_set=pa.array(list(roles), pa.string())),
        pc.is_valid(content),
    )
    keep = pc.fill_null(keep, False).to_numpy(zero_copy_only=False)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(parents[keep], minlength=n), out=offsets[1:])
    contents = content.filter(pa.array(keep))
    per_row = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), contents)
    return pc.binary_join(per_row, "\n").to_pylist()


def text_keys(texts: Sequence[str], model_id: str) -> np.ndarray:
    """A 32-hex-digit content key per text for `model_id`, stable across runs and machines."""
    array = check_texts(texts)
    keyed = pc.binary_join_element_wise(pa.scalar(model_id), array, "\x1f")
    return np.asarray(hash_strings(keyed).to_numpy(zero_copy_only=False), dtype="U32")
