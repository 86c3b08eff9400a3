"""Stage `embed`: one sentence embedding per ingested record, reusing cached vectors.

Run as `python -m tasks.embed` (the cmd of its DVC stage).
"""

from __future__ import annotations

import logging
import time

import pyarrow as pa

from crediflow.data.cache import EmbeddingCache
from crediflow.data.schema import ID, MESSAGES_COLUMN
from crediflow.data.texts import conversation_texts
from crediflow.embed import embed_texts
from crediflow.embed.config import EmbedConfig
from crediflow.models.encoder import Encoder, load_encoder
from crediflow.models.precision import describe, detect_device, resolve_precision
from tasks.catalog import Catalog, vectors_table
from tasks.config import stage_config
from tasks.stage import stage_main

log = logging.getLogger("crediflow.embed")


def stage_texts(catalog: Catalog, config: EmbedConfig) -> tuple[pa.Table, list[str]]:
    """The ingested records (id, messages) and the text of each that the stage embeds
    (also what the shard runner, tasks/shards.py, embeds ahead of the stage)."""
    records = catalog.read("ingested", columns=[ID, MESSAGES_COLUMN])
    return records, conversation_texts(records.column(MESSAGES_COLUMN), roles=config.roles)


def stage_encoder(config: EmbedConfig, *, threads: int | None = None) -> Encoder:
    """The encoder of `config` (its model id is the embedding cache's key)."""
    return load_encoder(config.model, max_length=config.max_length, precision=config.precision,
                        threads=threads)


def run() -> dict:
    """Embed the ingested records and publish dataset `embeddings`; return the metrics."""
    config = stage_config(EmbedConfig)
    if config.precision != "int8":  # a precision the device lacks fails before any reading
        resolve_precision(config.precision, detect_device("cpu"), stage="embed")
    catalog = Catalog()
    records, texts = stage_texts(catalog, config)
    start = time.perf_counter()
    encoder = stage_encoder(config)
    cache = EmbeddingCache(catalog.cache("embeddings"), model_id=encoder.model_id)
    vectors, reused = embed_texts(texts, encoder, cache=cache, batch_size=config.batch_size)
    seconds = time.perf_counter() - start
    embedded = len(texts) - reused
    metrics = {
        "rows": len(texts),
        "reused_from_cache": reused,
        "embedded": embedded,
        "dim": int(vectors.shape[1]),
        "seconds": round(seconds, 2),
        "texts_per_second": round(embedded / seconds, 1) if embedded else None,
        "resolved": describe(encoder.device, encoder.precision),
    }
    with catalog.publish("embed") as out:
        out.table("embeddings", vectors_table(records.column(ID), vectors))
        out.json("metrics.json", metrics)
    log.info("embed: %d rows, %d reused from the cache, %d embedded in %.1f s (%s on %s)",
             len(texts), reused, embedded, seconds, encoder.precision, encoder.device.name)
    return metrics


if __name__ == "__main__":
    stage_main(run)
