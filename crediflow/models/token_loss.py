"""Per-token cross-entropy of a causal LM on tokenized SFT records, in one batched pass.

Token cleaning scores a response token by how much a reference model's loss on it differs from
the base model's; both losses come from `token_losses`. Records are sorted by length and run
in batches of similar length (right-padded, with an attention mask), so padding stays small.
Only the positions that predict a label are projected onto the vocabulary where the model
allows it (`logits_to_keep`), and their log-probabilities are taken in float32 chunks.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from crediflow.errors import ConfigError, InputError
from crediflow.models.precision import autocast
from crediflow.models.sft import IGNORE, TokenizedSFT

# Logit rows per cross-entropy call: bounds the float32 copy to about this many x vocab values.
_CHUNK_ELEMENTS = 1 << 25


def _check_options(batch_size: int, precision: str) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) \
            or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, not {batch_size!r}",
                          section="token_clean", key="batch_size")
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"{precision!r} is not allowed; choose fp32 or bf16 (resolve auto "
                          "with resolve_precision first)", section="token_clean",
                          key="precision")


def computed_lengths(sft: TokenizedSFT) -> np.ndarray:
    """(N,) tokens of each record that the forward pass needs: up to and including its last
    label that has a preceding token (causal attention makes later tokens irrelevant); 0 for a
    record with no such label."""
    starts = sft.offsets[:-1]
    positions = np.flatnonzero(sft.labels != IGNORE)
    record = np.searchsorted(sft.offsets, positions, side="right") - 1
    scorable = positions > starts[record]  # a record's first token has nothing to predict it
    positions, record = positions[scorable], record[scorable]
    out = np.zeros(len(sft), np.int64)
    if len(positions):
        # positions ascend, so each record's last label ends its run in `record`
        last = np.flatnonzero(np.r_[record[1:] != record[:-1], True])
        out[record[last]] = positions[last] - starts[record[last]] + 1
    return out


def batch_plan(sft: TokenizedSFT, batch_size: int) -> list[np.ndarray]:
    """The records of each forward batch: records with something to score, longest first,
    `batch_size` at a time (similar lengths share a batch)."""
    lengths = computed_lengths(sft)
    order = np.argsort(-lengths, kind="stable")
    order = order[: int(np.count_nonzero(lengths))]
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def padding_share(sft: TokenizedSFT, batch_size: int) -> float:
    """The share of the positions `token_losses` runs through the model that are real tokens
    (1.0 = no padding; 1.0 when there is nothing to compute)."""
    _check_options(batch_size, "fp32")
    lengths = computed_lengths(sft)
    batches = batch_plan(sft, batch_size)
    computed = sum(len(b) * int(lengths[b].max()) for b in batches)
    return float(lengths.sum() / computed) if computed else 1.0


def _padded(sft: TokenizedSFT, records: np.ndarray, lengths: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, mask, labels), each (B, W): the records right-padded to the longest."""
    columns = np.arange(int(lengths.max()))
    real = columns[None, :] < lengths[:, None]
    starts = sft.offsets[records][:, None]
    flat = np.where(real, starts + columns[None, :], starts)  # padding reads a real token
    ids = np.where(real, sft.input_ids[flat], 0)
    labels = np.where(real, sft.labels[flat], IGNORE)
    return ids, real.astype(np.int64), labels


def _batch_losses(model: Any, sft: TokenizedSFT, records: np.ndarray, lengths: np.ndarray,
                  state: dict) -> tuple[np.ndarray, np.ndarray]:
    """(flat token positions, float32 losses) of one batch's labelled tokens."""
    import torch
    import torch.nn.functional as F

    ids, mask, labels = _padded(sft, records, lengths)
    target = labels != IGNORE
    target[:, 0] = False
    rows, cols = np.nonzero(target)
    predictors = np.zeros_like(target)
    predictors[rows, cols - 1] = True  # the logits at t - 1 predict the token at t
    device = state["device"]
    inputs = {"input_ids": torch.from_numpy(ids).to(device),
              "attention_mask": torch.from_numpy(mask).to(device), "use_cache": False}
    logits = None
    if state["keep"]:
        # a boolean (B, W) mask returns only the kept rows, flattened in row-major order,
        # which is the order of np.nonzero above
        keep = torch.from_numpy(predictors).to(device)
        logits = model(**inputs, logits_to_keep=keep).logits
        if logits.ndim != 2 or logits.shape[0] != len(rows):
            state["keep"], logits = False, None  # a model that cannot take a mask
    if logits is None:
        full = model(**inputs).logits
        logits = full[torch.from_numpy(rows).to(device), torch.from_numpy(cols - 1).to(device)]
    vocab = logits.shape[-1]
    targets = labels[rows, cols]
    if targets.size and (targets.min() < 0 or targets.max() >= vocab):
        raise InputError(f"a label is outside the model's vocabulary of {vocab} tokens",
                         field="labels")
    targets_t = torch.from_numpy(targets).to(device)
    step = max(1, _CHUNK_ELEMENTS // vocab)
    losses = torch.cat([
        F.cross_entropy(logits[i:i + step].float(), targets_t[i:i + step], reduction="none")
        for i in range(0, len(rows), step)]) if len(rows) else torch.empty(0)
    return sft.offsets[records][rows] + cols, losses.float().cpu().numpy()


def token_losses(model: Any, sft: TokenizedSFT, *, batch_size: int = 8,
                 precision: str = "fp32") -> np.ndarray:
    """(T,) float32 per-token cross-entropy, aligned with `sft.input_ids`.

    Token t with a label gets -log p(labels[t] | the record's tokens before t); every other
    token, and a record's first token (nothing precedes it), gets NaN. `model` is a Hugging
    Face causal LM on any device (the device of its parameters); `precision` is "fp32" or
    "bf16" (torch autocast; logits are cast to float32 before the log-softmax). The result
    does not depend on `batch_size` beyond floating-point rounding.
    """
    import torch

    _check_options(batch_size, precision)
    out = np.full(len(sft.input_ids), np.nan, np.float32)
    lengths = computed_lengths(sft)
    device = next(model.parameters()).device
    state = {"device": device,
             "keep": "logits_to_keep" in inspect.signature(model.forward).parameters}
    with torch.inference_mode(), autocast(precision, device.type):
        for records in batch_plan(sft, batch_size):
            positions, losses = _batch_losses(model, sft, records, lengths[records], state)
            out[positions] = losses
    return out


def mean_label_loss(model: Any, sft: TokenizedSFT, *, batch_size: int = 8,
                    precision: str = "fp32") -> float:
    """The mean cross-entropy over all labelled tokens that have a preceding token (the
    held-out loss); InputError when there is none."""
    losses = token_losses(model, sft, batch_size=batch_size, precision=precision)
    values = losses[~np.isnan(losses)]
    if not len(values):
        raise InputError("no labelled token to compute a loss on", field="labels")
    return float(values.mean(dtype=np.float64))
