"""Read source files (JSONL, JSON, CSV, Parquet; local paths or fsspec URLs) into raw tables.

A raw table has the columns of `RAW_SCHEMA`, whatever format the file was in. Rows that
cannot be read become reject entries naming the file, row, line and field; nothing is
dropped silently.
"""

from __future__ import annotations

import csv
import io
import json
import math
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from crediflow.errors import InputError
from crediflow.data.schema import RAW_SCHEMA

FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_STRING_FIELDS = ("id", "system", "instruction", "input", "output", "prompt", "response",
                  "label", "group")
_TURN_KEYS = {"messages": ("role", "content"), "conversations": ("from", "value")}
_JSON_BLOCK = 16 << 20  # a JSONL line longer than this goes through the line-by-line path


@dataclass
class RawFile:
    """One source file read into `RAW_SCHEMA` columns, with where each row came from."""

    path: str
    table: pa.Table
    rows: np.ndarray  # 1-based record number inside the file
    lines: np.ndarray | None  # 1-based line number, where the format has lines
    rejects: list[dict] = field(default_factory=list)


def _reject(path: str, row: int | None, line: int | None, fld: str | None, reason: str) -> dict:
    return {"row": row, "file": path, "line": line, "field": fld, "reason": reason}


def list_source_files(source: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """Every file under `source` (a file, folder or fsspec URL), sorted, hidden ones skipped."""
    fs, root = fsspec.core.url_to_fs(source)
    if not fs.exists(root):
        raise InputError(
            "the source does not exist; set ingest.source in params.yaml to a file or folder",
            file=source,
        )
    if fs.isfile(root):
        return fs, [root]
    paths = sorted(
        p for p in fs.find(root)
        if not any(part.startswith(".") for part in posixpath.relpath(p, root).split("/"))
    )
    if not paths:
        raise InputError("the source folder holds no files", file=source)
    return fs, paths


def read_source_file(fs: fsspec.AbstractFileSystem, path: str) -> RawFile:
    """Read one file by its extension into a `RawFile` (named by URL unless it is local)."""
    ext = posixpath.splitext(path)[1].lower()
    kind = FORMATS.get(ext)
    with fs.open(path, "rb") as fh:
        data = fh.read() if kind else b""
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    path = path if local else fs.unstrip_protocol(path)
    if kind is None:
        supported = ", ".join(sorted(FORMATS))
        return _empty(path, f"unsupported file type {ext or '(none)'}; supported: {supported}")
    if not data.strip():
        return _empty(path, "the file is empty")
    if kind == "parquet":
        return _read_parquet(path, data)
    return {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv}[kind](path, data)


def _empty(path: str, reason: str) -> RawFile:
    return RawFile(path, RAW_SCHEMA.empty_table(), np.zeros(0, np.int64), None,
                   [_reject(path, None, None, None, reason)])


def _nonblank_lines(data: bytes) -> np.ndarray:
    """1-based numbers of the lines that hold more than whitespace."""
    buf = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(buf == 0x0A)
    if len(buf) and buf[-1] != 0x0A:
        ends = np.append(ends, len(buf))
    starts = np.concatenate(([0], ends[:-1] + 1)) if len(ends) else np.zeros(0, np.int64)
    blank = ends == starts
    filled = np.flatnonzero(~blank)
    if len(filled):
        # each segment runs from a non-empty line's start to the next one's, so it holds that
        # line plus only empty lines after it: all-whitespace exactly when the line is blank
        blank[filled] = np.logical_and.reduceat(buf <= 0x20, starts[filled])
    return np.flatnonzero(~blank).astype(np.int64) + 1


def _is_utf8(data: bytes) -> bool:
    """Whether `data` is valid UTF-8, checked without a decoded copy."""
    offsets = pa.py_buffer(np.array([0, len(data)], np.int64).tobytes())
    whole = pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, pa.py_buffer(data)])
    try:
        whole.cast(pa.large_string())
    except pa.ArrowInvalid:
        return False
    return True


def _read_jsonl(path: str, data: bytes) -> RawFile:
    if not _is_utf8(data):
        return _read_jsonl_by_line(path, data)
    try:
        table = pajson.read_json(
            io.BytesIO(data),
            read_options=pajson.ReadOptions(block_size=min(max(len(data), 1 << 20), _JSON_BLOCK)),
            parse_options=pajson.ParseOptions(
                explicit_schema=RAW_SCHEMA, unexpected_field_behavior="ignore"
            ),
        )
    except pa.ArrowInvalid:
        return _read_jsonl_by_line(path, data)
    lines = _nonblank_lines(data)
    if len(lines) != table.num_rows:
        return _read_jsonl_by_line(path, data)
    return RawFile(path, table, np.arange(1, table.num_rows + 1), lines)


