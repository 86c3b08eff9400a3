"""Read source files (JSONL, JSON, CSV, Parquet; local paths or fsspec URLs) into raw tables.

A raw table has the columns of `RAW_SCHEMA`, whatever format the file was in. Rows that
cannot be read become reject entries naming the file, row, line and field; nothing is
dropped silently. A file that cannot be read at all (an unsupported type, a broken JSON
document or Parquet file, a missing or unreadable file) is not a row: it comes back with
`unreadable` set, for the caller to refuse or to list.

With `all_columns=True` a file's columns are also kept as read (`RawFile.columns`), one row
per record that could be parsed, whatever its fields hold: the command line reads plain
tables this way.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import os
import posixpath
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from crediflow.data.schema import LABEL, RATING, RAW_SCHEMA
from crediflow.errors import InputError

FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_STRING_FIELDS = ("id", "system", "instruction", "input", "output", "prompt", "response",
                  LABEL, "group")
_TURN_KEYS = {"messages": ("role", "content"), "conversations": ("from", "value")}
_JSON_BLOCK = 16 << 20  # a JSONL line longer than this goes through the line-by-line path
_QUOTE, _COMMA, _NEWLINE, _CR = 0x22, 0x2C, 0x0A, 0x0D


@dataclass
class RawFile:
    """One source file read into `RAW_SCHEMA` columns, with where each row came from."""

    path: str
    table: pa.Table
    rows: np.ndarray  # 1-based record number inside the file
    lines: np.ndarray | None  # 1-based line number, where the format has lines
    rejects: list[dict] = field(default_factory=list)
    unreadable: str | None = None  # why the whole file could not be read; then no rows
    bytes: int | None = None  # the file's size, where it could be read or stat'ed
    # with all_columns=True: every column as read, one row per parsed record (which may still
    # be rejected from `table` for a bad known field); `column_rows`/`column_lines` as above
    columns: pa.Table | None = None
    column_rows: np.ndarray | None = None
    column_lines: np.ndarray | None = None


def _reject(path: str, row: int | None, line: int | None, fld: str | None, reason: str) -> dict:
    return {"row": row, "file": path, "line": line, "field": fld, "reason": reason}


def list_source_files(source: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """Every file under `source` (a file, folder or fsspec URL), sorted, hidden ones skipped.

    Local symlinked folders are followed once (a folder reached again, e.g. by a link loop,
    is not listed twice); dangling links and entries that cannot be listed are returned as
    paths, so that reading them reports them as unreadable files.
    """
    fs, root = fsspec.core.url_to_fs(source)
    local = _is_local(fs)
    if not (os.path.lexists(root) if local else fs.exists(root)):
        raise InputError(
            "the source does not exist; set ingest.source in params.yaml to a file or folder",
            file=source,
        )
    if local:
        paths = [root] if not os.path.isdir(root) else _local_files(root)
    elif fs.isfile(root):
        return fs, [root]
    else:
        paths = sorted(
            p for p in fs.find(root)
            if not any(part.startswith(".") for part in posixpath.relpath(p, root).split("/"))
        )
    if not paths:
        raise InputError("the source folder holds no files", file=source)
    return fs, paths


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _local_files(root: str) -> list[str]:
    """Files under a local folder, following symlinked folders once each, hidden ones skipped."""
    seen: set[tuple[int, int]] = set()
    found: list[str] = []
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            info = os.stat(folder)
        except OSError:
            found.append(folder)
            continue
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        try:
            entries = list(os.scandir(folder))
        except OSError:
            found.append(folder)  # reading it fails with the reason
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:  # a link loop or a link into a folder we may not read
                is_dir = False
            (pending if is_dir else found).append(entry.path)
    return sorted(found)


def read_source_file(fs: fsspec.AbstractFileSystem, path: str, *,
                     all_columns: bool = False) -> RawFile:
    """Read one file by its extension into a `RawFile` (named by URL unless it is local)."""
    ext = posixpath.splitext(path)[1].lower()
    kind = FORMATS.get(ext)
    name = path if _is_local(fs) else fs.unstrip_protocol(path)
    if kind is None:
        supported = ", ".join(sorted(FORMATS))
        return _unreadable(name, f"unsupported file type {ext or '(none)'}; supported: "
                                 f"{supported} (uncompressed)", _size(fs, path))
    try:
        if _is_local(fs) and stat.S_ISDIR(os.stat(path).st_mode):
            return _unreadable(name, "a folder where a file was expected")
        with fs.open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return _unreadable(name, f"cannot read the file: {exc.strerror or exc}", _size(fs, path))
    if kind != "parquet" and data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]  # a byte-order mark is not part of the first line
    if not data.strip():
        raw = _empty(name, "the file is empty")
    elif kind == "parquet":
        raw = _read_parquet(name, data, all_columns)
    else:
        reader = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv}[kind]
        raw = reader(name, data, all_columns)
    raw.bytes = len(data)
    return raw


def _size(fs: fsspec.AbstractFileSystem, path: str) -> int | None:
    try:
        return int(fs.size(path))
    except (OSError, TypeError, ValueError):
        return None


def _empty(path: str, reason: str) -> RawFile:
    return RawFile(path, RAW_SCHEMA.empty_table(), np.zeros(0, np.int64), None,
                   [_reject(path, None, None, None, reason)])


def _unreadable(path: str, reason: str, size: int | None = None) -> RawFile:
    return RawFile(path, RAW_SCHEMA.empty_table(), np.zeros(0, np.int64), None, [],
                   unreadable=reason, bytes=size)


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


def _read_jsonl(path: str, data: bytes, all_columns: bool = False) -> RawFile:
    raw = _read_jsonl_raw(path, data)
    if all_columns:
        _jsonl_columns(raw, data)
    return raw


def _read_jsonl_raw(path: str, data: bytes) -> RawFile:
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
    except pa.ArrowException:
        return _read_jsonl_by_line(path, data)
    lines = _nonblank_lines(data)
    if len(lines) != table.num_rows:
        return _read_jsonl_by_line(path, data)
    return RawFile(path, table, np.arange(1, table.num_rows + 1), lines)


def _jsonl_lines(data: bytes) -> Iterable[tuple[int, int, bytes]]:
    """(record number, line number, bytes) of each non-blank line."""
    record = 0
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if raw.strip():
            record += 1
            yield record, number, raw


def _read_jsonl_by_line(path: str, data: bytes) -> RawFile:
    """The slow, exact path for a file with a bad line somewhere: every line on its own."""
    objs, rows, lines, rejects = [], [], [], []
    for record, number, raw in _jsonl_lines(data):
        obj, reason = _parse_json_line(raw)
        if reason:
            rejects.append(_reject(path, record, number, None, reason))
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


def _parse_json_line(raw: bytes) -> tuple[object, str | None]:
    """One JSONL line parsed, or (None, why it cannot be)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, _utf8_reason(raw, exc)
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, f"malformed JSON ({exc.msg}, column {exc.colno})"


