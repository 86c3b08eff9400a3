"""Plain tables for the command line: read a CSV, JSONL, JSON or Parquet file through the
ingest readers (same dialects, encodings and row-level rejects), take each row's text (its
conversation in any ingest format, or a text column), its label or rating, account for the
rows that cannot be used, and write the table back by extension, every input row kept."""

from __future__ import annotations

import json
import os
import posixpath
import secrets
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from crediflow.data.formats import NO_FORMAT, detect_formats, to_messages
from crediflow.data.readers import FORMATS, RawFile, read_source_file
from crediflow.data.schema import MESSAGES_COLUMN, REJECTED_REASON
from crediflow.data.texts import conversation_texts
from crediflow.errors import InputError, TooManyRejectsError

CONVERSATION_FIELDS = ("messages", "conversations", "instruction", "output", "prompt",
                       "response")
_SHOWN_REJECTS = 5


@dataclass
class PlainTable:
    """A file's columns as read, one row per record that could be parsed, and the records
    that could not be (`unparsed`: reject entries with file, row, line, field, reason)."""

    path: str
    columns: pa.Table
    rows: np.ndarray  # 1-based record number of each row
    lines: np.ndarray | None  # 1-based first line of each row, where the format has lines
    raw: RawFile  # the same file read the ingest way (canonical fields), for conversations
    unparsed: list[dict]

    @property
    def num_rows(self) -> int:
        """Rows that were parsed (unparsed records not counted)."""
        return self.columns.num_rows

    def where(self, i: int) -> str:
        """Where row `i` is in the file, as "line N" or "row N"."""
        return f"line {self.lines[i]}" if self.lines is not None else f"row {self.rows[i]}"


def _kind(path: str) -> str:
    kind = FORMATS.get(posixpath.splitext(path)[1].lower())
    if kind is None:
        raise InputError(f"unsupported file type; use one of {', '.join(sorted(FORMATS))}",
                         file=path)
    return kind


def check_output_path(path: str) -> None:
    """Refuse an output path whose type cannot be written, before any work is done."""
    _kind(path)
    if Path(path).is_dir():
        raise InputError("is a folder; give a file name for the output", file=path)


def read_table(path: str) -> PlainTable:
    """The whole file, every column kept, through the ingest readers."""
    _kind(path)
    target = Path(path)
    if target.is_dir():
        raise InputError("is a folder; give one file", file=path)
    if not target.exists():
        raise InputError("no such file", file=path)
    raw = read_source_file(fsspec.filesystem("file"), str(path), all_columns=True)
    if raw.unreadable is not None:
        raise InputError(raw.unreadable, file=path)
    if raw.columns is None:
        reason = raw.rejects[0]["reason"] if raw.rejects else "no rows"
        raise InputError(reason, file=path)
    parsed = set(raw.column_rows.tolist())
    unparsed = [r for r in raw.rejects if r["row"] is None or r["row"] not in parsed]
    if raw.columns.num_rows == 0 and not unparsed:
        raise InputError("the file has no rows", file=path)
    return PlainTable(str(path), raw.columns, raw.column_rows, raw.column_lines, raw, unparsed)


