"""Tokenized SFT records: every record's tokens and labels in flat arrays, with offsets.

The one representation that token scoring, token selection and fine-tuning share: record i
is `input_ids[offsets[i]:offsets[i + 1]]`; `labels` holds the token id where it is trained
and -100 elsewhere (system, user, role headers, dropped tokens), as transformers' loss
expects. Flat arrays keep a million records in a few arrays instead of a million lists.

`tokenize_sft` makes one from chat records: rendered with the chat template, tokenized in one
batched call, labelled on the assistant turns only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import pyarrow as pa

from crediflow.data.schema import (
    ATTENTION_MASK,
    CONTENT,
    INPUT_IDS,
    LABELS,
    LABELS_ALL,
    MESSAGES_COLUMN,
    ROLE,
    ROLES,
    TOKEN_SCORES,
)
from crediflow.errors import ConfigError, InputError

IGNORE = -100  # the label of a token that is not trained (transformers' ignore_index)


@dataclass
class TokenizedSFT:
    """All records' tokens and labels, concatenated."""

    input_ids: np.ndarray  # (T,) int64
    labels: np.ndarray  # (T,) int64: the token id where trained, IGNORE elsewhere
    offsets: np.ndarray  # (N + 1,) int64: record i spans offsets[i]:offsets[i + 1]
    rows: np.ndarray  # (N,) int64: each record's row in the input it was made from
    stats: dict = field(default_factory=dict)  # truncated, dropped, ... (counts)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """(N,) tokens per record."""
        return np.diff(self.offsets)

    @property
    def record_of_token(self) -> np.ndarray:
        """(T,) the record each token belongs to."""
        return np.repeat(np.arange(len(self)), self.lengths)

    def trained(self) -> np.ndarray:
        """(T,) bool: tokens with a label."""
        return self.labels != IGNORE

    def with_labels(self, labels: np.ndarray) -> TokenizedSFT:
        """The same tokens with other labels (e.g. after token selection)."""
        return TokenizedSFT(self.input_ids, np.asarray(labels, np.int64), self.offsets,
                            self.rows, dict(self.stats))

    def positions(self, records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions in the flat arrays of every token of `records`, in that order; the
        offsets of those records laid end to end), without a loop over records."""
        records = np.asarray(records, np.int64)
        starts = self.offsets[records]
        lengths = self.offsets[records + 1] - starts
        offsets = np.zeros(len(records) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1]), offsets

    def subset(self, records: np.ndarray) -> TokenizedSFT:
        """Records `records` (indices into this set, in the order given)."""
        records = np.asarray(records, np.int64)
        take, offsets = self.positions(records)
        return TokenizedSFT(self.input_ids[take], self.labels[take], offsets, self.rows[records],
                            dict(self.stats))


# --- tokenizing chat records -------------------------------------------------------------------

# The chat template used for a tokenizer that has none (with fallback_template=True): plain
# ChatML, as SmolLM2 and Qwen write it. Each turn is `<|im_start|>{role}\n{content}<|im_end|>\n`;
# the generation prompt is `<|im_start|>assistant\n`.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CHATML_END = "<|im_end|>"  # ChatML's end-of-turn marker: an end-of-turn candidate everywhere

_ROLES = frozenset(ROLES)


def tokenize_sft(
    conversations: Sequence[Sequence[Mapping[str, Any]]] | pa.Array | pa.ChunkedArray,
    tokenizer: Any,
    *,
    max_length: int,
    fallback_template: bool = True,
) -> TokenizedSFT:
    """Render chat records with the tokenizer's chat template, tokenize them, label the
    assistant turns.

    `conversations`: one record per conversation, each a list of {"role", "content"} dicts
    (roles system / user / assistant), or the `messages` column as a pyarrow list array.
    `tokenizer`: a fast (Rust-backed) Hugging Face tokenizer; offsets are needed.

    Every record is rendered with `apply_chat_template(..., tokenize=False)` and all records are
    tokenized in one batched call, adding no special tokens beyond what the template writes.
    Labels are the token id on assistant content and on the end-of-turn marker that closes
    each assistant turn (e.g. `<|im_end|>`), IGNORE (-100) everywhere else: system and user
    turns, role headers, the newline after a turn. The assistant spans are found as character
    spans of the rendered text (see `_assistant_spans`) and mapped onto the tokens of the full
    tokenization by their offsets, so a token that the tokenizer merges across the header /
    content boundary is labelled (it carries content); a token wholly inside a header never.

    Records longer than `max_length` tokens are cut to their first `max_length` tokens. A
    record is dropped when it has no assistant turn, or when no assistant token is left after
    the cut; `rows` gives each kept record's index in `conversations`. Without any record kept
    the result is empty (no error).

    A tokenizer without a chat template: with `fallback_template` the module's
    CHATML_TEMPLATE (plain ChatML) is used and stats["fallback_template"] is True; without,
    InputError(field="chat_template").

    stats: records (input records), tokens and label_tokens (in the result), truncated
    (records cut to max_length, dropped ones included), dropped (records not kept),
    no_assistant (of those, records without an assistant turn), fallback_template (bool).

    Raises InputError on empty input, a malformed record (not a list of messages, a missing
    or non-string role or content, an unknown role; the message names the record and
    message index, `field` the key), a slow tokenizer, or a template that renders a
    conversation's prefix differently from the conversation or rewrites an assistant content
    beyond trimming (naming the record and message).
    ConfigError when max_length is not a positive integer.
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int | np.integer) \
            or max_length < 1:
        raise ConfigError(f"must be a positive integer, got {max_length!r}", key="max_length")
    records = _as_records(conversations)
    template = _chat_template(tokenizer, fallback_template)
    if not getattr(tokenizer, "is_fast", False):
        raise InputError("token labelling needs a fast tokenizer (offsets); "
                         f"{type(tokenizer).__name__} is a slow one: load it with use_fast=True",
                         field="tokenizer")
    markers = _end_markers(tokenizer)
    texts, spans, rows = [], [], []
    for i, record in enumerate(records):
        _check_record(i, record)
        if not any(m[ROLE] == "assistant" for m in record):
            continue
        text, record_spans = _assistant_spans(i, record, tokenizer, template, markers)
        texts.append(text)
        spans.append(record_spans)
        rows.append(i)
    stats = {"records": len(records), "no_assistant": len(records) - len(rows),
             "fallback_template": template is not None}
    return _label_and_cut(tokenizer, texts, spans, np.asarray(rows, np.int64),
                          max_length=max_length, stats=stats)


