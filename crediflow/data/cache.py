"""Append-only caches kept as Parquet shards in a folder: each write is a new file, whole or
absent (temporary name, then a rename), so concurrent writers never see half a shard.

`ShardCache` is the one implementation; `EmbeddingCache` (vectors by content key) and
`RatingCache` (ratings by content hash) only name its columns and check their arguments.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crediflow.core.validation import check_strings
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


@dataclass(frozen=True)
class Column:
    """A value column of a `ShardCache`.

    name: the Parquet column. dtype: its numpy type. fill: the value of absent keys (and of
    padding). vector: a fixed-size list per row (a (N, W) array) instead of a scalar (N,).
    ragged: vectors may have different widths in different shards (narrower rows are padded
    with `fill`); otherwise every shard must have the same width. optional: a shard may lack
    the column (its rows hold `fill`).
    """

    name: str
    dtype: type[np.generic]
    fill: float
    vector: bool = False
    ragged: bool = False
    optional: bool = False


class ShardCache:
    """Rows by string key in a folder of Parquet shards: a `key` column and fixed-width numeric
    value columns (`Column`), one shard per `append`, plus `metadata` in every shard's schema.

    Shards are written atomically (temporary file, then rename), so a crashed run leaves no
    partial shard and concurrent runs never overwrite each other. Shards written by other
    processes are read at the next `locate`, `append` or `len`. A key in several shards (or
    repeated in one) is kept once: the first one read.

    In memory, each column is one growable buffer with spare capacity (doubled when full) and
    keys map to buffer rows through a dict that only ever grows, so taking in a shard copies
    that shard's rows and, amortised, a constant number of held rows: linear in the shard, not
    in the cache. The exception is a ragged column getting wider, which copies that column
    once per new width. `copied_bytes` counts the bytes of held values copied so far. A row
    keeps its number for the life of the object, and a lookup costs one dict probe per key
    plus a gather from the buffers.
    """

    def __init__(
        self,
        folder: Path,
        columns: Sequence[Column],
        *,
        metadata: Mapping[str, str],
        owner: str,
        label: str,
    ) -> None:
        """`metadata` is written into every shard, and a shard whose metadata differs belongs
        to another `owner` (an error); `label` names the cache in messages."""
        self.folder = Path(folder)
        self.columns = tuple(columns)
        self.metadata = dict(metadata)
        self.owner, self.label = owner, label
        self.copied_bytes = 0
        self._seen: set[str] = set()
        self._rows: dict[str, int] = {}
        self._size = 0
        self._widths: dict[str, int | None] = {c.name: None for c in self.columns if c.vector}
        self._buffers = {c.name: np.empty((0, 0) if c.vector else 0, dtype=c.dtype)
                         for c in self.columns}

    def __len__(self) -> int:
        self._refresh()
        return self._size

    def width(self, name: str) -> int | None:
        """The width of vector column `name` (the widest, if ragged); None while unknown."""
        self._refresh()
        return self._widths[name]

    def locate(self, keys: np.ndarray | Sequence[str]) -> np.ndarray:
        """The row of each key (int64 (N,)), -1 for keys not held."""
        self._refresh()
        return self._locate(_key_list(keys))

    def gather(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Each column's values at `rows` (from `locate`); rows of -1 get the column's fill."""
        rows = np.asarray(rows, dtype=np.int64)
        hit = rows >= 0
        out = {}
        for column in self.columns:
            held = self._buffers[column.name][: self._size]
            if hit.all():
                out[column.name] = held[rows]
            else:
                values = np.full((len(rows), *held.shape[1:]), column.fill, dtype=column.dtype)
                values[hit] = held[rows[hit]]
                out[column.name] = values
        return out

    def append(
        self,
        keys: np.ndarray | Sequence[str],
        values: Mapping[str, np.ndarray | None],
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """Store the rows of keys not held yet as one new shard; return how many were stored.

        `values` holds one array per column, aligned with `keys` (None or absent for an
        optional column); `metadata` is added to this shard's schema metadata.
        """
        keys = _key_list(keys)
        arrays = self._arrays(len(keys), values)
        self._refresh()
        self._check_widths(arrays, None)
        new = self._new(keys)
        if not new.any():
            return 0
        keys = np.asarray(keys, dtype=object)[new].tolist()
        arrays = {name: array[new] for name, array in arrays.items()}
        table = pa.table({"key": pa.array(keys, pa.string()),
                          **{name: _arrow(array) for name, array in arrays.items()}})
        table = table.replace_schema_metadata({**self.metadata, **(metadata or {})})
        try:
            name = write_shard(self.folder, table)
        except OSError as exc:
            raise CrediflowError(f"cannot write the {self.label} in {self.folder}: {exc}") from exc
        self._seen.add(name)
        self._store(keys, arrays)
        return len(keys)

    def _arrays(self, n: int, values: Mapping[str, np.ndarray | None]) -> dict[str, np.ndarray]:
        """`values` as arrays of the columns' types, checked against `n` keys."""
        unknown = set(values) - {c.name for c in self.columns}
        if unknown:
            raise InputError(f"the {self.label} has no column(s) {sorted(unknown)}",
                             field="values")
        arrays = {}
        for column in self.columns:
            value = values.get(column.name)
            if value is None:
                if not column.optional:
                    raise InputError(f"the {self.label} needs {column.name!r}",
                                     field=column.name)
                continue
            array = np.asarray(value, dtype=column.dtype)
            if array.ndim != (2 if column.vector else 1) or len(array) != n:
                shape = "(N, W)" if column.vector else "(N,)"
                raise InputError(f"{column.name} must be {shape} with N = {n} keys, got shape "
                                 f"{array.shape}", field=column.name)
            arrays[column.name] = array
        return arrays

    def _check_widths(self, arrays: Mapping[str, np.ndarray], shard: Path | None) -> None:
        """Refuse vectors whose width differs from the held ones (where widths must agree)."""
        for column in self.columns:
            held = self._widths.get(column.name)
            if column.name not in arrays or column.ragged or held is None:
                continue
            width = arrays[column.name].shape[1]
            if width == held:
                continue
            if shard is None:
                raise InputError(f"{column.name} rows have width {width}, the {self.label} "
                                 f"holds {held}", field=column.name)
            raise InputError(f"cache shards of widths {held} and {width} in {self.folder} "
                             f"({shard.name})", field="cache")

    def _locate(self, keys: list[str]) -> np.ndarray:
        return np.fromiter(map(self._rows.get, keys, repeat(-1)), dtype=np.int64,
                           count=len(keys))

    def _new(self, keys: list[str]) -> np.ndarray:
        """Mask of the keys to store: not held, and first of their repeats."""
        repeated = pd.Series(keys, dtype=object).duplicated().to_numpy()
        return (self._locate(keys) < 0) & ~repeated

    def _store(self, keys: list[str], arrays: Mapping[str, np.ndarray]) -> None:
        """Put rows of new, distinct keys into the buffers (widths already checked)."""
        start, stop = self._size, self._size + len(keys)
        self._reserve(stop)
        for column in self.columns:
            buffer = self._buffers[column.name]
            array = arrays.get(column.name)
            if array is None:
                buffer[start:stop] = column.fill
                continue
            if column.vector:
                width = array.shape[1]
                if self._widths[column.name] is None or width > buffer.shape[1]:
                    buffer = self._widen(column, width)
                buffer[start:stop, :width] = array
                buffer[start:stop, width:] = column.fill
            else:
                buffer[start:stop] = array
        self._rows.update(zip(keys, range(start, stop), strict=True))
        self._size = stop

    def _reserve(self, rows: int) -> None:
        """Grow every buffer to hold at least `rows` rows, doubling the capacity."""
        capacity = len(next(iter(self._buffers.values())))
        if rows <= capacity:
            return
        capacity = max(rows, 2 * capacity, 16)
        for name, buffer in self._buffers.items():
            grown = np.empty((capacity, *buffer.shape[1:]), dtype=buffer.dtype)
            grown[: self._size] = buffer[: self._size]
            self.copied_bytes += buffer[: self._size].nbytes
            self._buffers[name] = grown

    def _widen(self, column: Column, width: int) -> np.ndarray:
        """The buffer of vector `column` widened to `width`, the held rows padded with fill."""
        buffer = self._buffers[column.name]
        wider = np.full((len(buffer), width), column.fill, dtype=column.dtype)
        wider[: self._size, : buffer.shape[1]] = buffer[: self._size]
        self.copied_bytes += buffer[: self._size].nbytes
        self._buffers[column.name], self._widths[column.name] = wider, width
        return wider

    def _refresh(self) -> None:
        """Read the shards that appeared since the last call."""
        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob("*.parquet")):
            if path.name in self._seen:
                continue
            keys, arrays = self._read(path)
            self._check_widths(arrays, path)
            new = self._new(keys)
            self._seen.add(path.name)
            if new.any():
                self._store(np.asarray(keys, dtype=object)[new].tolist(),
                            {name: array[new] for name, array in arrays.items()})

    def _read(self, path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
        """A shard's keys and value arrays, after checking that it belongs to this cache."""
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise CrediflowError(f"unreadable {self.label} shard {path}: {exc}; delete it to "
                                 "compute those rows again") from exc
        meta = table.schema.metadata or {}
        if any(meta.get(k.encode(), b"").decode() != v for k, v in self.metadata.items()):
            raise InputError(f"cache shard {path} belongs to another {self.owner}",
                             field="cache")
        required = ["key", *(c.name for c in self.columns if not c.optional)]
        missing = [name for name in required if name not in table.column_names]
        if missing:
            raise CrediflowError(f"unreadable {self.label} shard {path}: no column(s) "
                                 f"{missing}; delete it to compute those rows again")
        arrays = {}
        for column in self.columns:
            if column.name not in table.column_names:
                continue
            values = table.column(column.name).combine_chunks()
            if column.vector:
                width = values.type.list_size
                array = values.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
            else:
                array = values.to_numpy(zero_copy_only=False)
            arrays[column.name] = array.astype(column.dtype, copy=False)
        return table.column("key").to_numpy().tolist(), arrays


class EmbeddingCache(ShardCache):
    """Vectors by content key on disk, one Parquet shard per `add`, one folder per model
    (a `ShardCache` with one float32 vector column, `vector`)."""

    def __init__(self, folder: Path, model_id: str) -> None:
        if not model_id:
            raise InputError("the cache needs a model id", field="model_id")
        self.model_id = model_id
        model_key = hash_strings(pa.array([model_id])).to_pylist()[0][:16]
        super().__init__(Path(folder) / model_key,
                         [Column("vector", np.float32, np.nan, vector=True)],
                         metadata={"model_id": model_id}, owner="model", label="embedding cache")

    @property
    def dim(self) -> int | None:
        """Width of the cached vectors, None while the cache is empty."""
        return self.width("vector")

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask aligned with `keys`, vectors of the found keys in their order)."""
        rows = self.locate(keys)
        found = rows >= 0
        if self._widths["vector"] is None:
            return found, np.empty((0, 0), dtype=np.float32)
        return found, self.gather(rows[found])["vector"]

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Store the vectors of keys not cached yet, as one new shard."""
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or len(vectors) != len(keys):
            raise InputError(f"need one vector per key: {len(keys)} keys, vectors of shape "
                             f"{vectors.shape}", field="vectors")
        held = self._widths["vector"]  # shards not read yet are checked in `append`
        if held is not None and vectors.shape[1] != held:
            raise InputError(f"vectors have width {vectors.shape[1]}, the cache holds "
                             f"{held}", field="vectors")
        if not np.isfinite(vectors).all():
            raise InputError("refusing to cache NaN or infinite vectors", field="vectors")
        self.append(keys, {"vector": vectors}, metadata={"dim": str(vectors.shape[1])})