class RowRejects:
    """Which rows of a `PlainTable` cannot be used, with the field and the reason: the first
    reason a row gets stands."""

    def __init__(self, table: PlainTable) -> None:
        self.table = table
        self.reason = np.full(table.num_rows, None, dtype=object)
        self.field = np.full(table.num_rows, None, dtype=object)

    def add(self, mask: np.ndarray, field: str | None, reason: str | np.ndarray) -> None:
        """Reject the rows of `mask` not yet rejected, with one reason or one per row."""
        new = np.asarray(mask, bool) & (self.reason == None)  # noqa: E711 - element-wise
        reasons = reason[new] if isinstance(reason, np.ndarray) else reason
        self.reason[new] = reasons
        self.field[new] = field

    def add_at(self, idx: np.ndarray, fields: list[str | None], reasons: list[str]) -> None:
        """Reject rows `idx` (not yet rejected), each with its own field and reason."""
        idx = np.asarray(idx, np.int64)
        new = self.reason[idx] == None  # noqa: E711 - element-wise
        self.reason[idx[new]] = np.asarray(reasons, dtype=object)[new]
        self.field[idx[new]] = np.asarray(fields, dtype=object)[new]

    @property
    def usable(self) -> np.ndarray:
        """(rows,) bool: rows with no reject."""
        return self.reason == None  # noqa: E711 - element-wise

    def check(self, max_fraction: float) -> list[str]:
        """Report lines (count and the first few rejects); `TooManyRejectsError` when the
        rejected share of the file's records passes `max_fraction` or no row is left."""
        t = self.table
        bad = np.flatnonzero(~self.usable)
        total = t.num_rows + len(t.unparsed)
        count = len(bad) + len(t.unparsed)
        if not count:
            return []
        entries = [(r["line"] if r["line"] is not None else r["row"] or 0,
                    _where(r["line"], r["row"]), r["field"], r["reason"]) for r in t.unparsed]
        order = t.lines if t.lines is not None else t.rows
        entries += [(int(order[i]), t.where(int(i)), self.field[i], self.reason[i])
                    for i in bad[:_SHOWN_REJECTS]]
        entries.sort(key=lambda e: e[0])
        fraction = count / total
        lines = [f"rejected {count} of {total} rows of {t.path} ({fraction:.1%}); "
                 + ("first rejects:" if count > 1 else "the reject:")]
        lines += [f"  {where}" + (f", field {fld!r}" if fld else "") + f": {reason}"
                  for _, where, fld, reason in entries[:_SHOWN_REJECTS]]
        if fraction > max_fraction or count == total:
            raise TooManyRejectsError(
                "\n".join([*lines, f"that is more than --max-reject-fraction "
                                   f"({max_fraction:.1%}); nothing was done"]))
        return lines


def _where(line: int | None, row: int | None) -> str:
    return f"line {line}" if line is not None else (f"row {row}" if row is not None else
                                                    "whole file")


def has_conversations(table: PlainTable) -> bool:
    """Whether the table has a field of an ingest conversation format."""
    return bool(set(CONVERSATION_FIELDS) & set(table.columns.column_names))


def column(table: PlainTable, name: str) -> pa.Array:
    """One column; an InputError naming the columns there are if it is missing."""
    if name not in table.columns.column_names:
        raise InputError(f"no column {name!r}; the file has "
                         f"{', '.join(table.columns.column_names) or 'no columns'}",
                         file=table.path, field=name)
    return table.columns.column(name).combine_chunks()


def _as_text(table: PlainTable, name: str) -> pa.Array:
    values = column(table, name)
    try:
        return values.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise InputError(f"the column holds {values.type} values, not text", file=table.path,
                         field=name) from None


def column_texts(table: PlainTable, name: str, rejects: RowRejects) -> np.ndarray:
    """The text of each row from column `name`; blank or missing text is rejected."""
    text = _as_text(table, name)
    blank = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0), True)
    rejects.add(blank.to_numpy(zero_copy_only=False), name, "empty text")
    return np.asarray(text.to_numpy(zero_copy_only=False), dtype=object)


def conversation_column_texts(table: PlainTable, rejects: RowRejects) -> np.ndarray:
    """The text of each row read as an ingest record (user and assistant turns); rows that
    do not make a conversation are rejected with the ingest reason."""
    raw = table.raw
    texts = np.full(table.num_rows, None, dtype=object)
    at = np.searchsorted(table.rows, raw.rows)
    found = np.zeros(table.num_rows, bool)
    found[at] = True
    if not found.all():
        by_row = {r["row"]: r for r in raw.rejects if r["row"] is not None}
        missing = np.flatnonzero(~found)
        entries = [by_row.get(int(table.rows[i]), {"field": None, "reason": "unreadable row"})
                   for i in missing]
        rejects.add_at(missing, [r["field"] for r in entries], [r["reason"] for r in entries])
    formats = detect_formats(raw.table)
    none = formats == NO_FORMAT
    no_conversation = np.zeros(table.num_rows, bool)
    no_conversation[at[none]] = True
    rejects.add(no_conversation, MESSAGES_COLUMN, "no conversation: expected messages, "
                "conversations, instruction/output or prompt/response")
    known = np.flatnonzero(~none)
    if len(known):
        messages = to_messages(raw.table.take(pa.array(known)), formats[known])
        texts[at[known]] = conversation_texts(messages)
    length = pc.utf8_length(pc.utf8_trim_whitespace(pa.array(texts, pa.string())))
    blank = pc.fill_null(pc.equal(length, 0), True).to_numpy(zero_copy_only=False)
    rejects.add(blank, MESSAGES_COLUMN, "empty text")
    return texts