def _jsonl_columns(raw: RawFile, data: bytes) -> None:
    """Every field of every JSON-object line of a JSONL file, as `raw.columns`."""
    if _is_utf8(data):
        try:
            table = pajson.read_json(io.BytesIO(data), read_options=pajson.ReadOptions(
                block_size=min(max(len(data), 1 << 20), _JSON_BLOCK)))
        except pa.ArrowException:
            table = None
        lines = _nonblank_lines(data)
        if table is not None and len(lines) == table.num_rows:
            raw.columns, raw.column_lines = table, lines
            raw.column_rows = np.arange(1, table.num_rows + 1)
            return
    objs, rows, lines = [], [], []
    for record, number, line in _jsonl_lines(data):
        obj, reason = _parse_json_line(line)
        if reason is None and isinstance(obj, dict):
            objs.append(obj)
            rows.append(record)
            lines.append(number)
    raw.columns = _columns_from_objects(objs)
    raw.column_rows, raw.column_lines = np.asarray(rows, np.int64), np.asarray(lines, np.int64)


def _columns_from_objects(objs: list[dict]) -> pa.Table:
    """A table of every key of `objs` (JSON objects); a key whose values Arrow cannot hold in
    one type (e.g. numbers in some rows, text in others) becomes text (JSON for non-strings)."""
    names = list(dict.fromkeys(k for obj in objs for k in obj))
    columns = {}
    for name in names:
        values = [obj.get(name) for obj in objs]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            columns[name] = pa.array(
                [v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False)
                 for v in values], pa.string())
    if not columns:  # objects without keys: rows, but no columns
        return pa.table({"_": pa.nulls(len(objs))}).drop_columns(["_"])
    return pa.table(columns)