class RatingCache(ShardCache):
    """Ratings on disk by content hash of (rater id, scope, text); one folder per rater id
    (a `ShardCache` with columns `expected`, `argmax` and optional ragged `probs`).

    `scope` is everything besides the text that changes a rating (template, model, settings);
    the raters fill it in themselves. Each `put_many` writes one shard.
    """

    def __init__(self, folder: Path, rater_id: str) -> None:
        if not rater_id:
            raise InputError("the rating cache needs a rater id", field="rater_id")
        self.rater_id = rater_id
        super().__init__(
            Path(folder) / hash_strings(pa.array([rater_id])).to_pylist()[0][:16],
            [Column("expected", np.float64, np.nan), Column("argmax", np.int64, -1),
             Column("probs", np.float64, np.nan, vector=True, ragged=True, optional=True)],
            metadata={"rater_id": rater_id}, owner="rater", label="rating cache",
        )

    def keys(self, texts: Sequence[str], *, scope: str = "") -> np.ndarray:
        """The cache key of each text: a hash of (rater id, scope, text)."""
        head = hash_strings(pa.array([f"{self.rater_id}\x1f{scope}"])).to_pylist()[0]
        joined = pc.binary_join_element_wise(head, pa.array(check_strings(texts), pa.string()),
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
        rows = self.locate(keys)
        values = self.gather(rows)
        return rows >= 0, values["expected"], values["argmax"], values["probs"]

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
        self.append(keys, {"expected": scores, "argmax": argmax, "probs": probs})


def _key_list(keys: np.ndarray | Sequence[str]) -> list[str]:
    """`keys` as a list of Python str."""
    return np.asarray(keys).astype(str, copy=False).tolist()


def _arrow(array: np.ndarray) -> pa.Array:
    """A column for a shard: plain, or a fixed-size list per row for a 2-D array."""
    if array.ndim == 1:
        return pa.array(array)
    return pa.FixedSizeListArray.from_arrays(pa.array(array.ravel()), array.shape[1])
