"""The data catalog: stages read and write datasets by name; only this module knows where they
live (folders from params.yaml's `catalog` section, file names here).

A stage reads with `catalog.read("fixed")` and publishes with `catalog.publish("fix")`, which
yields a writer for that stage's datasets and reports; everything it writes appears at once
when the block ends, or not at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crediflow.data.schema import ID, VECTOR
from crediflow.errors import ConfigError, InputError
from tasks.config import load_params
from tasks.io import atomic_dir, write_bytes_atomic, write_json, write_parquet
from tasks.settings import project_root

# dataset name -> (the catalog folder it lives in, its file name)
DATASETS: dict[str, tuple[str, str]] = {
    "ingested": ("ingested", "records.parquet"),
    "rejected": ("ingested", "rejected.parquet"),
    "embeddings": ("embeddings", "embeddings.parquet"),
    "audited": ("audited", "records.parquet"),
    "fixed": ("fixed", "records.parquet"),
    "changelog": ("fixed", "changelog.parquet"),
    "selected": ("selected", "records.parquet"),
    "token_cleaned": ("token_cleaned", "records.parquet"),
    "heldout": ("token_cleaned", "heldout.parquet"),
}
# stage -> the catalog folder it writes, and the stage that writes each folder
STAGE_FOLDERS: dict[str, str] = {"ingest": "ingested", "embed": "embeddings",
                                 "audit": "audited", "fix": "fixed", "select": "selected",
                                 "token_clean": "token_cleaned", "finetune": "finetuned",
                                 "prune": "pruned"}
_WRITER = {folder: stage for stage, folder in STAGE_FOLDERS.items()}
# folders and files of the catalog section that are not stage outputs
_OTHER_KEYS = ("raw", "truth", "reports", "cache")


def _resolve(path: str, root: Path) -> Path | str:
    """A params.yaml path made absolute against the project; URLs are left as they are."""
    if "://" in path:
        return path
    p = Path(path)
    return p if p.is_absolute() else root / p


class Catalog:
    """Paths of every dataset, report folder and cache of one project."""

    def __init__(self, root: Path | None = None, params: dict[str, Any] | None = None) -> None:
        self.root = root or project_root()
        section = (params if params is not None else load_params(self.root)).get("catalog")
        if not isinstance(section, dict):
            raise ConfigError("missing section; it maps every dataset to its folder",
                              source="params.yaml", section="catalog")
        known = set(STAGE_FOLDERS.values()) | set(_OTHER_KEYS)
        for key, value in section.items():
            if key not in known:
                raise ConfigError(f"unknown key; the keys of this section are "
                                  f"{', '.join(sorted(known))}", source="params.yaml",
                                  section="catalog", key=key)
            if not (value is None and key == "truth") and not (
                    isinstance(value, str) and value.strip()):
                raise ConfigError(f"expected a path, got {value!r}", source="params.yaml",
                                  section="catalog", key=key)
        missing = sorted(known - set(section) - {"truth"})
        if missing:
            raise ConfigError("missing key", source="params.yaml", section="catalog",
                              key=missing[0])
        self._folders = section

    def folder(self, key: str) -> Path | str:
        """The folder (or file, for `raw` and `truth`) of a catalog key."""
        return _resolve(self._folders[key], self.root)

    def path(self, name: str) -> Path:
        """Where dataset `name` lives."""
        if name not in DATASETS:
            raise KeyError(f"unknown dataset {name!r}; the catalog has {sorted(DATASETS)}")
        folder, file = DATASETS[name]
        return Path(self.folder(folder)) / file

    @property
    def source(self) -> str:
        """Where ingest reads from: a file, a folder or an fsspec URL."""
        return str(self.folder("raw"))

    @property
    def truth(self) -> Path | None:
        """The optional `id,true_label` file that scores the fixes."""
        value = self._folders.get("truth")
        return None if value is None else Path(_resolve(value, self.root))

    def reports(self, stage: str) -> Path:
        """The report folder of a stage."""
        return Path(self.folder("reports")) / stage

    def cache(self, kind: str) -> Path:
        """A cache folder (embeddings, ratings) shared by every run."""
        return Path(self.folder("cache")) / kind

    def read(self, name: str, columns: list[str] | None = None) -> pa.Table:
        """Dataset `name`; a clear error naming the stage to run when it is not there."""
        path = self.path(name)
        if not path.exists():
            stage = _WRITER[DATASETS[name][0]]
            raise InputError(f"dataset {name!r} does not exist yet: run the {stage} stage first",
                             file=str(path))
        return pq.read_table(path, columns=columns)

    def vectors_for(self, records: pa.Table) -> np.ndarray:
        """The embedding of each record, in record order; an error when the stages disagree."""
        path = self.path("embeddings")
        ids, vectors = read_vectors(self.read("embeddings"))
        record_ids = records.column(ID).combine_chunks()
        if len(ids) == len(record_ids) and ids.equals(record_ids):
            return vectors
        position = pc.index_in(record_ids, value_set=ids)
        missing = pc.is_null(position).to_numpy(zero_copy_only=False)
        if missing.any():
            examples = record_ids.filter(pa.array(missing)).slice(0, 3).to_pylist()
            raise InputError(
                f"{int(missing.sum())} ingested record(s) have no embedding (e.g. {examples}); "
                "the embeddings are stale: rerun the embed stage", file=str(path), field=ID)
        return vectors[position.to_numpy()]

    @contextmanager
    def publish(self, stage: str) -> Iterator[StageWriter]:
        """A writer for `stage`'s datasets and reports, published together when the block ends
        (the previous outputs stay in place when it raises)."""
        folder = STAGE_FOLDERS[stage]
        with atomic_dir(Path(self.folder(folder))) as tmp:
            yield StageWriter(stage, folder, tmp, self.reports(stage))


@dataclass
class StageWriter:
    """Writes one stage's datasets into its pending folder and its reports beside."""

    stage: str
    folder: str
    pending: Path
    reports: Path

    def table(self, name: str, table: pa.Table) -> None:
        """Write dataset `name` (one of this stage's)."""
        folder, file = DATASETS[name]
        if folder != self.folder:
            raise KeyError(f"stage {self.stage!r} does not write dataset {name!r}")
        write_parquet(self.pending / file, table)

    def json(self, name: str, obj: object) -> None:
        """A JSON report (metrics.json, validation.json, ...)."""
        write_json(self.reports / name, obj)

    def file(self, name: str, data: bytes) -> None:
        """Any other report file (a PNG, an HTML page)."""
        write_bytes_atomic(self.reports / name, data)


def vectors_table(ids: pa.Array | pa.ChunkedArray, vectors: np.ndarray) -> pa.Table:
    """The embeddings dataset: `id` and a fixed-size `vector` column."""
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
    vector = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    return pa.table({ID: ids, VECTOR: vector})


def read_vectors(table: pa.Table) -> tuple[pa.Array, np.ndarray]:
    """The ids and the (N, dim) float32 matrix of an embeddings table."""
    vector = table.column(VECTOR).combine_chunks()
    matrix = vector.flatten().to_numpy().reshape(len(vector), vector.type.list_size)
    return table.column(ID).combine_chunks(), matrix
