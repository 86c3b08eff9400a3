"""Raters: map texts to quality ratings for DS2 selection (DESIGN.md §3 "select").

Two raters share one interface, `rate(texts) -> Ratings`:

- `HFRater` scores with a local Hugging Face causal LM in ONE forward pass per batch: the
  prompt ends exactly where the score comes, and the next-token distribution restricted to the
  score tokens ("1".."5") gives probabilities, an expected score and the most likely score.
  The instructions before the text are the same for every row, so their keys and values are
  computed once and reused by every batch; only the text and the closing tokens cost compute.
  The default instructions are a rubric of DS2's criteria (rarity, complexity,
  informativeness) weighed into one overall score; their length costs this rater little.
- `OpenAIRater` asks any OpenAI-compatible chat endpoint for `{"score": N}`, with bounded
  concurrency and retries.

`RatingCache` keeps ratings on disk by content hash, so a rerun rates only new texts.
"""

from __future__ import annotations

import concurrent.futures as futures
import copy
import email.utils
import http.client
import inspect
import json
import logging
import os
import random
import re
import string
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crediflow.errors import CrediflowError, InputError
from crediflow.formats import hash_strings
from crediflow.shards import write_shard

log = logging.getLogger(__name__)

DEFAULT_SCORES: tuple[int, ...] = (1, 2, 3, 4, 5)
# The criteria are DS2's (rarity, complexity, informativeness), folded into one overall score
# on the rating scale. The rubric comes before the text, so HFRater computes it once.
_RUBRIC = (
    "You rate samples of training data for an AI assistant. Judge the sample below on three "
    "criteria: rarity (how uncommon and valuable its topic or task is), complexity (how much "
    "reasoning or knowledge a good answer needs) and informativeness (how correct, complete and "
    "useful its answer is). Weigh them into one overall quality score from 1 (poor: wrong, "
    "useless or harmful) to 5 (excellent: correct, helpful, clear and substantial). Use the "
    "whole scale: samples of similar quality may still differ by a point. "
)
DEFAULT_TEMPLATE = _RUBRIC + "Reply with the overall score as one digit.\n\nSample:\n{text}"
DEFAULT_JSON_TEMPLATE = (_RUBRIC + 'Reply only with JSON like {{"score": 3}}.\n\n'
                         "Sample:\n{text}")

DEFAULT_ANSWER_PREFIX = "Score: "

_PLACEHOLDER = "CREDIFLOWTEXTPLACEHOLDER7F3A"
_FLUSH_EVERY = 256  # answers between cache writes in OpenAIRater, so a crash loses little
_MAX_RETRY_AFTER = 60.0  # seconds: cap on a server's Retry-After


class RaterError(CrediflowError):
    """A rater could not rate some texts; the message names the endpoint, the count and why."""

    def __init__(self, message: str, *, failed: int = 0, reason: str = "") -> None:
        self.failed, self.reason = failed, reason
        super().__init__(message)


@dataclass
class Ratings:
    """Ratings of N texts over S score values, in the order the texts were given."""

    expected: np.ndarray  # (N,) float: expected score under the model's score distribution
    argmax: np.ndarray  # (N,) int: most likely score
    probs: np.ndarray  # (N, S) probabilities over the score values (rows sum to 1)
    from_cache: np.ndarray | None = None  # (N,) bool: read from the rating cache, not rated

    def __len__(self) -> int:
        return len(self.expected)


# --------------------------------------------------------------------------- input checks


def _check_texts(texts: Sequence[str]) -> list[str]:
    """`texts` as a list of str, or an InputError naming the first bad row."""
    if isinstance(texts, str | bytes):
        raise InputError("texts must be a sequence of strings, not a single string",
                         field="texts")
    out = list(texts)
    bad = [i for i, t in enumerate(out) if not isinstance(t, str)]
    if bad:
        raise InputError(f"{len(bad)} text(s) are not strings, first at row {bad[0] + 1} "
                         f"({type(out[bad[0]]).__name__})", field="texts")
    return out


