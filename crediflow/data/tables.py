"""Plain tables for the command line: read a CSV, JSONL, JSON or Parquet file whole, take its
texts (from any ingest format, or from a text column), and write it back by extension."""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from crediflow.errors import InputError
from crediflow.data.formats import NO_FORMAT, detect_formats, to_messages
from crediflow.data.readers import FORMATS, read_source_file

_CONVERSATION_FIELDS = ("messages", "conversations", "instruction", "output", "prompt", "response")


def _kind(path: str) -> str:
    kind = FORMATS.get(posixpath.splitext(path)[1].lower())
    if kind is None:
        raise InputError(f"unsupported file type; use one of {', '.join(sorted(FORMATS))}",
                         file=path)
    return kind


def read_table(path: str) -> pa.Table:
    """The whole file as a table, every column kept."""
    kind = _kind(path)
    if not Path(path).exists():
        raise InputError("no such file", file=path)
    try:
        if kind == "csv":
            return pacsv.read_csv(path)
        if kind == "jsonl":
            return pajson.read_json(path)
        if kind == "parquet":
            return pq.read_table(path)
        rows = json.loads(Path(path).read_text(encoding="utf-8"))
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, ValueError, TypeError) as exc:
        raise InputError(f"cannot read the file: {exc}", file=path) from exc


def table_messages(path: str, table: pa.Table) -> pa.ListArray | None:
    """Canonical `messages` per row when the file is in an ingest format, else None."""
    if not set(_CONVERSATION_FIELDS) & set(table.column_names):
        return None
    raw = read_source_file(fsspec.filesystem("file"), str(path))
    if raw.rejects:
        first = raw.rejects[0]
        raise InputError(first["reason"], file=path, line=first["line"] or first["row"],
                         field=first["field"])
    formats = detect_formats(raw.table)
    if (formats == NO_FORMAT).any():
        row = int(raw.rows[np.flatnonzero(formats == NO_FORMAT)[0]])
        raise InputError("no conversation in this row", file=path, line=row, field="messages")
    return to_messages(raw.table, formats)


def column_values(path: str, table: pa.Table, column: str) -> np.ndarray:
    """One column as an object array; an error naming the columns there are if it is missing."""
    if column not in table.column_names:
        raise InputError(f"no column {column!r}; the file has {', '.join(table.column_names)}",
                         file=path, field=column)
    return table.column(column).to_numpy(zero_copy_only=False).astype(object)


def write_table(table: pa.Table, path: str) -> None:
    """Write by extension (CSV, JSONL, JSON, Parquet) through a temporary file and a rename."""
    kind = _kind(path)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    try:
        if kind == "parquet":
            pq.write_table(table, tmp)
        elif kind == "csv":
            pacsv.write_csv(table, tmp)
        else:
            rows = table.to_pylist()
            with open(tmp, "w", encoding="utf-8") as fh:
                if kind == "json":
                    json.dump(rows, fh, ensure_ascii=False)
                else:
                    fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
