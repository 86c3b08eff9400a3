"""Append-only caches kept as Parquet shards in a folder: each write is a new file, whole or
absent (temporary name, then a rename), so concurrent writers never see half a shard."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crediflow.data.formats import hash_strings
from crediflow.errors import CrediflowError, InputError


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



class EmbeddingCache:
    """Vectors by content key on disk, one Parquet shard per `add`, one folder per model.

    Shards are written atomically (temporary file, then rename), so a crashed run leaves no
    partial shard and concurrent runs never overwrite each other; a key in several shards is
    read once. Shards written by other processes are picked up at the next `lookup`.
    """

    def __init__(self, folder: Path, model_id: str) -> None:
        if not model_id:
            raise InputError("the cache needs a model id", field="model_id")
        self.model_id = model_id
        model_key = hash_strings(pa.array([model_id])).to_pylist()[0][:16]
        self.folder = Path(folder) / model_key
        self._seen: set[str] = set()
        self._index = pd.Index([], dtype=object)
        self._vectors = np.empty((0, 0), dtype=np.float32)

    @property
    def dim(self) -> int | None:
        """Width of the cached vectors, None while the cache is empty."""
        return self._vectors.shape[1] if len(self._index) else None

    def __len__(self) -> int:
        self._refresh()
        return len(self._index)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask aligned with `keys`, vectors of the found keys in their order)."""
        self._refresh()
        keys = np.asarray(keys)
        if not len(self._index):
            return np.zeros(len(keys), dtype=bool), np.empty((0, 0), dtype=np.float32)
        where = self._index.get_indexer(keys)
        found = where >= 0
        return found, self._vectors[where[found]]

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Store the vectors of keys not cached yet, as one new shard."""
        keys = np.asarray(keys)
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or len(vectors) != len(keys):
            raise InputError(f"need one vector per key: {len(keys)} keys, vectors of shape "
                             f"{vectors.shape}", field="vectors")
        if self.dim is not None and vectors.shape[1] != self.dim:
            raise InputError(f"vectors have width {vectors.shape[1]}, the cache holds "
                             f"{self.dim}", field="vectors")
        if not np.isfinite(vectors).all():
            raise InputError("refusing to cache NaN or infinite vectors", field="vectors")
        self._refresh()
        new = (self._index.get_indexer(keys) < 0) & ~pd.Index(keys).duplicated()
        if not new.any():
            return
        keys, vectors = keys[new], vectors[new].astype(np.float32, copy=False)
        dim = vectors.shape[1]
        table = pa.table(
            {
                "key": pa.array(keys.astype(str), pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
            }
        ).replace_schema_metadata({"model_id": self.model_id, "dim": str(dim)})
        self._seen.add(write_shard(self.folder, table))
        self._extend(keys, vectors)

    def _refresh(self) -> None:
        """Read the shards that appeared since the last call."""
        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob("*.parquet")):
            if path.name in self._seen:
                continue
            table = pq.read_table(path)
            meta = table.schema.metadata or {}
            if meta.get(b"model_id", b"").decode() != self.model_id:
                raise InputError(f"cache shard {path} belongs to another model", field="cache")
            dim = int(meta[b"dim"])
            vectors = table.column("vector").combine_chunks().flatten().to_numpy()
            self._seen.add(path.name)
            self._extend(table.column("key").to_numpy(), vectors.reshape(-1, dim))

    def _extend(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        if not len(keys):
            return
        if len(self._index) and vectors.shape[1] != self._vectors.shape[1]:
            raise InputError(f"cache shards of widths {self._vectors.shape[1]} and "
                             f"{vectors.shape[1]} in {self.folder}", field="cache")
        new = (self._index.get_indexer(keys) < 0) & ~pd.Index(keys).duplicated()
        self._index = self._index.append(pd.Index(keys[new], dtype=object))
        self._vectors = (np.concatenate([self._vectors, vectors[new]]) if self._vectors.size
                         else np.ascontiguousarray(vectors[new], dtype=np.float32))



class RatingCache:
    """Ratings on disk by content hash of (rater id, scope, text); one folder per rater id.

    `scope` is everything besides the text that changes a rating (template, model, settings);
    the raters fill it in themselves. Each `put_many` writes one Parquet shard atomically
    (temporary file, then rename), so a crashed run leaves no partial shard and concurrent
    runs never overwrite each other. Shards written by other processes are read at the next
    lookup.
    """

    def __init__(self, folder: Path, rater_id: str) -> None:
        if not rater_id:
            raise InputError("the rating cache needs a rater id", field="rater_id")
        self.rater_id = rater_id
        self.folder = Path(folder) / hash_strings(pa.array([rater_id])).to_pylist()[0][:16]
        self._seen: set[str] = set()
        self._index = pd.Index([], dtype=object)
        self._expected = np.empty(0)
        self._argmax = np.empty(0, dtype=np.int64)
        self._probs = np.empty((0, 0))  # NaN-padded rows: shards may hold different widths

    def __len__(self) -> int:
        self._refresh()
        return len(self._index)

    def keys(self, texts: Sequence[str], *, scope: str = "") -> np.ndarray:
        """The cache key of each text: a hash of (rater id, scope, text)."""
        head = hash_strings(pa.array([f"{self.rater_id}\x1f{scope}"])).to_pylist()[0]
        joined = pc.binary_join_element_wise(head, pa.array(_strings(texts), pa.string()),
                                             "\x1f")
        return np.asarray(hash_strings(joined).to_numpy(zero_copy_only=False))

    def get_many(self, texts: Sequence[str], *, scope: str = "") -> tuple[np.ndarray, np.ndarray]:
        """(found mask (N,), scores (N,) float): the cached score of each text, NaN if absent."""
        found, expected, _, _ = self.lookup(self.keys(texts, scope=scope))
        return found, expected

    def put_many(
        self,
        texts: Sequence[str],
        scores: np.ndarray,
        *,
        scope: str = "",
        argmax: np.ndarray | None = None,
        probs: np.ndarray | None = None,
    ) -> None:
        """Store the scores (and optionally most likely scores and probabilities) of texts.

        Texts already cached are skipped. `argmax` defaults to the rounded scores.
        """
        self.put_keys(self.keys(texts, scope=scope), scores, argmax=argmax, probs=probs)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(found (N,), expected (N,) float NaN if absent, argmax (N,) int -1 if absent,
        probs (N, W) float: each row's stored probabilities, NaN-padded to the widest stored;
        all NaN when absent or not stored)."""
        self._refresh()
        where = self._index.get_indexer(np.asarray(keys, dtype=object))
        found = where >= 0
        n = len(where)
        expected, argmax = np.full(n, np.nan), np.full(n, -1, dtype=np.int64)
        probs = np.full((n, self._probs.shape[1]), np.nan)
        expected[found] = self._expected[where[found]]
        argmax[found] = self._argmax[where[found]]
        probs[found] = self._probs[where[found]]
        return found, expected, argmax, probs

    def put_keys(
        self,
        keys: np.ndarray,
        scores: np.ndarray,
        *,
        argmax: np.ndarray | None = None,
        probs: np.ndarray | None = None,
    ) -> None:
        """`put_many` by precomputed keys (see `keys`)."""
        keys = np.asarray(keys, dtype=object)
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != keys.shape:
            raise InputError(f"need one score per text: {len(keys)} texts, scores of shape "
                             f"{scores.shape}", field="scores")
        if not np.isfinite(scores).all():
            raise InputError("refusing to cache NaN or infinite scores", field="scores")
        argmax = np.rint(scores).astype(np.int64) if argmax is None else np.asarray(argmax)
        if argmax.shape != keys.shape:
            raise InputError(f"need one argmax per text: {len(keys)} texts, argmax of shape "
                             f"{argmax.shape}", field="argmax")
        if probs is not None and (np.ndim(probs) != 2 or len(probs) != len(keys)):
            raise InputError(f"probs must be (N, S) with N = {len(keys)}, got shape "
                             f"{np.shape(probs)}", field="probs")
        self._refresh()
        new = (self._index.get_indexer(keys) < 0) & ~pd.Index(keys).duplicated()
        if not new.any():
            return
        columns: dict[str, pa.Array] = {
            "key": pa.array(keys[new].astype(str), pa.string()),
            "expected": pa.array(scores[new], pa.float64()),
            "argmax": pa.array(argmax[new].astype(np.int64), pa.int64()),
        }
        if probs is not None:
            rows = np.asarray(probs, dtype=np.float64)[new]
            columns["probs"] = pa.FixedSizeListArray.from_arrays(pa.array(rows.ravel()),
                                                                 rows.shape[1])
        table = pa.table(columns).replace_schema_metadata({"rater_id": self.rater_id})
        try:
            name = write_shard(self.folder, table)
        except OSError as exc:
            raise CrediflowError(f"cannot write the rating cache in {self.folder}: {exc}") from exc
        self._seen.add(name)
        self._extend(table)

    def _refresh(self) -> None:
        """Read the shards that appeared since the last call."""
        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob("*.parquet")):
            if path.name not in self._seen:
                try:
                    table = pq.read_table(path)
                except (OSError, pa.ArrowInvalid) as exc:
                    raise CrediflowError(f"unreadable rating cache shard {path}: {exc}; "
                                         "delete it to rate those texts again") from exc
                self._seen.add(path.name)
                self._extend(table)

    def _extend(self, table: pa.Table) -> None:
        """Add a shard's rows to the in-memory index (a key already held is kept once)."""
        keys = pd.Index(table.column("key").to_numpy(zero_copy_only=False).astype(object))
        new = (self._index.get_indexer(keys) < 0) & ~keys.duplicated()
        if not new.any():
            return
        probs = np.empty((len(keys), 0))
        if "probs" in table.column_names:
            column = table.column("probs").combine_chunks()
            probs = column.flatten().to_numpy().reshape(len(column), -1)
        width = max(self._probs.shape[1], probs.shape[1])
        self._index = self._index.append(keys[new])
        self._expected = np.concatenate([self._expected, table.column("expected").to_numpy()[new]])
        self._argmax = np.concatenate([self._argmax, table.column("argmax").to_numpy()[new]])
        self._probs = np.concatenate([_pad(self._probs, width), _pad(probs[new], width)])


def _pad(matrix: np.ndarray, width: int) -> np.ndarray:
    """`matrix` with NaN columns appended up to `width`."""
    return np.pad(matrix.astype(np.float64), ((0, 0), (0, width - matrix.shape[1])),
                  constant_values=np.nan)


def _strings(texts: Sequence[str]) -> list[str]:
    """`texts` as a list of str, or an InputError naming the first bad row."""
    if isinstance(texts, str | bytes):
        raise InputError("texts must be a sequence of strings, not a single string",
                         field="texts")
    out = list(texts)
    bad = [i for i, t in enumerate(out) if not isinstance(t, str)]
    if bad:
        raise InputError(f"{len(bad)} text(s) are not strings, first at row {bad[0] + 1} "
                         f"({type(out[bad[0]]).__name__})", field="texts")
    return out
