"""tokenize_sft: assistant-only labels found on the full tokenization, truncation, dropping,
the fallback template, input checks; TokenizedSFT's subset and with_labels."""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import pytest

from crediflow.data.schema import MESSAGES
from crediflow.errors import ConfigError, InputError
from crediflow.models.sft import CHATML_TEMPLATE, IGNORE, TokenizedSFT, tokenize_sft

END = "<|im_end|>"


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


CONVERSATIONS = [
    [_msg("system", "Rate it 1 to 5."), _msg("user", "Q: what does json dumps do?"),
     _msg("assistant", "it serializes obj"), _msg("user", "One digit."),
     _msg("assistant", "4")],
    [_msg("user", "what does json dumps do?"), _msg("assistant", "it serializes obj " * 3)],
    [_msg("user", "1 2 3 4 5")],  # no assistant turn: dropped
    [_msg("system", "One digit."), _msg("user", "Rate it"), _msg("assistant", "5"),
     _msg("user", "again")],  # ends with a user turn
]


@pytest.fixture(scope="module")
def tokenizer(tiny_lm):
    return tiny_lm[1]


def _with_template(tokenizer, template: str | None):
    """A copy of the tokenizer with another chat template (the fixture is shared)."""
    other = copy.deepcopy(tokenizer)
    other.chat_template = template
    return other


def _label_runs(result: TokenizedSFT, record: int) -> list[np.ndarray]:
    """The token ids of each contiguous run of labelled tokens of one record."""
    lo, hi = result.offsets[record], result.offsets[record + 1]
    trained = result.trained()[lo:hi]
    edges = np.flatnonzero(np.diff(np.r_[0, trained.astype(np.int8), 0]))
    ids = result.input_ids[lo:hi]
    return [ids[a:b] for a, b in zip(edges[::2], edges[1::2], strict=True)]


def test_labels_are_exactly_the_assistant_turns_and_their_end_marker(tokenizer):
    result = tokenize_sft(CONVERSATIONS, tokenizer, max_length=512)
    assert result.rows.tolist() == [0, 1, 3]
    for k, row in enumerate(result.rows):
        expected = [m["content"] + END for m in CONVERSATIONS[row] if m["role"] == "assistant"]
        runs = _label_runs(result, k)
        assert [tokenizer.decode(run) for run in runs] == expected
        # every token of the record is either such a label or IGNORE; labels are the ids
        lo, hi = result.offsets[k], result.offsets[k + 1]
        assert int(result.trained()[lo:hi].sum()) == sum(map(len, runs))
        rendered = tokenizer.apply_chat_template(CONVERSATIONS[row], tokenize=False)
        assert tokenizer.decode(result.input_ids[lo:hi]) == rendered
    trained = result.trained()
    assert np.array_equal(result.labels[trained], result.input_ids[trained])
    assert set(result.labels[~trained].tolist()) == {IGNORE}


def test_no_prompt_system_or_header_token_is_a_label(tokenizer):
    result = tokenize_sft(CONVERSATIONS, tokenizer, max_length=512)
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert not np.any(result.trained() & (result.input_ids == start))
    for k, row in enumerate(result.rows):
        lo, hi = result.offsets[k], result.offsets[k + 1]
        ignored = result.input_ids[lo:hi][~result.trained()[lo:hi]]
        text = tokenizer.decode(ignored)
        for message in CONVERSATIONS[row]:
            if message["role"] != "assistant":  # all of it in the ignored tokens, with header
                assert f"<|im_start|>{message['role']}\n{message['content']}" in text
        assert "assistant\n" in text
    # each record's last token is the newline after the closing marker: not trained
    assert not result.trained()[result.offsets[1:] - 1].any()