def _utf8_reason(raw: bytes, exc: UnicodeDecodeError) -> str:
    return (f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
            "re-encode the file as UTF-8")


def _read_json(path: str, data: bytes, all_columns: bool = False) -> RawFile:
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return _unreadable(path, f"not valid UTF-8 at line {line} (byte "
                                 f"0x{data[exc.start]:02x}); re-encode the file as UTF-8")
    except json.JSONDecodeError as exc:
        return _unreadable(path, f"malformed JSON at line {exc.lineno} column {exc.colno}: "
                                 f"{exc.msg}")
    except RecursionError:
        return _unreadable(path, "JSON nested too deeply")
    if isinstance(doc, dict):
        lists = [v for v in doc.values() if isinstance(v, list)]
        if len(lists) != 1:
            return _unreadable(path, "expected a JSON array of records, or an object holding "
                                     "exactly one array")
        doc = lists[0]
    if not isinstance(doc, list):
        return _unreadable(path, f"expected a JSON array of records, got {_json_type(doc)}")
    raw = _rows_to_file(path, doc)
    if all_columns:
        rows = [i for i, obj in enumerate(doc, start=1) if isinstance(obj, dict)]
        raw.columns = _columns_from_objects([doc[i - 1] for i in rows])
        raw.column_rows = np.asarray(rows, np.int64)
    return raw


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


def _read_csv(path: str, data: bytes, all_columns: bool = False) -> RawFile:
    rejects: list[dict] = []
    line_of = None  # original line number of each line of `data`, where lines were dropped
    if not _is_utf8(data):
        data, line_of, rejects = _drop_non_utf8_lines(path, data)
        if not data.strip():
            return _unreadable(path, rejects[0]["reason"] if rejects else "the file is empty")
    parsed = _csv_columnar(path, data) or _csv_by_record(path, data)
    if isinstance(parsed, str):
        return _unreadable(path, parsed)
    table, rows, lines, row_rejects = parsed
    if line_of is not None:
        lines = line_of[lines - 1]
        for r in row_rejects:
            r["line"] = int(line_of[r["line"] - 1])
    dup = table.schema.names
    twice = sorted({n for n in dup if dup.count(n) > 1})
    if twice:
        return _unreadable(path, f"the header names {', '.join(map(repr, twice))} more than "
                                 "once; give every column its own name")
    raw = _conform(path, table.select([n for n in table.column_names if n in RAW_SCHEMA.names]),
                   rows, lines)
    raw.rejects[:0] = rejects + row_rejects
    if all_columns:
        raw.columns, raw.column_rows, raw.column_lines = table, rows, lines
    return raw


