"""`HFRater`: rates texts with a local Hugging Face causal LM in ONE forward pass per batch.

The prompt ends exactly where the score comes, and the next-token distribution restricted to
the score tokens ("1".."5") gives probabilities, an expected score and the most likely score.
The instructions before the text are the same for every row, so their keys and values are
computed once and reused by every batch; only the text and the closing tokens cost compute.
The default instructions are a rubric of DS2's criteria (rarity, complexity,
informativeness) weighed into one overall score; their length costs this rater little. The
forward passes run in the rater's precision (fp32, or bf16 under autocast)."""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from crediflow.core.validation import check_strings
from crediflow.data.cache import RatingCache
from crediflow.errors import InputError
from crediflow.models.precision import autocast
from crediflow.select.raters.base import (
    DEFAULT_SCORES,
    RaterError,
    Ratings,
    check_scores,
    ratings_from_cache,
    unique_texts,
)
from crediflow.select.raters.prompts import (
    _PLACEHOLDER,
    DEFAULT_ANSWER_PREFIX,
    DEFAULT_TEMPLATE,
    check_template,
)


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
        precision: str = "fp32",
    ) -> None:
        check_template(template)
        if precision not in ("fp32", "bf16"):
            raise InputError(f"precision must be fp32 or bf16 (resolve auto first), got "
                             f"{precision!r}", field="precision")
        self.scores = check_scores(scores)
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}", field="batch_size")
        self.model, self.tokenizer = model, tokenizer
        self.template, self.batch_size = template, batch_size
        self.max_prompt_tokens, self.cache = max_prompt_tokens, cache
        self.reuse_prefix, self.answer_prefix = reuse_prefix, answer_prefix
        self.precision = precision
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
            # fp32 scopes stay as they were before precisions existed
            **({"precision": self.precision} if self.precision != "fp32" else {}),
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
        texts = check_strings(texts)
        codes, uniques = unique_texts(texts)
        scores = self.scores
        if self.cache is not None:
            keys = self.cache.keys(uniques, scope=self.scope)
            found, ratings = ratings_from_cache(self.cache, keys, scores)
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
        device = next(self.model.parameters()).device.type
        with torch.inference_mode(), autocast(self.precision, device):
            prefix_cache = self._shared_prefix() if use_prefix else None
            offset = len(self.prefix_ids) if use_prefix else 0
            for begin in range(0, len(order), self.batch_size):
                rows = order[begin:begin + self.batch_size]
                ids, mask = _left_padded(flat, starts[rows], lengths[rows], head=head,
                                         tail=tail, pad=pad)
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
    flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray, *, head: np.ndarray,
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
