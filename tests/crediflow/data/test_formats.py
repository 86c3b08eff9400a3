import numpy as np
import pyarrow as pa

from crediflow.data.formats import (
    FORMAT_NAMES,
    NO_FORMAT,
    detect_formats,
    hash_strings,
    normalized_text,
    to_messages,
)
from crediflow.data.schema import MESSAGES, RAW_SCHEMA


def raw(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=RAW_SCHEMA)


ROWS = [
    {"prompt": "P", "response": "R"},
    {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]},
    {"instruction": "Classify", "input": "great film", "output": "positive", "system": "S"},
    {"conversations": [{"from": "human", "value": "q"}, {"from": "GPT", "value": "a"},
                       {"from": "narrator", "value": "x"}]},
    {"instruction": "Say hi", "input": "  ", "output": "hi"},
    {"label": "harmless"},
]


def test_detects_each_format_and_rows_without_one():
    formats = detect_formats(raw(ROWS))
    names = [FORMAT_NAMES[f] if f != NO_FORMAT else None for f in formats]
    assert names == ["prompt_response", "messages", "alpaca", "sharegpt", "alpaca", None]


def test_maps_every_format_to_canonical_messages_in_row_order():
    table = raw(ROWS[:5])
    messages = to_messages(table, detect_formats(table))
    assert messages.type == MESSAGES
    assert messages.to_pylist() == [
        [{"role": "user", "content": "P"}, {"role": "assistant", "content": "R"}],
        [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
        [{"role": "system", "content": "S"}, {"role": "user", "content": "Classify\n\ngreat film"},
         {"role": "assistant", "content": "positive"}],
        # unknown ShareGPT speakers are kept as they are, for the contract to reject
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
         {"role": "narrator", "content": "x"}],
        [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}],
    ]


def test_normalized_text_ignores_whitespace_differences_only():
    a = pa.array([[{"role": "user", "content": " hello   world "}]], MESSAGES)
    b = pa.array([[{"role": "user", "content": "hello world"}]], MESSAGES)
    c = pa.array([[{"role": "assistant", "content": "hello world"}]], MESSAGES)
    assert normalized_text(a) == normalized_text(b)
    assert normalized_text(a) != normalized_text(c)


def test_hash_is_stable_and_distinguishes_strings():
    digests = hash_strings(pa.array(["a", "b", "a"])).to_pylist()
    assert digests[0] == digests[2] != digests[1]
    assert all(len(d) == 32 and int(d, 16) >= 0 for d in digests)
    # a fixed value: ids must not change between runs, machines or releases
    assert hash_strings(pa.array(["crediflow"])).to_pylist() == ["e91402d11c2c8fe802ca74e8cdd3677f"]
    assert np.unique(hash_strings(pa.array([str(i) for i in range(10_000)])).to_numpy(
        zero_copy_only=False)).size == 10_000
