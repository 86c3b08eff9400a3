"""Stage `token_clean`: the selected records tokenized with the base model's chat template, a
held-out split kept apart, and the response tokens of the rest scored and cleaned (Token
Cleaning, fixed or self-evolving mode).

Run as `python -m tasks.token_clean` (the cmd of its DVC stage).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crediflow.data.schema import (
    CURATED_RATING,
    ID,
    KEPT_FRACTION,
    MESSAGES_COLUMN,
    NO_KEPT_TOKEN,
    SELECTED,
)
from crediflow.errors import InputError
from crediflow.finetune.config import FinetuneConfig
from crediflow.models.causal_lm import load_causal_lm
from crediflow.models.precision import describe, detect_device, resolve_precision
from crediflow.models.sft import TokenizedSFT, sft_columns, tokenize_sft
from crediflow.token_clean import tokens_html
from crediflow.token_clean.clean import Cleaned, clean_fixed, clean_self_evolving, warmup_records
from crediflow.token_clean.config import TokenCleanConfig
from tasks.catalog import Catalog
from tasks.config import stage_config
from tasks.stage import stage_main
from tasks.tracking import live_logger

log = logging.getLogger("crediflow.token_clean")


def split_heldout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(pool, held-out) record indices, each sorted: a seeded share `fraction` held out."""
    order = np.random.default_rng(seed).permutation(n)
    size = max(1, int(round(fraction * n)))
    if size >= n:
        raise InputError(f"{n} record(s) leave nothing to train on after holding out "
                         f"{size}; lower token_clean.heldout_fraction or add data",
                         field="heldout_fraction")
    return np.sort(order[size:]), np.sort(order[:size])


def run() -> dict:
    """Tokenize, split, score and clean; publish the cleaned and the held-out records."""
    config = stage_config(TokenCleanConfig)
    train_config = stage_config(FinetuneConfig)
    device = detect_device("cpu")
    config = dataclasses.replace(
        config, precision=resolve_precision(config.precision, device, stage="token_clean"))
    settings = train_config.to_settings(
        resolve_precision(train_config.precision, device, stage="finetune"))
    catalog = Catalog()
    records = catalog.read("selected")
    if config.selected_only:
        records = records.filter(pc.fill_null(records.column(SELECTED), False))
    if records.num_rows == 0:
        raise InputError("no selected record to train on", field=SELECTED)
    if config.max_records is not None and records.num_rows > config.max_records:
        sample = np.random.default_rng(config.seed).choice(records.num_rows, config.max_records,
                                                           replace=False)
        records = records.take(pa.array(np.sort(sample)))
    start = time.perf_counter()
    base, tokenizer = load_causal_lm(train_config.model)
    sft = tokenize_sft(records.column(MESSAGES_COLUMN), tokenizer,
                       max_length=train_config.max_length)
    if len(sft) < 2:
        raise InputError(f"{len(sft)} record(s) left after tokenization (max_length "
                         f"{train_config.max_length}); nothing to clean", field="max_length")
    pool_at, heldout_at = split_heldout(len(sft), config.heldout_fraction, config.seed)
    pool, heldout = sft.subset(pool_at), sft.subset(heldout_at)
    with tempfile.TemporaryDirectory(prefix="token-clean-") as work:
        if config.mode == "fixed":
            ratings = records.column(CURATED_RATING).to_numpy(zero_copy_only=False)[pool.rows]
            cleaned = clean_fixed(base, tokenizer, pool,
                                  warmup_records(ratings, config.warmup_size), config=config,
                                  settings=settings, workdir=Path(work),
                                  on_log=live_logger("reference."))
        else:
            cleaned = clean_self_evolving(base, tokenizer, pool, config=config,
                                          settings=settings, workdir=Path(work),
                                          on_log=live_logger("reference."))
    metrics = _metrics(sft, pool, heldout, cleaned, config, seconds=time.perf_counter() - start)
    metrics["resolved"] = describe(device, config.precision)
    ids = records.column(ID).take(pa.array(pool.rows))
    table = pa.table({ID: ids, **sft_columns(pool.with_labels(cleaned.labels),
                                             labels_all=pool.labels, scores=cleaned.scores),
                      KEPT_FRACTION: pa.array(cleaned.kept_fraction),
                      NO_KEPT_TOKEN: pa.array(cleaned.dropped)})
    held = pa.table({ID: records.column(ID).take(pa.array(heldout.rows)), **sft_columns(heldout)})
    with catalog.publish("token_clean") as out:
        out.table("token_cleaned", table)
        out.table("heldout", held)
        out.file("tokens.html", tokens_html(tokenizer, pool, cleaned.keep, cleaned.scores,
                                            records=config.html_records,
                                            seed=config.seed).encode())
        out.json("metrics.json", metrics)
    log.info("token_clean (%s, rho %.2f, %s): %d of %d response tokens kept, %d record(s) "
             "left with none", config.mode, config.rho, config.granularity,
             metrics["kept_tokens"], metrics["response_tokens"], metrics["no_kept_token"])
    return metrics


def _metrics(sft: TokenizedSFT, pool: TokenizedSFT, heldout: TokenizedSFT, cleaned: Cleaned,
             config: TokenCleanConfig, *, seconds: float) -> dict:
    """What the stage reports: counts, kept share, the score histogram, the reference runs."""
    scored = cleaned.scores[~np.isnan(cleaned.scores)]
    counts, edges = (np.histogram(scored, bins=20) if len(scored) else
                     (np.zeros(0, int), np.zeros(0)))
    response = int(pool.trained().sum())
    kept = int(cleaned.keep.sum())
    return {
        "mode": config.mode, "rho": config.rho, "granularity": config.granularity,
        "records": int(sft.stats.get("records", len(sft))), "tokenized": len(sft),
        "truncated": int(sft.stats.get("truncated", 0)),
        "dropped_no_assistant": int(sft.stats.get("dropped", 0)),
        "pool": len(pool), "heldout": len(heldout),
        "response_tokens": response, "kept_tokens": kept,
        "kept_fraction": round(kept / response, 6) if response else 0.0,
        "no_kept_token": int(cleaned.dropped.sum()),
        "score_mean": round(float(scored.mean()), 6) if len(scored) else None,
        "score_histogram": {"counts": counts.tolist(), "edges": np.round(edges, 4).tolist()},
        "seconds": round(seconds, 1),
        **cleaned.metrics,
    }


if __name__ == "__main__":
    stage_main(run)