def _read_jsonl_by_line(path: str, data: bytes) -> RawFile:
    """The slow, exact path for a file with a bad line somewhere: every line on its own."""
    objs, rows, lines, rejects = [], [], [], []
    record = 0
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        record += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            rejects.append(_reject(path, record, number, None, _utf8_reason(raw, exc)))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            rejects.append(_reject(path, record, number, None,
                                   f"malformed JSON ({exc.msg}, column {exc.colno})"))
            continue
        row, problem = sanitize_row(obj)
        if problem:
            rejects.append(_reject(path, record, number, *problem))
            continue
        objs.append(row)
        rows.append(record)
        lines.append(number)
    table = pa.Table.from_pylist(objs, schema=RAW_SCHEMA)
    return RawFile(path, table, np.asarray(rows, np.int64), np.asarray(lines, np.int64), rejects)


def _utf8_reason(raw: bytes, exc: UnicodeDecodeError) -> str:
    return (f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
            "re-encode the file as UTF-8")


def _read_json(path: str, data: bytes) -> RawFile:
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return _empty(path, f"not valid UTF-8 at line {line} (byte 0x{data[exc.start]:02x}); "
                            "re-encode the file as UTF-8")
    except json.JSONDecodeError as exc:
        return _empty(path, f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}")
    if isinstance(doc, dict):
        lists = [v for v in doc.values() if isinstance(v, list)]
        if len(lists) != 1:
            return _empty(path, "expected a JSON array of records, or an object holding one")
        doc = lists[0]
    if not isinstance(doc, list):
        return _empty(path, f"expected a JSON array of records, got {_json_type(doc)}")
    return _rows_to_file(path, doc)


def _rows_to_file(path: str, objs: Iterable[object]) -> RawFile:
    good, rows, rejects = [], [], []
    for record, obj in enumerate(objs, start=1):
        row, problem = sanitize_row(obj)
        if problem:
            rejects.append(_reject(path, record, None, *problem))
        else:
            good.append(row)
            rows.append(record)
    table = pa.Table.from_pylist(good, schema=RAW_SCHEMA)
    return RawFile(path, table, np.asarray(rows, np.int64), None, rejects)


def _read_csv(path: str, data: bytes) -> RawFile:
    rejects: list[dict] = []
    kept_lines = None
    if not _is_utf8(data):
        data, kept_lines, rejects = _drop_non_utf8_lines(path, data)
    bad_rows: list[int] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad_rows.append(row.number)
        reason = f"expected {row.expected_columns} columns, got {row.actual_columns}"
        rejects.append(_reject(path, None, row.number, None, reason))
        return "skip"

    names = next(csv.reader([data.split(b"\n", 1)[0].decode("utf-8")]), [])
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            parse_options=pacsv.ParseOptions(newlines_in_values=True,
                                             invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, strings_can_be_null=True
            ),
        )
    except pa.ArrowInvalid as exc:
        return _empty(path, f"unreadable CSV: {exc}")
    rows = np.arange(1, table.num_rows + 1)
    lines = None
    if not bad_rows and table.num_rows == len(_nonblank_lines(data)) - 1:
        numbered = _nonblank_lines(data)[1:]
        lines = numbered if kept_lines is None else kept_lines[numbered - 1]
    raw = _conform(path, table, rows, lines)
    raw.rejects[:0] = rejects
    return raw


def _drop_non_utf8_lines(path: str, data: bytes) -> tuple[bytes, np.ndarray, list[dict]]:
    kept, numbers, rejects = [], [], []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            rejects.append(_reject(path, None, number, None, _utf8_reason(raw, exc)))
            continue
        kept.append(raw)
        numbers.append(number)
    return b"\n".join(kept), np.asarray(numbers, np.int64), rejects


def _read_parquet(path: str, data: bytes) -> RawFile:
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as exc:
        return _empty(path, f"unreadable Parquet: {exc}")
    return _conform(path, table, np.arange(1, table.num_rows + 1), None)


