"""Append-only caches kept as Parquet shards in a folder: each write is a new file, whole or
absent (temporary name, then a rename), so concurrent writers never see half a shard."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def write_shard(folder: Path, table: pa.Table) -> str:
    """Write `table` as a new shard in `folder`; return the shard's file name."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{uuid.uuid4().hex}.parquet"
    tmp = folder / f".{name}.tmp"
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, folder / name)
    finally:
        tmp.unlink(missing_ok=True)
    return name