def _as_records(conversations: Any) -> list:
    """The records as Python lists (a pyarrow array converted once); InputError when empty."""
    if isinstance(conversations, pa.Array | pa.ChunkedArray):
        conversations = conversations.to_pylist()
    elif isinstance(conversations, str | bytes | Mapping):
        raise InputError("expected a sequence of conversations (lists of messages), got "
                         f"{type(conversations).__name__}", field=MESSAGES_COLUMN)
    records = list(conversations)
    if not records:
        raise InputError("no conversations to tokenize", field=MESSAGES_COLUMN)
    return records


def _chat_template(tokenizer: Any, fallback: bool) -> str | None:
    """None to use the tokenizer's own chat template, else the fallback ChatML template."""
    if getattr(tokenizer, "chat_template", None):
        return None
    if not fallback:
        raise InputError(f"the tokenizer {getattr(tokenizer, 'name_or_path', '') or ''!s} has "
                         "no chat template; set one, or allow the ChatML fallback",
                         field="chat_template")
    return CHATML_TEMPLATE


def _end_markers(tokenizer: Any) -> tuple[str, ...]:
    """Texts that may close an assistant turn: the tokenizer's special tokens and ChatML's
    `<|im_end|>`, longest first (so that the longest one matches)."""
    found = {CHATML_END, *(getattr(tokenizer, "all_special_tokens", None) or ())}
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    found.update(t.content for t in decoder.values() if getattr(t, "special", False))
    found.discard("")
    return tuple(sorted(found, key=lambda t: (-len(t), t)))