def _csv_layout(data: bytes) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(first line, field count) of each non-empty CSV record, found column-wise (RFC 4180:
    a comma or newline inside double quotes belongs to the field), and where the first such
    record ends; None when the quotes do not balance."""
    buf = np.frombuffer(data, np.uint8)
    special = np.flatnonzero((buf == _QUOTE) | (buf == _COMMA) | (buf == _NEWLINE))
    chars = buf[special]
    # a doubled quote inside a quoted field toggles twice, so the parity stays right
    quoted = (np.cumsum(chars == _QUOTE) & 1).astype(bool)
    if len(quoted) and quoted[-1]:
        return None
    newlines = special[chars == _NEWLINE]
    ends = special[(chars == _NEWLINE) & ~quoted]
    if len(buf) and (not len(ends) or ends[-1] != len(buf) - 1):
        ends = np.append(ends, len(buf))
    starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)
    last = np.maximum(ends - 1, 0)
    length = ends - starts - ((ends > starts) & (buf[last] == _CR))
    commas = special[(chars == _COMMA) & ~quoted]
    fields = 1 + np.bincount(np.searchsorted(ends, commas), minlength=len(ends))[:len(ends)]
    filled = length > 0
    if not filled.any():
        return None
    first_line = np.searchsorted(newlines, starts[filled]) + 1
    return first_line.astype(np.int64), fields[filled], int(ends[filled][0])


def _csv_columnar(path: str, data: bytes
                  ) -> tuple[pa.Table, np.ndarray, np.ndarray, list[dict]] | str | None:
    """The fast path: Arrow reads the CSV, the layout numbers its rows; None when the two
    disagree (e.g. a quote inside an unquoted field), for the record-by-record path."""
    layout = _csv_layout(data)
    if layout is None:
        return None
    first_line, fields, header_end = layout
    names = _csv_header(data[:header_end])
    if names is None or len(names) != fields[0]:
        return None
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            parse_options=pacsv.ParseOptions(newlines_in_values=True,
                                             invalid_row_handler=lambda row: "skip"),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, null_values=[""],
                strings_can_be_null=True),
        )
    except pa.ArrowException:
        return None
    rows = np.arange(1, len(fields))
    valid = fields[1:] == fields[0]
    if table.num_rows != int(valid.sum()):
        return None
    lines = first_line[1:]
    rejects = [_reject(path, int(r), int(n), None, f"expected {fields[0]} columns, got {f}")
               for r, n, f in zip(rows[~valid], lines[~valid], fields[1:][~valid], strict=True)]
    return table, rows[valid], lines[valid], rejects


def _csv_header(head: bytes) -> list[str] | None:
    """The column names in `head` (up to the end of the first record), by the csv module."""
    try:
        return next((c for c in csv.reader(io.StringIO(head.decode("utf-8"), newline=""))
                     if c), None)
    except csv.Error:
        return None


def _csv_by_record(path: str, data: bytes
                   ) -> tuple[pa.Table, np.ndarray, np.ndarray, list[dict]] | str:
    """The slow, exact path for a CSV the columnar path cannot number: the csv module, record
    by record."""
    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    names: list[str] | None = None
    values: list[list[str]] = []
    rows, lines, rejects = [], [], []
    record, line = 0, 1
    try:
        for cells in reader:
            start, line = line, reader.line_num + 1
            if not cells:
                continue
            if names is None:
                names = cells
                continue
            record += 1
            if len(cells) != len(names):
                rejects.append(_reject(path, record, start, None,
                                       f"expected {len(names)} columns, got {len(cells)}"))
                continue
            values.append(cells)
            rows.append(record)
            lines.append(start)
    except csv.Error as exc:
        return f"unreadable CSV (line {reader.line_num}): {exc}"
    if names is None:
        return "the file is empty"
    columns = [pa.array([v[i] or None for v in values], pa.string()) for i in range(len(names))]
    table = pa.Table.from_arrays(columns, names=names)
    return table, np.asarray(rows, np.int64), np.asarray(lines, np.int64), rejects


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


def _read_parquet(path: str, data: bytes, all_columns: bool = False) -> RawFile:
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as exc:
        return _unreadable(path, f"unreadable Parquet: {exc}")
    names = table.column_names
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        return _unreadable(path, f"the columns {', '.join(map(repr, twice))} appear more than "
                                 "once")
    rows = np.arange(1, table.num_rows + 1)
    raw = _conform(path, table, rows, None)
    if all_columns and raw.unreadable is None:
        raw.columns, raw.column_rows = table, rows
    return raw


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
        elif f.name == RATING:
            columns[f.name] = _numbers(col, reject_rows)
        elif f.name in _TURN_KEYS and pa.types.is_string(col.type):
            columns[f.name] = _turns_from_json(f.name, col, reject_rows)
        else:
            try:
                columns[f.name] = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return _unreadable(path, f"column {f.name!r} has type {col.type}; expected "
                                         f"{f.type}")
    conformed = pa.table(columns, schema=RAW_SCHEMA).filter(pa.array(ok))
    return RawFile(path, conformed, rows[ok], None if lines is None else lines[ok], rejects)


def _numbers(col: pa.Array, reject_rows) -> pa.Array:
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        return col.cast(pa.float64())
    text = col.cast(pa.string()).to_pandas()
    present = (text.notna() & (text.str.strip() != "")).to_numpy()
    values = pd.to_numeric(text.where(present), errors="coerce").to_numpy(float)
    bad = present & ~np.isfinite(values)
    reject_rows(bad, RATING, (f"expected a number, got {v!r}" for v in text[bad]))
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
