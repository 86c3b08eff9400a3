"""Ratings for DS2 from the configured rater: a column of the data, a local causal LM, or an
OpenAI-compatible endpoint, with the rating cache and the numbers that describe the work."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crediflow.data.cache import RatingCache
from crediflow.errors import InputError
from crediflow.select.config import SelectConfig


@dataclass
class Rated:
    """One rating per record, and where it came from."""

    rating: np.ndarray  # (N,) float: the rating that curation uses (per `SelectConfig.score`)
    expected: np.ndarray | None  # (N,) float: expected score (LLM raters only)
    argmax: np.ndarray | None  # (N,) int: most likely score (LLM raters only)
    metrics: dict = field(default_factory=dict)  # rated, ratings_from_cache, seconds


def rate(texts: list[str], config: SelectConfig, *, column: np.ndarray | None = None,
         cache_folder: Path | None = None, field_name: str = "rating") -> Rated:
    """Rate `texts` with `config.rater`; `column` holds the ratings for the `column` rater
    (NaN or None where missing, which is an error naming `field_name`)."""
    if config.rater == "column":
        if column is None:
            raise InputError("the column rater needs a rating column", field=field_name)
        values = np.asarray(column, dtype=object)
        missing = np.flatnonzero(pd.isna(values))
        if len(missing):
            raise InputError(f"{len(missing)} record(s) have no rating (first: row "
                             f"{int(missing[0]) + 1}) and select.rater is 'column'; fill them "
                             "or choose the hf or openai rater", field=field_name)
        return Rated(values.astype(float), None, None)
    rater, resolved = _llm_rater(config, cache_folder)
    start = time.perf_counter()
    rated = rater.rate(texts)
    seconds = time.perf_counter() - start
    new = len(rated) - int(rated.from_cache.sum())
    rating = (rated.expected if config.score == "expected"
              else rated.argmax.astype(float))
    return Rated(rating, rated.expected, rated.argmax, {
        "rated": new, "ratings_from_cache": len(rated) - new, "rating_seconds": round(seconds, 2),
        "ratings_per_second": round(new / seconds, 2) if new else None,
        "resolved": resolved,
    })


def _llm_rater(config: SelectConfig, cache_folder: Path | None) -> tuple[Any, dict]:
    """The hf or openai rater of `config`, with its cache under `cache_folder`, and what it
    resolved at run time (the hf rater's precision and device)."""
    if config.rater == "hf":
        from crediflow.models.causal_lm import DEFAULT_LLM, load_causal_lm
        from crediflow.models.precision import describe, detect_device, resolve_precision
        from crediflow.select.raters.hf import HFRater

        device = detect_device("cpu")  # the causal LM loads on the CPU
        precision = resolve_precision(config.precision, device, stage="select")
        model, tokenizer = load_causal_lm(config.model)
        optional = {k: v for k, v in (("template", config.template),) if v is not None}
        return HFRater(model, tokenizer, max_prompt_tokens=config.max_prompt_tokens,
                       batch_size=config.batch_size, answer_prefix=config.answer_prefix,
                       cache=RatingCache(cache_folder, "hf") if cache_folder else None,
                       model_id=config.model or DEFAULT_LLM, precision=precision,
                       **optional), describe(device, precision)
    from crediflow.select.raters.openai_api import OpenAIRater

    optional = {"template": config.openai_template} if config.openai_template else {}
    return OpenAIRater(config.base_url, config.openai_model, api_key_env=config.api_key_env,
                       cache=RatingCache(cache_folder, "openai") if cache_folder else None,
                       **optional), {}
