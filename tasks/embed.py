"""Stage `embed`: one sentence embedding per ingested record, reusing cached vectors.

Run as `python -m tasks.embed` (the cmd of its DVC stage).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crediflow.data.cache import EmbeddingCache
from crediflow.data.texts import conversation_texts
from crediflow.embed.embed import embed_texts
from crediflow.errors import InputError
from crediflow.models.encoder import load_encoder
from tasks.config import stage_params
from tasks.io import atomic_dir, write_json, write_parquet
from tasks.stage import project_path, stage_main

log = logging.getLogger("crediflow.embed")


def vectors_table(ids: pa.Array, vectors: np.ndarray) -> pa.Table:
    """`id` and a fixed-size `vector` column."""
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
    vector = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    return pa.table({"id": ids, "vector": vector})


def read_vectors(path) -> tuple[pa.Array, np.ndarray]:
    """The ids and the (N, dim) float32 matrix of an embeddings file."""
    table = pq.read_table(path)
    vector = table.column("vector").combine_chunks()
    matrix = vector.flatten().to_numpy().reshape(len(vector), vector.type.list_size)
    return table.column("id").combine_chunks(), matrix


def aligned_vectors(records: pa.Table, embeddings_path) -> np.ndarray:
    """The embedding of each record, in record order; an error when the two stages disagree."""
    ids, vectors = read_vectors(embeddings_path)
    record_ids = records.column("id").combine_chunks()
    if len(ids) == len(record_ids) and ids.equals(record_ids):
        return vectors
    position = pc.index_in(record_ids, value_set=ids)
    missing = pc.is_null(position).to_numpy(zero_copy_only=False)
    if missing.any():
        examples = record_ids.filter(pa.array(missing)).slice(0, 3).to_pylist()
        raise InputError(
            f"{int(missing.sum())} ingested record(s) have no embedding (e.g. {examples}); "
            "the embeddings are stale: rerun the embed stage",
            file=str(embeddings_path), field="id",
        )
    return vectors[position.to_numpy()]


def run() -> dict:
    """Embed the ingested records and publish `embeddings.parquet`; return the metrics."""
    params = stage_params("embed")
    records = pq.read_table(project_path(stage_params("ingest")["out"]) / "records.parquet",
                            columns=["id", "messages"])
    texts = conversation_texts(records.column("messages"), roles=params["roles"])
    start = time.perf_counter()
    encoder = load_encoder(params["model"], max_length=int(params["max_length"]),
                           quantize=bool(params["quantize"]))
    cache = EmbeddingCache(project_path(params["cache"]), model_id=encoder.model_id)
    vectors, reused = embed_texts(texts, encoder, cache=cache, batch_size=int(params["batch_size"]))
    seconds = time.perf_counter() - start
    embedded = len(texts) - reused
    metrics = {
        "rows": len(texts),
        "reused_from_cache": reused,
        "embedded": embedded,
        "dim": int(vectors.shape[1]),
        "seconds": round(seconds, 2),
        "texts_per_second": round(embedded / seconds, 1) if embedded else None,
    }
    with atomic_dir(project_path(params["out"])) as out:
        write_parquet(out / "embeddings.parquet", vectors_table(records.column("id"), vectors))
        write_json(project_path(params["reports"]) / "metrics.json", metrics)
    log.info("embed: %d rows, %d reused from the cache, %d embedded in %.1f s",
             len(texts), reused, embedded, seconds)
    return metrics


if __name__ == "__main__":
    stage_main(run)
