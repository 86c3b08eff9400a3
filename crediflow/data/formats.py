"""Map raw rows of every supported source format to canonical `messages`, column-wise.

Formats, tried in this order per row: OpenAI-style `messages`; ShareGPT `conversations`
(from/value); Alpaca (`instruction`, `input`, `output`); `prompt`/`response`. An optional
`system` field becomes a leading system turn for the last two.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from crediflow.data.schema import MESSAGE, MESSAGES, ROLES

FORMAT_NAMES: tuple[str, ...] = ("messages", "sharegpt", "alpaca", "prompt_response")
NO_FORMAT = -1

SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
}

# Fixed keys so that ids and content keys are the same on every run and machine.
_HASH_KEYS = ("crediflow-key-v1", "crediflow-key-v2")


def detect_formats(raw: pa.Table) -> np.ndarray:
    """Per row, the index into `FORMAT_NAMES` of the format it is in, or `NO_FORMAT`."""

    def present(name: str) -> np.ndarray:
        return raw.column(name).is_valid().to_numpy(zero_copy_only=False)

    return np.select(
        [
            present("messages"),
            present("conversations"),
            present("instruction") | present("output"),
            present("prompt") | present("response"),
        ],
        [0, 1, 2, 3],
        NO_FORMAT,
    ).astype(np.int8)


def to_messages(raw: pa.Table, formats: np.ndarray) -> pa.ListArray:
    """Canonical `messages` for every row of `raw`; every row must have a format."""
    if (formats == NO_FORMAT).any():
        raise ValueError("to_messages needs a format for every row; filter NO_FORMAT rows first")
    parts, order = [], []
    for code, build in enumerate((_from_messages, _from_sharegpt, _from_alpaca, _from_prompt)):
        idx = np.flatnonzero(formats == code)
        if len(idx) == len(raw):  # a single format: no copies to split and merge
            return build(raw)
        if len(idx):
            parts.append(build(raw.take(pa.array(idx))))
            order.append(idx)
    if not parts:
        return pa.array([], MESSAGES)
    merged = pa.concat_arrays(parts)
    return merged.take(pa.array(np.argsort(np.concatenate(order), kind="stable")))


def _column(table: pa.Table, name: str) -> pa.Array:
    return table.column(name).combine_chunks()


def _from_messages(raw: pa.Table) -> pa.ListArray:
    return _column(raw, "messages")


def _from_sharegpt(raw: pa.Table) -> pa.ListArray:
    conv = _column(raw, "conversations")
    offsets = conv.offsets.to_numpy()
    flat = conv.flatten()
    speaker = pc.utf8_lower(pc.utf8_trim_whitespace(flat.field("from")))
    keys = pa.array(list(SHAREGPT_ROLES))
    mapped = pa.array(list(SHAREGPT_ROLES.values())).take(pc.index_in(speaker, value_set=keys))
    role = pc.coalesce(mapped, flat.field("from"))  # unknown speakers are kept and rejected later
    turns = pa.StructArray.from_arrays([role, flat.field("value")], fields=list(MESSAGE))
    return pa.ListArray.from_arrays(pa.array(offsets - offsets[0], pa.int32()), turns)


def _from_alpaca(raw: pa.Table) -> pa.ListArray:
    instruction, extra = _column(raw, "instruction"), _column(raw, "input")
    has_extra = pc.fill_null(pc.utf8_length(pc.utf8_trim_whitespace(extra)), 0).to_numpy() > 0
    joined = pc.binary_join_element_wise(instruction, extra, "\n\n")
    user = pc.if_else(pa.array(has_extra), joined, instruction)
    return _turns(_column(raw, "system"), user, _column(raw, "output"))


def _from_prompt(raw: pa.Table) -> pa.ListArray:
    return _turns(_column(raw, "system"), _column(raw, "prompt"), _column(raw, "response"))


def _turns(system: pa.Array, user: pa.Array, assistant: pa.Array) -> pa.ListArray:
    """[system] + user + assistant per row; the system turn only where it has text."""
    n = len(user)
    has_sys = pc.fill_null(pc.utf8_length(pc.utf8_trim_whitespace(system)), 0).to_numpy() > 0
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(2 + has_sys, out=offsets[1:])
    user_pos = offsets[:-1] + has_sys
    rows = np.arange(n)
    take = np.empty(offsets[-1], np.int64)
    role = np.empty(offsets[-1], np.int8)
    take[offsets[:-1][has_sys]], role[offsets[:-1][has_sys]] = rows[has_sys], 0
    take[user_pos], role[user_pos] = n + rows, 1
    take[user_pos + 1], role[user_pos + 1] = 2 * n + rows, 2
    content = pa.concat_arrays([system, user, assistant]).take(pa.array(take))
    roles = pa.array(ROLES).take(pa.array(role))
    turns = pa.StructArray.from_arrays([roles, content], fields=list(MESSAGE))
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), turns)


def normalized_text(messages: pa.ListArray) -> pa.Array:
    """One string per conversation: roles and whitespace-collapsed contents, joined."""
    offsets = messages.offsets.to_numpy()
    flat = messages.flatten()
    content = pc.utf8_trim_whitespace(pc.fill_null(flat.field("content"), ""))
    content = pc.binary_join(pc.utf8_split_whitespace(content), " ")
    turns = pc.binary_join_element_wise(pc.fill_null(flat.field("role"), ""), content, "\x1f")
    per_row = pa.ListArray.from_arrays(pa.array(offsets - offsets[0], pa.int32()), turns)
    return pc.binary_join(per_row, "\x1e")


def hash_strings(values: pa.Array) -> pa.Array:
    """A 128-bit hex digest per string (two keyed SipHash-2-4 passes, stable across runs)."""
    array = np.asarray(values.to_numpy(zero_copy_only=False), dtype=object)
    halves = [pd.util.hash_array(array, hash_key=key, categorize=False) for key in _HASH_KEYS]
    digest = np.stack(halves, axis=1).astype(">u8").tobytes().hex().encode("ascii")
    return pa.array(np.frombuffer(digest, dtype="S32").astype("U32"))