def _check_template(template: str) -> None:
    """A str.format template whose only field is {text}, used exactly once."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise InputError(f"bad rating template: {exc} (write literal braces as {{{{ }}}})",
                         field="template") from exc
    if fields != ["text"]:
        raise InputError(f"the rating template must contain {{text}} exactly once and no other "
                         f"field, found {fields}; write literal braces as {{{{ }}}}",
                         field="template")


def _check_scores(scores: Sequence[int]) -> tuple[int, ...]:
    """At least two distinct integer score values."""
    values = tuple(scores)
    if (len(values) < 2 or len(set(values)) != len(values)
            or not all(isinstance(s, int | np.integer) and not isinstance(s, bool)
                       for s in values)):
        raise InputError(f"scores must be two or more distinct integers, got {values}",
                         field="scores")
    return tuple(int(s) for s in values)


def _positive(value: float, name: str, *, allow_zero: bool = False) -> None:
    """An InputError unless `value` is > 0 (or >= 0 with `allow_zero`)."""
    if not (value >= 0 if allow_zero else value > 0):
        raise InputError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}",
                         field=name)


def _one_hot(argmax: np.ndarray, scores: tuple[int, ...]) -> np.ndarray:
    """(N, S) one-hot rows of the given score values."""
    index = pd.Index(scores).get_indexer(argmax)
    probs = np.zeros((len(argmax), len(scores)))
    probs[np.arange(len(argmax)), index] = 1.0
    return probs


# --------------------------------------------------------------------------- cache


class RatingCache:
    """Ratings on disk by content hash of (rater id, scope, text); one folder per rater id.

    `scope` is everything besides the text that changes a rating (template, model, settings);
    the raters fill it in themselves. Each `put_many` writes one Parquet shard atomically
    (temporary file, then rename), so a crashed run leaves no partial shard and concurrent
    runs never overwrite each other. Shards written by other processes are read at the next
    lookup.
    """

    def __init__(self, folder: Path, rater_id: str) -> None:
        if not rater_id:
            raise InputError("the rating cache needs a rater id", field="rater_id")
        self.rater_id = rater_id
        self.folder = Path(folder) / hash_strings(pa.array([rater_id])).to_pylist()[0][:16]
        self._seen: set[str] = set()
        self._index = pd.Index([], dtype=object)
        self._expected = np.empty(0)
        self._argmax = np.empty(0, dtype=np.int64)
        self._probs = np.empty((0, 0))  # NaN-padded rows: shards may hold different widths

    def __len__(self) -> int:
        self._refresh()
        return len(self._index)

    def keys(self, texts: Sequence[str], *, scope: str = "") -> np.ndarray:
        """The cache key of each text: a hash of (rater id, scope, text)."""
        head = hash_strings(pa.array([f"{self.rater_id}\x1f{scope}"])).to_pylist()[0]
        joined = pc.binary_join_element_wise(head, pa.array(_check_texts(texts), pa.string()),
                                             "\x1f")
        return np.asarray(hash_strings(joined).to_numpy(zero_copy_only=False))

    def get_many(self, texts: Sequence[str], *, scope: str = "") -> tuple[np.ndarray, np.ndarray]:
        """(found mask (N,), scores (N,) float): the cached score of each text, NaN if absent."""
        found, expected, _, _ = self.lookup(self.keys(texts, scope=scope))
        return found, expected

    def put_many(
        self,
        texts: Sequence[str],
        scores: np.ndarray,
        *,
        scope: str = "",
        argmax: np.ndarray | None = None,
        probs: np.ndarray | None = None,
    ) -> None:
        """Store the scores (and optionally most likely scores and probabilities) of texts.

        Texts already cached are skipped. `argmax` defaults to the rounded scores.
        """
        self.put_keys(self.keys(texts, scope=scope), scores, argmax=argmax, probs=probs)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(found (N,), expected (N,) float NaN if absent, argmax (N,) int -1 if absent,
        probs (N, W) float: each row's stored probabilities, NaN-padded to the widest stored;
        all NaN when absent or not stored)."""
        self._refresh()
        where = self._index.get_indexer(np.asarray(keys, dtype=object))
        found = where >= 0
        n = len(where)
        expected, argmax = np.full(n, np.nan), np.full(n, -1, dtype=np.int64)
        probs = np.full((n, self._probs.shape[1]), np.nan)
        expected[found] = self._expected[where[found]]
        argmax[found] = self._argmax[where[found]]
        probs[found] = self._probs[where[found]]
        return found, expected, argmax, probs

    def put_keys(
        self,
        keys: np.ndarray,
        scores: np.ndarray,
        *,
        argmax: np.ndarray | None = None,
        probs: np.ndarray | None = None,
    ) -> None:
        """`put_many` by precomputed keys (see `keys`)."""
        keys = np.asarray(keys, dtype=object)
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != keys.shape:
            raise InputError(f"need one score per text: {len(keys)} texts, scores of shape "
                             f"{scores.shape}", field="scores")
        if not np.isfinite(scores).all():
            raise InputError("refusing to cache NaN or infinite scores", field="scores")
        argmax = np.rint(scores).astype(np.int64) if argmax is None else np.asarray(argmax)
        if argmax.shape != keys.shape:
            raise InputError(f"need one argmax per text: {len(keys)} texts, argmax of shape "
                             f"{argmax.shape}", field="argmax")
        if probs is not None and (np.ndim(probs) != 2 or len(probs) != len(keys)):
            raise InputError(f"probs must be (N, S) with N = {len(keys)}, got shape "
                             f"{np.shape(probs)}", field="probs")
        self._refresh()
        new = (self._index.get_indexer(keys) < 0) & ~pd.Index(keys).duplicated()
        if not new.any():
            return
        columns: dict[str, pa.Array] = {
            "key": pa.array(keys[new].astype(str), pa.string()),
            "expected": pa.array(scores[new], pa.float64()),
            "argmax": pa.array(argmax[new].astype(np.int64), pa.int64()),
        }
        if probs is not None:
            rows = np.asarray(probs, dtype=np.float64)[new]
            columns["probs"] = pa.FixedSizeListArray.from_arrays(pa.array(rows.ravel()),
                                                                 rows.shape[1])
        table = pa.table(columns).replace_schema_metadata({"rater_id": self.rater_id})
        try:
            name = write_shard(self.folder, table)
        except OSError as exc:
            raise CrediflowError(f"cannot write the rating cache in {self.folder}: {exc}") from exc
        self._seen.add(name)
        self._extend(table)

    def _refresh(self) -> None:
        """Read the shards that appeared since the last call."""
        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob("*.parquet")):
            if path.name not in self._seen:
                try:
                    table = pq.read_table(path)
                except (OSError, pa.ArrowInvalid) as exc:
                    raise CrediflowError(f"unreadable rating cache shard {path}: {exc}; "
                                         "delete it to rate those texts again") from exc
                self._seen.add(path.name)
                self._extend(table)

    def _extend(self, table: pa.Table) -> None:
        """Add a shard's rows to the in-memory index (a key already held is kept once)."""
        keys = pd.Index(table.column("key").to_numpy(zero_copy_only=False).astype(object))
        new = (self._index.get_indexer(keys) < 0) & ~keys.duplicated()
        if not new.any():
            return
        probs = np.empty((len(keys), 0))
        if "probs" in table.column_names:
            column = table.column("probs").combine_chunks()
            probs = column.flatten().to_numpy().reshape(len(column), -1)
        width = max(self._probs.shape[1], probs.shape[1])
        self._index = self._index.append(keys[new])
        self._expected = np.concatenate([self._expected, table.column("expected").to_numpy()[new]])
        self._argmax = np.concatenate([self._argmax, table.column("argmax").to_numpy()[new]])
        self._probs = np.concatenate([_pad(self._probs, width), _pad(probs[new], width)])