def test_content_merged_with_the_header_is_labelled_exactly(tokenizer):
    # The generation prompt ends with a space and no newline: the byte-level tokenizer merges
    # that space with the content's first word into one token ("Ġit"). Tokenizing the prompt
    # alone would end in a lone "Ġ" and put the boundary one token too late.
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}"
                "<|im_end|>{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant "
                "{% endif %}")
    merging = _with_template(tokenizer, template)
    conversation = [_msg("user", "what does json dumps do?"),
                    _msg("assistant", "it serializes obj")]
    result = tokenize_sft([conversation], merging, max_length=512)
    tokens = merging.convert_ids_to_tokens(result.input_ids.tolist())
    first = tokens.index("Ġit")
    trained = result.trained()
    assert trained[first] and not trained[:first].any()
    assert trained[first:].all()  # the content and <|im_end|>, which ends the rendering
    assert merging.decode(result.input_ids[trained]) == " it serializes obj" + END
    prompt = merging.apply_chat_template(conversation[:1], tokenize=False,
                                         add_generation_prompt=True)
    prompt_tokens = len(merging(prompt, add_special_tokens=False)["input_ids"])
    assert prompt_tokens == first + 1  # what the prompt-alone method would have got wrong


def test_truncation_keeps_arrays_consistent_and_drops_records_without_labels(tokenizer):
    full = tokenize_sft(CONVERSATIONS, tokenizer, max_length=512)
    max_length = 34  # cuts all three; the first answer of record 0 starts later
    cut = tokenize_sft(CONVERSATIONS, tokenizer, max_length=max_length)
    lengths = full.lengths
    assert cut.stats["truncated"] == int((lengths > max_length).sum()) > 0
    # the record whose first assistant token lies beyond max_length is dropped
    first_label = [np.flatnonzero(full.trained()[a:b])[0]
                   for a, b in zip(full.offsets[:-1], full.offsets[1:], strict=True)]
    survivors = full.rows[np.array(first_label) < max_length]
    assert 0 < len(survivors) < len(full)
    assert cut.rows.tolist() == survivors.tolist()
    assert cut.stats["dropped"] == len(CONVERSATIONS) - len(survivors)
    assert cut.stats["no_assistant"] == 1
    assert len(cut.input_ids) == len(cut.labels) == cut.offsets[-1] == cut.stats["tokens"]
    assert cut.stats["label_tokens"] == int(cut.trained().sum())
    assert (cut.lengths <= max_length).all()
    # each kept record is its untruncated self, cut: same ids and labels on the kept prefix
    for k, row in enumerate(cut.rows):
        j = full.rows.tolist().index(row)
        a, n = full.offsets[j], cut.lengths[k]
        assert n == min(full.lengths[j], max_length)
        sl = slice(cut.offsets[k], cut.offsets[k + 1])
        assert np.array_equal(cut.input_ids[sl], full.input_ids[a:a + n])
        assert np.array_equal(cut.labels[sl], full.labels[a:a + n])


def test_stats_and_pyarrow_input(tokenizer):
    result = tokenize_sft(CONVERSATIONS, tokenizer, max_length=512)
    assert result.stats == {"records": 4, "no_assistant": 1, "fallback_template": False,
                            "truncated": 0, "dropped": 1, "tokens": len(result.input_ids),
                            "label_tokens": int(result.trained().sum())}
    column = pa.chunked_array([pa.array(CONVERSATIONS[:2], MESSAGES),
                               pa.array(CONVERSATIONS[2:], MESSAGES)])
    for conversations in (column, column.combine_chunks()):
        same = tokenize_sft(conversations, tokenizer, max_length=512)
        for name in ("input_ids", "labels", "offsets", "rows"):
            assert np.array_equal(getattr(same, name), getattr(result, name))


def test_all_records_dropped_gives_an_empty_set(tokenizer):
    result = tokenize_sft([CONVERSATIONS[2]], tokenizer, max_length=512)
    assert len(result) == 0 and len(result.input_ids) == 0
    assert result.offsets.tolist() == [0]
    assert result.stats["dropped"] == result.stats["no_assistant"] == 1
    result = tokenize_sft(CONVERSATIONS[:1], tokenizer, max_length=3)  # cut before the answer
    assert len(result) == 0 and result.stats["truncated"] == result.stats["dropped"] == 1


