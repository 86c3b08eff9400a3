"""What the evaluate stage measures of a causal LM: held-out perplexity, generation speed with
a KV cache, parameter count and size on disk; and the check that the held-out records were
never trained on.

Generation speed is timed here (transformers' `generate` does the decoding): the models take
turns within each pass, so a load that comes and goes on a shared machine slows them alike,
and the median pass counts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crediflow.errors import InputError
from crediflow.models.sft import IGNORE, TokenizedSFT
from crediflow.models.training import count_params

WEIGHT_FILES = ("*.safetensors", "*.bin", "*.gguf")


@dataclass(frozen=True)
class Speed:
    """Greedy generation with a KV cache, one prompt at a time."""

    tokens_per_second: float  # median pass: new tokens / seconds
    new_tokens: int  # per pass
    seconds: list[float]  # every pass


def perplexity(loss: float) -> float:
    """exp(mean cross-entropy in nats); inf when that overflows."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def parameter_count(model: Any) -> int:
    """Parameters of a model, a tied matrix counted once."""
    return count_params(model)[1]


def size_on_disk(folder: Path | None) -> int | None:
    """Bytes of the weight files in a saved model's folder; None when there is no folder."""
    if folder is None or not Path(folder).is_dir():
        return None
    return sum(f.stat().st_size for pattern in WEIGHT_FILES
               for f in Path(folder).glob(pattern) if f.is_file())


def prompts_of(sft: TokenizedSFT, count: int) -> list[np.ndarray]:
    """The first `count` records' tokens before their first labelled token (the prompt the
    response follows); records whose first token is labelled are skipped."""
    out: list[np.ndarray] = []
    for record in range(len(sft)):
        start, end = sft.offsets[record], sft.offsets[record + 1]
        labelled = np.flatnonzero(sft.labels[start:end] != IGNORE)
        if labelled.size and labelled[0] > 0:
            out.append(sft.input_ids[start:start + labelled[0]])
        if len(out) == count:
            break
    if not out:
        raise InputError("no held-out record has a prompt before its response", field="labels")
    return out


def generation_speed(models: Mapping[str, Any], prompts: list[np.ndarray], *,
                     max_new_tokens: int, repeats: int, pad_id: int) -> dict[str, Speed]:
    """Tokens per second of greedy generation with a KV cache, per model: each of `repeats`
    passes generates exactly `max_new_tokens` after every prompt with every model in turn
    (after one untimed warm-up generation each)."""
    import torch

    if repeats < 1 or max_new_tokens < 1:
        raise InputError("repeats and max_new_tokens must be at least 1", field="repeats")
    kwargs = {"do_sample": False, "use_cache": True, "max_new_tokens": max_new_tokens,
              "min_new_tokens": max_new_tokens, "pad_token_id": pad_id}
    inputs = [torch.as_tensor(np.asarray(p, np.int64))[None] for p in prompts]
    seconds: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model.generate(inputs[0].to(model.device), **kwargs | {"max_new_tokens": 2,
                                                                   "min_new_tokens": 2})
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                for ids in inputs:
                    model.generate(ids.to(model.device), **kwargs)
                seconds[name].append(time.perf_counter() - start)
    new_tokens = max_new_tokens * len(inputs)
    return {name: Speed(new_tokens / float(np.median(times)), new_tokens, times)
            for name, times in seconds.items()}


def _record_keys(sft: TokenizedSFT) -> list[bytes]:
    """Each record's token sequence as bytes (equal sequences, equal keys)."""
    ids = np.ascontiguousarray(sft.input_ids, np.int64)
    return [ids[sft.offsets[i]:sft.offsets[i + 1]].tobytes() for i in range(len(sft))]


def check_disjoint(heldout_ids: list[str], heldout: TokenizedSFT, train_ids: list[str],
                   train: TokenizedSFT, *, file: str | None = None) -> None:
    """InputError when a held-out record was trained on: the same id, or the same token
    sequence under another id."""
    shared = sorted(set(heldout_ids) & set(train_ids))
    if shared:
        raise InputError(f"{len(shared)} held-out record(s) are also training records (e.g. id "
                         f"{shared[0]!r}); the evaluation split must be unseen", file=file,
                         field="id")
    seen = {key: rid for key, rid in zip(_record_keys(train), train_ids, strict=True)}
    for rid, key in zip(heldout_ids, _record_keys(heldout), strict=True):
        if key in seen:
            raise InputError(f"held-out record {rid!r} has the same tokens as training record "
                             f"{seen[key]!r}; the evaluation split must be unseen", file=file,
                             field="input_ids")