def _pad(matrix: np.ndarray, width: int) -> np.ndarray:
    """`matrix` with NaN columns appended up to `width`."""
    return np.pad(matrix.astype(np.float64), ((0, 0), (0, width - matrix.shape[1])),
                  constant_values=np.nan)


def _ratings_from_cache(
    cache: RatingCache, keys: np.ndarray, scores: tuple[int, ...]
) -> tuple[np.ndarray, Ratings]:
    """(found mask, Ratings whose found rows are filled in) for `keys`."""
    found, expected, argmax, stored = cache.lookup(keys)
    probs = np.zeros((len(keys), len(scores)))
    has_probs = found & (np.sum(~np.isnan(stored), axis=1) == len(scores))
    if has_probs.any():
        probs[has_probs] = stored[has_probs, :len(scores)]
    one_hot = found & ~has_probs
    probs[one_hot] = _one_hot(argmax[one_hot], scores)
    return found, Ratings(expected=expected, argmax=argmax, probs=probs)


def _unique(texts: list[str]) -> tuple[np.ndarray, list[str]]:
    """(inverse index of each text into the unique texts, the unique texts)."""
    codes, uniques = pd.factorize(pd.Series(texts, dtype=object), sort=False)
    return codes, list(uniques)


# --------------------------------------------------------------------------- local model


