"""Stage `select`: DS2 rating, score curation and budgeted selection of the fixed records.

Run as `python -m tasks.select` (the cmd of its DVC stage).
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from crediflow.data.schema import (
    CURATED_RATING,
    LONG_TAIL_SCORE,
    MESSAGES_COLUMN,
    RATING,
    RATING_ARGMAX,
    RATING_EXPECTED,
    SELECTED,
)
from crediflow.data.texts import conversation_texts
from crediflow.select import curate_and_select
from crediflow.select.config import SelectConfig
from crediflow.select.rating import rate
from crediflow.select.selection import budget_count
from tasks.catalog import Catalog
from tasks.config import stage_config
from tasks.plots import (
    rating_counts_csv,
    rating_histograms,
    transition_csv,
    transition_heatmap,
)
from tasks.stage import stage_main

log = logging.getLogger("crediflow.select")


def _class_move(move: str, classes: list[str]) -> str:
    """"i->j" between class indices as "label i->label j"."""
    raw, curated = move.split("->")
    return f"{classes[int(raw)]}->{classes[int(curated)]}"


def stage_texts(records: pa.Table) -> list[str]:
    """The text of each record that the rater rates (also what the shard runner,
    tasks/shards.py, rates ahead of the stage)."""
    return conversation_texts(records.column(MESSAGES_COLUMN))


def run() -> dict:
    """Rate, curate and select the fixed records; publish them with the reports."""
    config = stage_config(SelectConfig)
    catalog = Catalog()
    records = catalog.read("fixed")
    vectors = catalog.vectors_for(records)
    budget_count(config.budget, records.num_rows)  # a budget too large fails before rating
    rated = rate(stage_texts(records), config,
                 column=records.column(RATING).to_numpy(zero_copy_only=False),
                 cache_folder=catalog.cache("ratings"))
    result = curate_and_select(rated.rating, vectors, config.budget, bins=config.bins,
                               k=config.k, rounds=config.rounds, epochs=config.epochs,
                               threshold=config.threshold, seed=config.seed)
    edges = config.bins
    classes = [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    nulls = pa.nulls(records.num_rows)  # the column rater has no score distribution
    added = {
        RATING: pa.array(rated.rating),
        RATING_EXPECTED: (nulls.cast(pa.float64()) if rated.expected is None
                          else pa.array(rated.expected, pa.float64())),
        RATING_ARGMAX: (nulls.cast(pa.int64()) if rated.argmax is None
                        else pa.array(rated.argmax, pa.int64())),
        CURATED_RATING: pa.array(result.curated_rating),
        LONG_TAIL_SCORE: pa.array(result.long_tail),
        SELECTED: pa.array(result.selected),
    }
    selected = records.drop_columns([c for c in added if c in records.column_names])
    for name, values in added.items():
        selected = selected.append_column(name, values)
    moved = int((result.curated_class != result.raw_class).sum())
    metrics = {
        "rater": config.rater,
        "rows": records.num_rows,
        **rated.metrics,
        "selected": int(result.selected.sum()),
        "ratings_moved": moved,
        "moves": {_class_move(move, classes): n for move, n in result.moves.items()},
        "credibility": round(float(result.credibility), 6),
        "T": np.round(result.T, 6).tolist(),
        "mean_rating": round(float(np.mean(rated.rating)), 4),
        "mean_curated_rating_selected": round(float(np.mean(
            result.curated_rating[result.selected])), 4),
        "classes": classes,
        "warnings": result.warnings,
    }
    for warning in result.warnings:
        log.warning("select: %s", warning)
    if "resolved" in rated.metrics:
        log.info("select: rated in %s on %s", rated.metrics["resolved"]["precision"],
                 rated.metrics["resolved"]["device_name"])
    with catalog.publish("select") as out:
        out.table("selected", selected)
        rating_histograms(result.raw_class, result.curated_class, classes,
                          out.reports / "rating_histogram.png")
        transition_heatmap(result.T, classes, out.reports / "transition_matrix.png",
                           title="Estimated rating transition matrix")
        rating_counts_csv(result.raw_class, result.curated_class, classes,
                          out.reports / "rating_histogram.csv")
        transition_csv(result.T, classes, out.reports / "transition_matrix.csv")
        out.json("metrics.json", metrics)
    log.info("select: %d of %d rows selected, %d ratings moved by curation (credibility %.3f)",
             metrics["selected"], records.num_rows, moved, result.credibility)
    return metrics


if __name__ == "__main__":
    stage_main(run)