def _conform(path: str, table: pa.Table, rows: np.ndarray, lines: np.ndarray | None) -> RawFile:
    """Bring a columnar table (CSV, Parquet) to `RAW_SCHEMA`, rejecting rows that do not fit."""
    n = table.num_rows
    ok = np.ones(n, bool)
    rejects: list[dict] = []
    columns = {}

    def reject_rows(mask: np.ndarray, fld: str, reasons: Iterable[str]) -> None:
        for i, reason in zip(np.flatnonzero(mask & ok), reasons, strict=False):
            rejects.append(_reject(path, int(rows[i]), None if lines is None else int(lines[i]),
                                   fld, reason))
        ok[mask] = False

    for f in RAW_SCHEMA:
        if f.name not in table.column_names:
            columns[f.name] = pa.nulls(n, f.type)
            continue
        col = table.column(f.name).combine_chunks()
        if col.type == f.type:
            columns[f.name] = col
        elif f.name == "rating":
            columns[f.name] = _numbers(col, reject_rows)
        elif f.name in _TURN_KEYS and pa.types.is_string(col.type):
            columns[f.name] = _turns_from_json(f.name, col, reject_rows)
        else:
            try:
                columns[f.name] = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return _empty(path, f"column {f.name!r} has type {col.type}; expected {f.type}")
    conformed = pa.table(columns, schema=RAW_SCHEMA).filter(pa.array(ok))
    return RawFile(path, conformed, rows[ok], None if lines is None else lines[ok], rejects)


def _numbers(col: pa.Array, reject_rows) -> pa.Array:
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        return col.cast(pa.float64())
    text = col.cast(pa.string()).to_pandas()
    present = (text.notna() & (text.str.strip() != "")).to_numpy()
    values = pd.to_numeric(text.where(present), errors="coerce").to_numpy(float)
    bad = present & ~np.isfinite(values)
    reject_rows(bad, "rating", (f"expected a number, got {v!r}" for v in text[bad]))
    return pa.array(values, mask=~present | bad, type=pa.float64())


def _to_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


def _turns_from_json(name: str, col: pa.Array, reject_rows) -> pa.Array:
    """Nested turns stored as JSON text in a flat format (e.g. a CSV cell)."""
    text = col.to_pylist()
    values, bad, reasons = [], np.zeros(len(text), bool), []
    for i, cell in enumerate(text):
        value = None
        if cell is not None and cell.strip():
            try:
                row, problem = sanitize_row({name: json.loads(cell)})
            except json.JSONDecodeError as exc:
                row, problem = None, (name, f"malformed JSON ({exc.msg}, column {exc.colno})")
            if problem:
                bad[i] = True
                reasons.append(problem[1])
            else:
                value = row[name]
        values.append(value)
    reject_rows(bad, name, reasons)
    return pa.array(values, type=RAW_SCHEMA.field(name).type)


def _json_type(value: object) -> str:
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array",
             dict: "object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def sanitize_row(obj: object) -> tuple[dict | None, tuple[str | None, str] | None]:
    """Check one parsed record's known fields; return (row, None) or (None, (field, reason))."""
    if not isinstance(obj, dict):
        return None, (None, f"expected a JSON object, got {_json_type(obj)}")
    row: dict = {}
    for name in _STRING_FIELDS:
        value = obj.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            row[name] = value
        elif name in ("id", "label", "group") and isinstance(value, int) and not isinstance(
            value, bool
        ):
            row[name] = str(value)
        else:
            return None, (name, f"expected a string, got {_json_type(value)} {value!r:.40}")
    rating = obj.get("rating")
    if rating is not None:
        number = (_to_float(rating) if isinstance(rating, str)
                  else float(rating) if isinstance(rating, int | float)
                  and not isinstance(rating, bool) else math.nan)
        if math.isnan(number):
            return None, ("rating", f"expected a number, got {_json_type(rating)} {rating!r:.40}")
        row["rating"] = number
    for name, (key_a, key_b) in _TURN_KEYS.items():
        turns = obj.get(name)
        if turns is None:
            continue
        if not isinstance(turns, list):
            return None, (name, f"expected an array of turns, got {_json_type(turns)}")
        for t, turn in enumerate(turns):
            if not isinstance(turn, dict):
                return None, (f"{name}[{t}]", f"expected an object, got {_json_type(turn)}")
            for key in (key_a, key_b):
                if not isinstance(turn.get(key), str):
                    got = "missing" if key not in turn else _json_type(turn[key])
                    return None, (f"{name}[{t}].{key}", f"expected a string, got {got}")
        row[name] = [{key_a: turn[key_a], key_b: turn[key_b]} for turn in turns]
    return row, None