def _check_record(i: int, record: Any) -> None:
    """InputError naming record `i` (and the message and key) when it is not a list of
    {"role", "content"} messages with known roles and string contents."""
    if not isinstance(record, list | tuple):
        raise InputError(f"record {i}: expected a list of messages, got "
                         f"{type(record).__name__}", field=MESSAGES_COLUMN)
    for j, message in enumerate(record):
        if not isinstance(message, Mapping):
            raise InputError(f"record {i}, message {j}: expected a dict with role and content, "
                             f"got {type(message).__name__}", field=MESSAGES_COLUMN)
        role, content = message.get(ROLE), message.get(CONTENT)
        if role not in _ROLES:
            raise InputError(f"record {i}, message {j}: "
                             f"{'missing role' if role is None else f'unknown role {role!r}'} "
                             f"(allowed: {', '.join(ROLES)})", field=ROLE)
        if not isinstance(content, str):
            raise InputError(f"record {i}, message {j}: "
                             f"{'missing content' if content is None else 'content is not text'}",
                             field=CONTENT)


def _render(tokenizer: Any, messages: list, template: str | None, *, prompt: bool) -> str:
    """The chat template's text for `messages` (with the generation prompt when `prompt`)."""
    text = tokenizer.apply_chat_template([{ROLE: m[ROLE], CONTENT: m[CONTENT]} for m in messages],
                                         chat_template=template, tokenize=False,
                                         add_generation_prompt=prompt)
    return text if isinstance(text, str) else text[0]


def _assistant_spans(
    i: int, record: list, tokenizer: Any, template: str | None, markers: tuple[str, ...]
) -> tuple[str, list[tuple[int, int]]]:
    """Record `i`'s rendered text and the character span [start, end) of each assistant turn:
    its content and the end-of-turn marker after it.

    For assistant turn k, the conversation before it rendered with the generation prompt ends
    where the turn's content may start, and the conversation up to and including the turn
    ends after its marker; both must be prefixes of the full rendering (InputError otherwise).
    Between the two the content is looked up as written (else stripped, for templates that
    trim), and the marker is a special token after it, behind optional whitespace; a turn
    without one is labelled on its content alone.
    """
    full = _render(tokenizer, record, template, prompt=False)
    spans = []
    for k, message in enumerate(record):
        if message[ROLE] != "assistant":
            continue
        head = _render(tokenizer, record[:k], template, prompt=True)
        last = k == len(record) - 1
        turn = full if last else _render(tokenizer, record[:k + 1], template, prompt=False)
        if not (full.startswith(head) and full.startswith(turn)):
            raise InputError(f"record {i}, message {k}: the chat template renders the "
                             "conversation before this assistant turn differently from the whole "
                             "conversation, so its tokens cannot be located", field="chat_template")
        start, end = _locate(full, message[CONTENT], len(head), len(turn))
        if start < 0:
            raise InputError(f"record {i}, message {k}: the chat template changes this assistant "
                             "turn's content, so its tokens cannot be located", field=CONTENT)
        spans.append((start, _after_marker(full, end, len(turn), markers)))
    return full, spans


def _locate(text: str, content: str, lo: int, hi: int) -> tuple[int, int]:
    """[start, end) of `content` in text[lo:hi], as written or else stripped; (-1, -1) if not
    there."""
    for needle in (content, content.strip()):
        start = text.find(needle, lo, hi)
        if start >= 0:
            return start, start + len(needle)
    return -1, -1


def _after_marker(text: str, end: int, hi: int, markers: tuple[str, ...]) -> int:
    """Where the end-of-turn marker after position `end` ends (before `hi`), whitespace before
    it included; `end` itself when no marker follows."""
    at = end
    while at < hi and text[at].isspace():
        at += 1
    for marker in markers:
        if text.startswith(marker, at) and at + len(marker) <= hi:
            return at + len(marker)
    return end