class HFRater:
    """Rate texts with a local causal LM from the next-token distribution over score tokens.

    The prompt is `template.format(text=...)` as a user turn of the tokenizer's chat template
    (with the generation prompt), so it ends where the answer's first token comes; a tokenizer
    without a chat template uses the formatted template as is. Only the text is truncated, to
    keep the whole prompt within `max_prompt_tokens`. The text is tokenized on its own (special
    tokens in it are treated as plain text), so put `{text}` after a newline rather than after
    a space.

    `answer_prefix` starts the assistant's answer (default "Score: "): small instruct models
    put far more of their next-token mass on the score digits after it (SmolLM2-135M: about
    55% instead of 6%). When it ends with a space and the tokenizer has single tokens for
    " 1", " 2", ..., the space moves into the score tokens, as the tokenizer would split it.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        template: str = DEFAULT_TEMPLATE,
        scores: Sequence[int] = DEFAULT_SCORES,
        max_prompt_tokens: int = 256,
        batch_size: int = 8,
        cache: RatingCache | None = None,
        model_id: str | None = None,
        reuse_prefix: bool = True,
        answer_prefix: str = DEFAULT_ANSWER_PREFIX,
    ) -> None:
        _check_template(template)
        self.scores = _check_scores(scores)
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}", field="batch_size")
        self.model, self.tokenizer = model, tokenizer
        self.template, self.batch_size = template, batch_size
        self.max_prompt_tokens, self.cache = max_prompt_tokens, cache
        self.reuse_prefix, self.answer_prefix = reuse_prefix, answer_prefix
        self.score_ids = self._score_token_ids()
        self.prefix_ids, self.suffix_ids = self._frame()
        self.text_budget = max_prompt_tokens - len(self.prefix_ids) - len(self.suffix_ids)
        if self.text_budget < 1:
            raise InputError(
                f"the instructions alone take {len(self.prefix_ids) + len(self.suffix_ids)} "
                f"tokens, leaving no room for the text within max_prompt_tokens="
                f"{max_prompt_tokens}; raise it or shorten the template",
                field="max_prompt_tokens")
        name = model_id or getattr(getattr(model, "config", None), "name_or_path", "") or ""
        if cache is not None and not name:
            raise InputError("this model has no name to key the rating cache with; pass "
                             "model_id=...", field="model_id")
        self.model_id = name
        self._logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._prefix_cache: Any = None

    @property
    def scope(self) -> str:
        """Everything besides the text that changes a rating: the cache scope."""
        return json.dumps({
            "rater": "hf", "model": self.model_id, "template": self.template,
            "chat_template": getattr(self.tokenizer, "chat_template", None),
            "scores": self.scores, "max_prompt_tokens": self.max_prompt_tokens,
            "answer_prefix": self.answer_prefix,
        }, sort_keys=True)

    def _score_token_ids(self) -> list[int]:
        """The token id of each score string; each must be one distinct token. Where the answer
        prefix ends with a space and " 1".." 5" are single tokens, those are used and the space
        leaves the prefix."""
        if self.answer_prefix.endswith(" ") and self.answer_prefix.strip():
            spaced = [self.tokenizer.encode(f" {s}", add_special_tokens=False)
                      for s in self.scores]
            if all(len(ids) == 1 for ids in spaced) and len({i[0] for i in spaced}) == len(spaced):
                self.answer_prefix = self.answer_prefix.rstrip(" ")
                return [ids[0] for ids in spaced]
        ids = []
        for score in self.scores:
            tokens = self.tokenizer.encode(str(score), add_special_tokens=False)
            if len(tokens) != 1:
                raise InputError(f"score {score} is not a single token for this tokenizer "
                                 f"(it encodes to {tokens}); use scores that are",
                                 field="scores")
            ids.append(tokens[0])
        if len(set(ids)) != len(ids):
            raise InputError(f"scores {self.scores} share token ids {ids}", field="scores")
        return ids

    def _frame(self) -> tuple[list[int], list[int]]:
        """Token ids of the prompt before and after the text."""
        content = self.template.format(text=_PLACEHOLDER)
        chat = getattr(self.tokenizer, "chat_template", None)
        if chat:
            prompt = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False,
                add_generation_prompt=True)
        else:
            prompt = content
        prompt += self.answer_prefix
        if prompt.count(_PLACEHOLDER) != 1:
            raise InputError("the chat template altered the rating prompt's text slot",
                             field="template")
        before, after = prompt.split(_PLACEHOLDER)
        prefix = self.tokenizer.encode(before, add_special_tokens=False) if before else []
        suffix = self.tokenizer.encode(after, add_special_tokens=False) if after else []
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if (not chat and bos is not None and getattr(self.tokenizer, "add_bos_token", False)
                and prefix[:1] != [bos]):
            prefix = [bos, *prefix]
        return prefix, suffix

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """The full prompt token ids of each text (instructions, truncated text, closing)."""
        return [self.prefix_ids + ids + self.suffix_ids for ids in self._text_ids(texts)]

    def _text_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, truncated to the text budget."""
        if not texts:
            return []
        return self.tokenizer(
            list(texts), add_special_tokens=False, truncation=True,
            max_length=self.text_budget, split_special_tokens=True,
            return_attention_mask=False)["input_ids"]

    def rate(self, texts: Sequence[str]) -> Ratings:
        """Ratings of `texts` (cached ones are read, not recomputed; duplicates rated once)."""
        texts = _check_texts(texts)
        codes, uniques = _unique(texts)
        scores = self.scores
        if self.cache is not None:
            keys = self.cache.keys(uniques, scope=self.scope)
            found, ratings = _ratings_from_cache(self.cache, keys, scores)
        else:
            found = np.zeros(len(uniques), dtype=bool)
            ratings = Ratings(np.full(len(uniques), np.nan),
                              np.full(len(uniques), -1, dtype=np.int64),
                              np.zeros((len(uniques), len(scores))))
        todo = np.flatnonzero(~found)
        if len(todo):
            probs = self._score_probs([uniques[i] for i in todo])
            values = np.asarray(scores, dtype=np.float64)
            ratings.probs[todo] = probs
            ratings.expected[todo] = probs @ values
            ratings.argmax[todo] = values[probs.argmax(axis=1)].astype(np.int64)
            if self.cache is not None:
                self.cache.put_keys(keys[todo], ratings.expected[todo],
                                    argmax=ratings.argmax[todo], probs=probs)
        return Ratings(ratings.expected[codes], ratings.argmax[codes], ratings.probs[codes],
                       from_cache=found[codes])

    def _score_probs(self, texts: list[str]) -> np.ndarray:
        """(N, S) probabilities of the score tokens at the answer position of each prompt."""
        import torch

        text_ids = self._text_ids(texts)
        lengths = np.fromiter((len(ids) for ids in text_ids), dtype=np.int64, count=len(texts))
        flat = np.fromiter((t for ids in text_ids for t in ids), dtype=np.int64,
                           count=int(lengths.sum()))
        starts = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        use_prefix = self.reuse_prefix and len(self.prefix_ids) > 0
        head = np.empty(0, np.int64) if use_prefix else np.asarray(self.prefix_ids, np.int64)
        tail = np.asarray(self.suffix_ids, dtype=np.int64)
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        order = np.argsort(-lengths, kind="stable")  # similar lengths share a batch
        out = np.empty((len(texts), len(self.scores)))
        score_ids = torch.tensor(self.score_ids)
        with torch.inference_mode():
            prefix_cache = self._shared_prefix() if use_prefix else None
            offset = len(self.prefix_ids) if use_prefix else 0
            for begin in range(0, len(order), self.batch_size):
                rows = order[begin:begin + self.batch_size]
                ids, mask = _left_padded(flat, starts[rows], lengths[rows], head, tail, pad)
                # With left padding, real tokens must be numbered from the row's first real
                # token (not from column 0), as if the row had been run alone.
                positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0) + offset
                kwargs: dict[str, Any] = {
                    "input_ids": torch.from_numpy(ids),
                    "position_ids": torch.from_numpy(positions),
                    "attention_mask": torch.from_numpy(mask),
                }
                if prefix_cache is not None:
                    cache = copy.deepcopy(prefix_cache)
                    cache.batch_repeat_interleave(len(rows))
                    kwargs["cache"], kwargs["use_cache"] = cache, True
                    kwargs["attention_mask"] = torch.from_numpy(
                        np.concatenate([np.ones((len(rows), offset), np.int64), mask], axis=1))
                else:
                    kwargs["use_cache"] = False
                if self._logits_to_keep:
                    kwargs["logits_to_keep"] = 1
                logits = self.model(**kwargs).logits[:, -1, :].float()
                probs = torch.softmax(logits[:, score_ids].double(), dim=-1)
                if not bool(torch.isfinite(probs).all()):
                    raise RaterError(f"model {self.model_id or type(self.model).__name__} "
                                     "produced NaN or infinite logits")
                out[rows] = probs.numpy()
        return out

    def _shared_prefix(self) -> Any:
        """Keys and values of the instruction prefix, computed once per rater."""
        import torch

        if self._prefix_cache is None:
            ids = torch.tensor([self.prefix_ids])
            result = self.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                                use_cache=True, **({"logits_to_keep": 1}
                                                   if self._logits_to_keep else {}))
            cache = getattr(result, "cache", None) or getattr(result, "past_key_values", None)
            if cache is None or not hasattr(cache, "batch_repeat_interleave"):
                raise RaterError("this model returns no reusable cache; pass reuse_prefix=False")
            self._prefix_cache = cache
        return self._prefix_cache


