"""Token Cleaning's two modes (Pang et al., "Token Cleaning: Fine-Grained Data Selection for
LLM Supervised Fine-Tuning"), re-implemented from the paper.

Per response token, influence = loss_base - loss_ref: how much a reference model that has
learned from good data lowered the token's loss against the untuned base. The top `rho` of
the tokens by influence keep their labels; the others become -100.

- `fixed`: the reference is the base fine-tuned on all response tokens of a warm-up subset
  (the records with the highest curated ratings); every record of the pool is then scored
  once by base and reference, and the ranking is global over the pool (or per record).
- `self_evolving`: the records are shuffled with the seed and cut into chunks; chunk 0
  trains the base on all its tokens (theta_1); chunk i >= 1 is scored by loss(base) -
  loss(theta_i), cleaned, and theta_i is fine-tuned on it (theta_i+1). The ranking is global
  within each chunk, since each chunk has its own reference; chunk 0 keeps every token (it is
  what theta_1 learned from) and has no score. The last theta is the mode's own model.

Two deviations from the authors' code, both fixes of known traps: training data is shuffled
(seeded), and the ranking works on flat arrays (no per-token Python tuples).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crediflow.errors import InputError
from crediflow.models.sft import IGNORE, TokenizedSFT
from crediflow.models.token_loss import token_losses
from crediflow.models.training import TrainSettings, train_sft
from crediflow.token_clean.config import TokenCleanConfig
from crediflow.token_clean.selection import apply_selection, select_tokens


@dataclass
class Cleaned:
    """The pool with cleaned labels, and how it was decided."""

    before: TokenizedSFT  # the pool: every response token labelled
    scores: np.ndarray  # (T,) influence of each label token of `before` (NaN: not scored)
    keep: np.ndarray  # (T,) bool: the label tokens that keep their label
    kept_fraction: np.ndarray  # (N,) share of each record's response tokens kept
    dropped: np.ndarray  # (N,) bool: records left with no kept token
    reference: Any  # the last reference model (fixed: the warm-up model; self_evolving: theta)
    metrics: dict = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        """(T,) the cleaned labels: the kept tokens' labels, -100 elsewhere."""
        return np.where(self.keep, self.before.labels, IGNORE)

    @property
    def cleaned(self) -> TokenizedSFT:
        """The records that keep at least one token, with the cleaned labels."""
        return self.before.with_labels(self.labels).subset(np.flatnonzero(~self.dropped))


Logger = Callable[[dict], None]


def warmup_records(ratings: np.ndarray, size: int) -> np.ndarray:
    """Indices of the `size` records with the highest ratings (ties: the earlier record)."""
    n = len(ratings)
    if size < 1 or size > n:
        raise InputError(f"the warm-up subset needs 1..{n} records (the data holds {n}), got "
                         f"{size}; lower token_clean.warmup_size", field="warmup_size")
    order = np.lexsort((np.arange(n), -np.nan_to_num(np.asarray(ratings, float), nan=-np.inf)))
    return np.sort(order[:size])


def clean_fixed(base: Any, tokenizer: Any, pool: TokenizedSFT, warmup: np.ndarray, *,
                config: TokenCleanConfig, settings: TrainSettings, workdir: Path,
                on_log: Logger | None = None) -> Cleaned:
    """Fixed-model mode: train the reference on the warm-up records, score the pool, select."""
    trained = train_sft(copy.deepcopy(base), tokenizer, pool.subset(warmup), settings,
                        output_dir=workdir / "reference", on_log=on_log)
    reference = trained.model
    scores = _influence(base, reference, pool, config)
    keep = select_tokens(scores, pool, rho=config.rho, granularity=config.granularity)
    _, kept_fraction, dropped = apply_selection(pool, keep)
    return Cleaned(pool, scores, keep, kept_fraction, dropped, reference,
                   {"reference_train": trained.metrics, "warmup_records": int(len(warmup))})


def clean_self_evolving(base: Any, tokenizer: Any, pool: TokenizedSFT, *,
                        config: TokenCleanConfig, settings: TrainSettings, workdir: Path,
                        on_log: Logger | None = None) -> Cleaned:
    """Self-evolving mode: chunk 0 trains theta_1 on all its tokens; each later chunk is
    scored against the current theta, cleaned, and trains the next theta."""
    n = len(pool)
    if n < config.chunks:
        raise InputError(f"{n} records cannot be cut into token_clean.chunks={config.chunks} "
                         "chunks", field="chunks")
    order = np.random.default_rng(config.seed).permutation(n)
    chunks = np.array_split(order, config.chunks)
    scores = np.full(len(pool.input_ids), np.nan, np.float32)
    keep = pool.trained().copy()  # chunk 0 keeps every token
    theta = copy.deepcopy(base)
    trainings = []
    first = pool.subset(np.sort(chunks[0]))
    theta = train_sft(theta, tokenizer, first, settings, output_dir=workdir / "theta_1",
                      on_log=on_log)
    trainings.append(theta.metrics)
    theta = theta.model
    for i, chunk in enumerate(chunks[1:], start=1):
        records = np.sort(chunk)
        part = pool.subset(records)
        part_scores = _influence(base, theta, part, config)
        part_keep = select_tokens(part_scores, part, rho=config.rho,
                                  granularity=config.granularity)
        positions, _ = pool.positions(records)
        scores[positions] = part_scores
        keep[positions] = part_keep
        cleaned, _, part_dropped = apply_selection(part, part_keep)
        step = train_sft(theta, tokenizer, cleaned.subset(np.flatnonzero(~part_dropped)),
                         settings, output_dir=workdir / f"theta_{i + 1}", on_log=on_log)
        trainings.append(step.metrics)
        theta = step.model
    _, kept_fraction, dropped = apply_selection(pool, keep)
    return Cleaned(pool, scores, keep, kept_fraction, dropped, theta,
                   {"chunk_trainings": trainings, "chunk_records": [len(c) for c in chunks]})


def _influence(base: Any, reference: Any, sft: TokenizedSFT,
               config: TokenCleanConfig) -> np.ndarray:
    """loss_base - loss_ref per label token (NaN elsewhere), one batched pass per model, in
    `config.precision` (already resolved: fp32 or bf16)."""
    kwargs = {"batch_size": config.batch_size, "precision": config.precision}
    return token_losses(base, sft, **kwargs) - token_losses(reference, sft, **kwargs)
