"""Stage `select`: DS2 rating, score curation and budgeted selection of the fixed records.

Run as `python -m tasks.select` (the cmd of its DVC stage).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crediflow.data.texts import conversation_texts
from crediflow.errors import InputError
from crediflow.select.curation import curate_and_select
from tasks.config import stage_params
from tasks.embed import aligned_vectors
from tasks.io import atomic_dir, write_json, write_parquet
from tasks.plots import rating_histograms, transition_heatmap
from tasks.stage import project_path, stage_main

log = logging.getLogger("crediflow.select")


def rate(records: pa.Table, params: dict) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(expected score, most likely score, rating metrics) per record from the configured
    LLM rater, or (the `rating` column, None, {}) for the column rater."""
    kind = params["rater"]
    if kind == "column":
        ratings = records.column("rating")
        if ratings.null_count:
            raise InputError(f"{ratings.null_count} record(s) have no rating and select.rater "
                             "is 'column'; choose the hf or openai rater", field="rating")
        return ratings.to_numpy().astype(float), None, {}
    from crediflow.data.cache import RatingCache
    from crediflow.select.raters.hf import HFRater
    from crediflow.select.raters.openai_api import OpenAIRater

    texts = conversation_texts(records.column("messages"))
    if kind == "hf":
        from crediflow.models.causal_lm import DEFAULT_LLM, load_causal_lm

        model, tokenizer = load_causal_lm(params.get("model"))
        rater = HFRater(model, tokenizer, max_prompt_tokens=int(params["max_prompt_tokens"]),
                        batch_size=int(params["batch_size"]),
                        cache=RatingCache(project_path(params["cache"]), "hf"),
                        model_id=str(params.get("model") or DEFAULT_LLM),
                        **_given(params, template="template", answer_prefix="answer_prefix"))
    elif kind == "openai":
        rater = OpenAIRater(params["base_url"], params["openai_model"],
                            api_key_env=params["api_key_env"],
                            cache=RatingCache(project_path(params["cache"]), "openai"),
                            **_given(params, template="openai_template"))
    else:
        raise InputError(f"unknown rater {kind!r}; use column, hf or openai", field="rater")
    start = time.perf_counter()
    rated = rater.rate(texts)
    seconds = time.perf_counter() - start
    new = len(rated) - int(rated.from_cache.sum())
    return rated.expected, rated.argmax, {
        "rated": new, "ratings_from_cache": len(rated) - new, "rating_seconds": round(seconds, 2),
        "ratings_per_second": round(new / seconds, 2) if new else None,
    }


def _given(params: dict, **names: str) -> dict:
    """Keyword arguments from the params that are set (null keeps the rater's default)."""
    return {arg: params[key] for arg, key in names.items() if params.get(key) is not None}


def _class_move(move: str, classes: list[str]) -> str:
    """"i->j" between class indices as "label i->label j"."""
    raw, curated = move.split("->")
    return f"{classes[int(raw)]}->{classes[int(curated)]}"


def run() -> dict:
    """Rate, curate and select the fixed records; publish them with the reports."""
    params = stage_params("select")
    records = pq.read_table(project_path(stage_params("fix")["out"]) / "records.parquet")
    vectors = aligned_vectors(
        records, project_path(stage_params("embed")["out"]) / "embeddings.parquet")
    if params["score"] not in ("argmax", "expected"):
        raise InputError(f"select.score must be argmax or expected, got {params['score']!r}",
                         field="score")
    expected, argmax, rating_metrics = rate(records, params)
    ratings = expected if argmax is None or params["score"] == "expected" else argmax.astype(float)
    result = curate_and_select(
        ratings, vectors, float(params["budget"]), bins=params["bins"], k=int(params["k"]),
        rounds=int(params["rounds"]), epochs=int(params["epochs"]),
        threshold=float(params["threshold"]), seed=int(params["seed"]),
    )
    edges = params["bins"]
    classes = [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    added = ("rating", "rating_expected", "rating_argmax", "curated_rating", "long_tail_score",
             "selected")
    selected = records.drop_columns([c for c in added if c in records.column_names])
    nulls = pa.nulls(len(ratings))  # the column rater has no score distribution
    selected = (selected.append_column("rating", pa.array(ratings))
                .append_column("rating_expected", nulls.cast(pa.float64()) if argmax is None
                               else pa.array(expected, pa.float64()))
                .append_column("rating_argmax", nulls.cast(pa.int64()) if argmax is None
                               else pa.array(argmax, pa.int64()))
                .append_column("curated_rating", pa.array(result.curated_rating))
                .append_column("long_tail_score", pa.array(result.long_tail))
                .append_column("selected", pa.array(result.selected)))
    moved = int((result.curated_class != result.raw_class).sum())
    metrics = {
        "rater": params["rater"],
        "rows": records.num_rows,
        **rating_metrics,
        "selected": int(result.selected.sum()),
        "ratings_moved": moved,
        "moves": {_class_move(move, classes): n for move, n in result.moves.items()},
        "credibility": round(float(result.credibility), 6),
        "T": np.round(result.T, 6).tolist(),
        "mean_rating": round(float(np.mean(ratings)), 4),
        "mean_curated_rating_selected": round(float(np.mean(
            result.curated_rating[result.selected])), 4),
        "classes": classes,
    }
    reports = project_path(params["reports"])
    with atomic_dir(project_path(params["out"])) as out:
        write_parquet(out / "records.parquet", selected)
        rating_histograms(result.raw_class, result.curated_class, classes,
                          reports / "rating_histogram.png")
        transition_heatmap(result.T, classes, reports / "transition_matrix.png",
                           title="Estimated rating transition matrix")
        write_json(reports / "metrics.json", metrics)
    log.info("select: %d of %d rows selected, %d ratings moved by curation (credibility %.3f)",
             metrics["selected"], records.num_rows, moved, result.credibility)
    return metrics


if __name__ == "__main__":
    stage_main(run)