def _left_padded(
    flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray, head: np.ndarray,
    tail: np.ndarray, pad: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) of rows `head + text + tail`, left-padded to the longest row."""
    total = lengths + len(head) + len(tail)
    width = int(total.max())
    k = np.arange(width)[None, :] - (width - total)[:, None]  # index into the row's tokens
    text_k = k - len(head)
    in_head = (k >= 0) & (k < len(head))
    in_text = (text_k >= 0) & (text_k < lengths[:, None])
    in_tail = text_k >= lengths[:, None]
    ids = np.full(k.shape, pad, dtype=np.int64)
    if len(head):
        ids[in_head] = head[k[in_head]]
    ids[in_text] = flat[(starts[:, None] + text_k)[in_text]]
    if len(tail):
        ids[in_tail] = tail[(text_k - lengths[:, None])[in_tail]]
    return ids, (k >= 0).astype(np.int64)


# --------------------------------------------------------------------------- HTTP endpoint


class _AnswerError(ValueError):
    """The endpoint answered, but not with a usable score."""


class _FatalError(Exception):
    """A failure that retrying cannot fix (bad key, bad request): stop the run."""


class _Skipped(Exception):
    """The text was not sent because the run had been stopped."""


_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_OBJECT = re.compile(r"\{[^{}]*\}")
_BARE_INT = re.compile(r"^\s*([+-]?\d+)\s*\.?\s*$")


def parse_score(answer: str, scores: Sequence[int] = DEFAULT_SCORES) -> int:
    """The score in a model's answer: JSON `{"score": N}` (also inside prose or a code fence)
    or a bare integer. Raises ValueError when there is none or it is not one of `scores`."""
    text = _FENCE.sub("", answer.strip())
    value: Any = None
    bare = _BARE_INT.match(text)
    if bare:
        value = int(bare.group(1))
    else:
        match = _OBJECT.search(text)
        if match:
            try:
                obj = json.loads(match.group())
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                value = next((v for k, v in obj.items() if str(k).lower() == "score"), None)
    if isinstance(value, str) and _BARE_INT.match(value):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _AnswerError(f"unparseable answer {answer[:80]!r}")
    if value not in scores:
        raise _AnswerError(f"score {value} is not one of {tuple(scores)}")
    return value


class OpenAIRater:
    """Rate texts with any OpenAI-compatible chat endpoint (POST {base_url}/chat/completions).

    The model is asked for `{"score": N}` (a bare integer is accepted too). Requests run on a
    thread pool of `concurrency`; connection errors, HTTP 5xx and 429, and unusable answers are
    retried `retries` times with exponential backoff (`backoff`, 2×`backoff`, ...; a 429's
    Retry-After is honoured). Other HTTP 4xx errors, and an endpoint that stays unreachable,
    stop the run. Any text still unrated raises `RaterError`; answers obtained before that are
    kept in the cache. The API key is read from `api_key_env` (optional: local servers often
    need none). `probs` are one-hot.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        template: str = DEFAULT_JSON_TEMPLATE,
        scores: Sequence[int] = DEFAULT_SCORES,
        concurrency: int = 4,
        retries: int = 3,
        backoff: float = 0.5,
        timeout: float = 30.0,
        cache: RatingCache | None = None,
        max_tokens: int | None = 16,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise InputError(f"base_url must start with http:// or https://, got {base_url!r}",
                             field="base_url")
        if not model:
            raise InputError("the endpoint's model name is empty", field="model")
        _check_template(template)
        if concurrency < 1:
            raise InputError(f"concurrency must be >= 1, got {concurrency}", field="concurrency")
        if retries < 0:
            raise InputError(f"retries must be >= 0, got {retries}", field="retries")
        _positive(backoff, "backoff", allow_zero=True)
        _positive(timeout, "timeout")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.template, self.scores = model, template, _check_scores(scores)
        self.concurrency, self.retries, self.backoff = concurrency, retries, backoff
        self.timeout, self.cache, self.max_tokens = timeout, cache, max_tokens
        self._api_key = os.environ.get(api_key_env) or None

    @property
    def scope(self) -> str:
        """Everything besides the text that changes a rating: the cache scope."""
        return json.dumps({"rater": "openai", "url": self.url, "model": self.model,
                           "template": self.template, "scores": self.scores}, sort_keys=True)

    def rate(self, texts: Sequence[str]) -> Ratings:
        """Ratings of `texts`; cached ones are not requested again, duplicates once."""
        texts = _check_texts(texts)
        codes, uniques = _unique(texts)
        keys = self.cache.keys(uniques, scope=self.scope) if self.cache is not None else None
        if keys is not None:
            found, _, argmax, _ = self.cache.lookup(keys)
        else:
            found, argmax = np.zeros(len(uniques), bool), np.full(len(uniques), -1, np.int64)
        todo = np.flatnonzero(~found)
        failures, reason = self._request_all([uniques[i] for i in todo], todo, argmax, keys)
        if failures:
            kept = (f"; the {len(todo) - failures} answers obtained are cached"
                    if self.cache is not None else "")
            raise RaterError(f"{failures} of {len(todo)} texts could not be rated by {self.url} "
                             f"(model {self.model}) after {self.retries} retries; last reason: "
                             f"{reason}{kept}", failed=failures, reason=reason)
        argmax = argmax[codes]
        return Ratings(argmax.astype(np.float64), argmax, _one_hot(argmax, self.scores),
                       from_cache=found[codes])

    def _request_all(
        self, texts: list[str], rows: np.ndarray, argmax: np.ndarray, keys: np.ndarray | None
    ) -> tuple[int, str]:
        """Rate `texts` into `argmax[rows]`; (number of failures, last failure reason)."""
        if not texts:
            return 0, ""
        stop = threading.Event()
        pending: list[int] = []
        failures, skipped, streak, reason = 0, 0, 0, ""

        def flush() -> None:
            if keys is not None and pending:
                done = rows[pending]
                self.cache.put_keys(keys[done], argmax[done].astype(np.float64),
                                    argmax=argmax[done])
            pending.clear()

        pool = futures.ThreadPoolExecutor(max_workers=self.concurrency,
                                          thread_name_prefix="crediflow-rater")
        try:
            jobs = {pool.submit(self._rate_one, text, stop): i for i, text in enumerate(texts)}
            for job in futures.as_completed(jobs):
                i = jobs[job]
                try:
                    argmax[rows[i]] = job.result()
                    pending.append(i)
                    streak = 0
                except _Skipped:
                    failures, skipped = failures + 1, skipped + 1
                except (_AnswerError, _TransportError, _FatalError) as exc:
                    failures, reason = failures + 1, str(exc)
                    streak = streak + 1 if isinstance(exc, _TransportError) else 0
                    # HTTP errors on several texts in a row: the endpoint is unusable (the
                    # workers themselves stop on refused requests and lost connections).
                    if streak >= max(3, self.concurrency):
                        stop.set()
                if len(pending) >= _FLUSH_EVERY:
                    flush()
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            flush()
        if skipped:
            reason = f"{reason} ({skipped} not attempted after that)"
        return failures, reason

    def _rate_one(self, text: str, stop: threading.Event) -> int:
        """The score of one text, retried; raises _AnswerError, _TransportError or _FatalError."""
        body = json.dumps({
            "model": self.model,
            "messages": [{"role": "user", "content": self.template.format(text=text)}],
            "temperature": 0,
            **({"max_tokens": self.max_tokens} if self.max_tokens else {}),
        }).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        error: Exception | None = None
        for attempt in range(self.retries + 1):
            if stop.is_set():
                raise _Skipped()
            wait = 0.0
            try:
                return parse_score(self._post(body, headers), self.scores)
            except _FatalError:
                stop.set()  # set here, not by the caller, so that no other text is sent
                raise
            except _RetryAfter as exc:
                error, wait = exc, exc.seconds
            except (_AnswerError, _TransportError) as exc:
                error = exc
            if attempt < self.retries:
                delay = self.backoff * 2**attempt * (1 + 0.25 * random.random())
                stop.wait(max(delay, wait))
        if type(error) is _TransportError:
            stop.set()  # no connection after every retry: the endpoint is down
        assert error is not None
        raise error

    def _post(self, body: bytes, headers: dict[str, str]) -> str:
        """The assistant message of one chat completion request."""
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = _body_excerpt(exc)
            if exc.code == 429 or exc.code >= 500:
                raise _RetryAfter(f"HTTP {exc.code} {detail}",
                                  _retry_after(exc.headers.get("Retry-After"))) from exc
            raise _FatalError(f"HTTP {exc.code} {detail}") from exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            why = getattr(exc, "reason", None) or exc
            raise _TransportError(f"cannot reach the endpoint: {why}") from exc
        try:
            message = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise _AnswerError(f"malformed response {raw[:120]!r}") from exc
        if not isinstance(message, str):
            raise _AnswerError(f"no text in the response {raw[:120]!r}")
        return message


class _TransportError(Exception):
    """The request did not get an answer (connection failure, timeout, 5xx, 429)."""


class _RetryAfter(_TransportError):
    """HTTP 5xx or 429, with the server's requested wait in seconds (0 if none)."""

    def __init__(self, message: str, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds


def _retry_after(value: str | None) -> float:
    """Seconds to wait from a Retry-After header (delta seconds or HTTP date), capped."""
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return 0.0
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER)


def _body_excerpt(exc: urllib.error.HTTPError) -> str:
    """The start of an HTTP error's body, for the message."""
    try:
        return exc.read()[:200].decode("utf-8", "replace").strip()
    except OSError:
        return ""