def test_fallback_template(tokenizer):
    bare = _with_template(tokenizer, None)
    fallback = tokenize_sft(CONVERSATIONS, bare, max_length=512)
    explicit = tokenize_sft(CONVERSATIONS, _with_template(tokenizer, CHATML_TEMPLATE),
                            max_length=512)
    assert fallback.stats["fallback_template"] is True
    assert explicit.stats["fallback_template"] is False
    for name in ("input_ids", "labels", "offsets", "rows"):
        assert np.array_equal(getattr(fallback, name), getattr(explicit, name))
    with pytest.raises(InputError) as caught:
        tokenize_sft(CONVERSATIONS, bare, max_length=512, fallback_template=False)
    assert caught.value.field == "chat_template"


@pytest.mark.parametrize(("record", "field", "says"), [
    ([_msg("user", "hi"), {"role": "assistant"}], "content", "record 1, message 1"),
    ([_msg("user", "hi"), {"content": "x"}], "role", "missing role"),
    ([_msg("bot", "hi"), _msg("assistant", "x")], "role", "unknown role 'bot'"),
    ([_msg("user", "hi"), _msg("assistant", None)], "content", "missing content"),
    ("not a list", "messages", "record 1"),
    (None, "messages", "record 1"),
])
def test_malformed_records_name_the_record_and_field(tokenizer, record, field, says):
    with pytest.raises(InputError) as caught:
        tokenize_sft([CONVERSATIONS[0], record], tokenizer, max_length=512)
    assert caught.value.field == field
    assert says in str(caught.value)


def test_bad_inputs(tokenizer):
    with pytest.raises(InputError, match="no conversations"):
        tokenize_sft([], tokenizer, max_length=512)
    with pytest.raises(InputError, match="no conversations"):
        tokenize_sft(pa.array([], MESSAGES), tokenizer, max_length=512)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="max_length"):
            tokenize_sft(CONVERSATIONS, tokenizer, max_length=bad)

    class Slow:
        is_fast = False
        chat_template = CHATML_TEMPLATE

    with pytest.raises(InputError, match="fast tokenizer"):
        tokenize_sft(CONVERSATIONS, Slow(), max_length=512)
    # a template that renders a prefix differently from the whole: the record is named
    counting = _with_template(tokenizer, "{{ messages | length }}" + CHATML_TEMPLATE)
    with pytest.raises(InputError, match="record 0, message 2") as caught:
        tokenize_sft(CONVERSATIONS, counting, max_length=512)
    assert caught.value.field == "chat_template"


def test_subset_and_with_labels_round_trip(tokenizer):
    result = tokenize_sft(CONVERSATIONS, tokenizer, max_length=512)
    same = result.subset(np.arange(len(result)))
    back = result.subset([2, 0, 1]).subset([1, 2, 0])
    for other in (same, back):
        for name in ("input_ids", "labels", "offsets", "rows"):
            assert np.array_equal(getattr(other, name), getattr(result, name))
    picked = result.subset([2, 0])
    assert picked.rows.tolist() == [result.rows[2], result.rows[0]]
    a, b = result.offsets[2], result.offsets[3]
    assert np.array_equal(picked.input_ids[:picked.offsets[1]], result.input_ids[a:b])
    assert np.array_equal(picked.labels[:picked.offsets[1]], result.labels[a:b])
    assert picked.stats == result.stats and picked.stats is not result.stats

    relabelled = result.with_labels(np.where(result.record_of_token == 0, IGNORE, result.labels))
    assert relabelled.input_ids is result.input_ids and relabelled.labels.dtype == np.int64
    assert not relabelled.trained()[: result.offsets[1]].any()
    assert np.array_equal(relabelled.trained()[result.offsets[1]:],
                          result.trained()[result.offsets[1]:])
    restored = relabelled.with_labels(result.labels)
    assert np.array_equal(restored.labels, result.labels)
    assert np.array_equal(result.subset([]).offsets, [0]) and len(result.subset([])) == 0