def _encode(tokenizer: Any, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One batched call: (flat token ids (T,), flat character offsets (T, 2), tokens per text)."""
    if not texts:
        return np.zeros(0, np.int64), np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True,
                        return_attention_mask=False, return_token_type_ids=False)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    counts = np.fromiter(map(len, ids), np.int64, len(ids))
    total = int(counts.sum())
    flat_ids = np.fromiter(chain.from_iterable(ids), np.int64, total)
    flat_offsets = np.fromiter(chain.from_iterable(chain.from_iterable(offsets)), np.int64,
                               2 * total).reshape(total, 2)
    return flat_ids, flat_offsets, counts


def _label_mask(char_offsets: np.ndarray, counts: np.ndarray, texts: list[str],
                spans: list[list[tuple[int, int]]]) -> np.ndarray:
    """(T,) bool: tokens whose characters overlap an assistant span of their record.

    Records' characters are laid end to end (a gap of one between records), so that all spans
    form one sorted list of disjoint intervals; for each token, the first span ending after the
    token's start is the only one it can overlap (searchsorted, no loop over tokens). A
    zero-width token counts as one character wide.
    """
    base = np.zeros(len(texts), np.int64)
    np.cumsum([len(t) + 1 for t in texts[:-1]], out=base[1:])
    per_record = np.fromiter(map(len, spans), np.int64, len(spans))
    flat = np.array([s for record in spans for s in record], np.int64).reshape(-1, 2)
    flat += np.repeat(base, per_record)[:, None]
    shift = np.repeat(base, counts)
    starts = char_offsets[:, 0] + shift
    ends = np.maximum(char_offsets[:, 1] + shift, starts + 1)
    which = np.searchsorted(flat[:, 1], starts, side="right")
    inside = which < len(flat)
    inside[inside] = flat[which[inside], 0] < ends[inside]
    return inside


def _label_and_cut(tokenizer: Any, texts: list[str], spans: list[list[tuple[int, int]]],
                   rows: np.ndarray, *, max_length: int, stats: dict) -> TokenizedSFT:
    """Tokenize the rendered records, label the assistant spans, cut each record to
    `max_length` tokens and drop records left without a label."""
    ids, char_offsets, counts = _encode(tokenizer, texts)
    labels = np.where(_label_mask(char_offsets, counts, texts, spans), ids, IGNORE)
    starts = np.zeros(len(counts), np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    kept_lengths = np.minimum(counts, max_length)
    keep = np.arange(len(ids)) - np.repeat(starts, counts) < np.repeat(kept_lengths, counts)
    offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(kept_lengths, out=offsets[1:])
    cut = TokenizedSFT(ids[keep], labels[keep], offsets, rows, stats)
    has_label = np.bincount(cut.record_of_token[cut.trained()], minlength=len(cut)) > 0
    result = cut.subset(np.flatnonzero(has_label))
    result.stats.update(truncated=int((counts > max_length).sum()),
                        dropped=stats["records"] - len(result),
                        tokens=len(result.input_ids), label_tokens=int(result.trained().sum()))
    return result


def sft_columns(sft: TokenizedSFT, labels_all: np.ndarray | None = None,
                scores: np.ndarray | None = None) -> dict[str, pa.Array]:
    """List columns (one row per record) of the tokens, labels, attention mask and, when
    given, the uncleaned labels and per-token scores; made from the flat arrays at once."""
    offsets = pa.array(sft.offsets.astype(np.int32))
    columns = {
        INPUT_IDS: pa.ListArray.from_arrays(offsets, pa.array(sft.input_ids.astype(np.int32))),
        LABELS: pa.ListArray.from_arrays(offsets, pa.array(sft.labels.astype(np.int32))),
        ATTENTION_MASK: pa.ListArray.from_arrays(
            offsets, pa.array(np.ones(len(sft.input_ids), np.int8))),
    }
    if labels_all is not None:
        columns[LABELS_ALL] = pa.ListArray.from_arrays(offsets,
                                                       pa.array(labels_all.astype(np.int32)))
    if scores is not None:
        columns[TOKEN_SCORES] = pa.ListArray.from_arrays(
            offsets, pa.array(scores.astype(np.float32), from_pandas=True))
    return columns


def sft_from_table(table: pa.Table, *, labels: str = LABELS) -> TokenizedSFT:
    """The flat representation of a table made by `sft_columns` (`labels` names the label
    column to use, e.g. LABELS_ALL for the records before cleaning)."""
    ids = table.column(INPUT_IDS).combine_chunks()
    label_col = table.column(labels).combine_chunks()
    offsets = ids.offsets.to_numpy().astype(np.int64)
    offsets = offsets - offsets[0]
    return TokenizedSFT(ids.flatten().to_numpy().astype(np.int64),
                        label_col.flatten().to_numpy().astype(np.int64), offsets,
                        np.arange(len(ids), dtype=np.int64))