def column_labels(table: PlainTable, name: str) -> np.ndarray:
    """Each row's label as text; missing or blank means unlabelled (None), never a class ''."""
    text = pc.utf8_trim_whitespace(_as_text(table, name))
    blank = pc.fill_null(pc.equal(pc.utf8_length(text), 0), True)
    labels = pc.if_else(blank, pa.scalar(None, pa.string()), text)
    return np.asarray(labels.to_numpy(zero_copy_only=False), dtype=object)


def column_numbers(table: PlainTable, name: str, rejects: RowRejects) -> np.ndarray:
    """Each row's number in column `name` (NaN where missing); text that is not a number is
    rejected."""
    values = column(table, name)
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        return pc.fill_null(values.cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False)
    text = pd.Series(_as_text(table, name).to_pylist(), dtype=object)
    present = (text.notna() & (text.str.strip() != "")).to_numpy(bool)
    numbers = pd.to_numeric(text.where(present), errors="coerce").to_numpy(float)
    bad = present & ~np.isfinite(numbers)
    reasons = np.full(len(text), None, dtype=object)
    reasons[bad] = [f"expected a number, got {v!r:.40}" for v in text[bad]]
    rejects.add(bad, name, reasons)
    return np.where(bad, np.nan, numbers)


def output_table(table: PlainTable, rejects: RowRejects, added: dict[str, pa.Array]) -> pa.Table:
    """Every input row (unparsed records as empty rows), `REJECTED_REASON` (null for used
    rows) and the `added` columns (one value per used row; null on rejected rows)."""
    usable = rejects.usable
    out = table.columns.drop_columns([c for c in (REJECTED_REASON, *added)
                                      if c in table.columns.column_names])
    reason = np.where(rejects.field == None, rejects.reason,  # noqa: E711 - element-wise
                      rejects.field.astype(str) + ": " + rejects.reason.astype(str))
    out = out.append_column(REJECTED_REASON, pa.array(np.where(usable, None, reason),
                                                      pa.string()))
    used = np.flatnonzero(usable)
    for name, values in added.items():
        # scatter the used rows' values into a full-length column, nulls elsewhere
        positions = np.full(table.num_rows, len(values), np.int64)
        positions[used] = np.arange(len(used))
        padded = pa.concat_arrays([values, pa.nulls(1, values.type)])
        out = out.append_column(name, padded.take(pa.array(positions)))
    if not table.unparsed:
        return out
    empty = {f.name: pa.nulls(len(table.unparsed), f.type) for f in out.schema}
    empty[REJECTED_REASON] = pa.array(
        [_where(r["line"], r["row"]) + (f", field {r['field']}" if r["field"] else "")
         + f": {r['reason']}" for r in table.unparsed], pa.string())
    order = table.lines if table.lines is not None else table.rows
    keys = np.concatenate([order, [r["line"] if r["line"] is not None else r["row"] or 0
                                   for r in table.unparsed]])
    merged = pa.concat_tables([out, pa.table(empty, schema=out.schema)])
    return merged.take(pa.array(np.argsort(keys, kind="stable")))


def write_table(table: pa.Table, path: str) -> None:
    """Write by extension (CSV, JSONL, JSON, Parquet) through a temporary file and a rename;
    the file's mode follows the umask. CSV holds nested columns as JSON text."""
    kind = _kind(path)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{secrets.token_hex(6)}"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        if kind == "parquet":
            pq.write_table(table, tmp)
        elif kind == "csv":
            pacsv.write_csv(_nested_as_json(table), tmp)
        else:
            rows = table.to_pylist()
            with open(tmp, "w", encoding="utf-8") as fh:
                if kind == "json":
                    json.dump(rows, fh, ensure_ascii=False, default=str)
                else:
                    fh.writelines(json.dumps(r, ensure_ascii=False, default=str) + "\n"
                                  for r in rows)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _nested_as_json(table: pa.Table) -> pa.Table:
    """Lists, structs and maps as JSON text (CSV cells hold no nesting)."""
    for i, f in enumerate(table.schema):
        if pa.types.is_nested(f.type):
            text = [None if v is None else json.dumps(v, ensure_ascii=False, default=str)
                    for v in table.column(i).to_pylist()]
            table = table.set_column(i, f.name, pa.array(text, pa.string()))
    return table
