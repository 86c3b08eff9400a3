"""Ingest: every source file to canonical records, with exact duplicates dropped and every
rejected row accounted for."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from crediflow.data.contract import check_contract, contract_frame, contract_rules
from crediflow.data.formats import (
    FORMAT_NAMES,
    NO_FORMAT,
    detect_formats,
    hash_strings,
    normalized_text,
    to_messages,
)
from crediflow.data.readers import RawFile, list_source_files, read_source_file
from crediflow.data.schema import (
    GROUP,
    ID,
    LABEL,
    MESSAGES_COLUMN,
    RATING,
    RECORD_SCHEMA,
    REJECT_SCHEMA,
    SOURCE,
)
from crediflow.errors import InputError, TooManyRejectsError


@dataclass
class IngestResult:
    """Canonical records, rejected rows, and the numbers that describe the run."""

    records: pa.Table
    rejected: pa.Table
    metrics: dict
    validation: dict


@dataclass
class _Origin:
    """Where each row came from, aligned with a table's rows."""

    file: np.ndarray  # index into the list of paths
    row: np.ndarray
    line: np.ndarray  # -1 where the format has no lines

    def take(self, idx: np.ndarray) -> _Origin:
        return _Origin(self.file[idx], self.row[idx], self.line[idx])

    def rejects(self, idx: np.ndarray, paths: Sequence[str], field: str,
                reasons: Sequence[str]) -> list[dict]:
        return [
            {"row": int(self.row[i]), "file": paths[self.file[i]],
             "line": int(self.line[i]) if self.line[i] >= 0 else None,
             "field": field, "reason": reason}
            for i, reason in zip(idx, reasons, strict=True)
        ]


def ingest(
    source: str,
    *,
    classes: Sequence[str] | None = None,
    rating_range: Sequence[float] | None = None,
    max_reject_fraction: float = 0.05,
    skip_unreadable_files: bool = False,
) -> IngestResult:
    """Read every file under `source`, map it to canonical records and validate them.

    A file that cannot be read at all (an unsupported type, a broken JSON document or Parquet
    file, a dangling link, no permission) raises `InputError` naming it; with
    `skip_unreadable_files` it is left out and listed in `metrics["skipped_files"]` (file,
    bytes, reason) instead. Raises `TooManyRejectsError` when the rejected share of rows
    passes `max_reject_fraction`.
    """
    fs, paths = list_source_files(source)
    files = [read_source_file(fs, path) for path in paths]
    skipped = _unreadable_files(files, skip_unreadable_files)
    files = [f for f in files if f.unreadable is None]
    paths = [f.path for f in files]  # URLs for remote files
    rejects = [r for f in files for r in f.rejects]
    batch, record_key = _canonical(files, paths, rejects)

    exact = record_key.to_pandas().duplicated(keep="first").to_numpy()
    n_duplicates = int(exact.sum())
    batch = batch.take(np.flatnonzero(~exact))
    batch = batch.take(_id_clashes_rejected(batch, paths, rejects))

    frame = contract_frame(batch.records)
    contract = check_contract(frame, contract_rules(classes, rating_range))
    bad = np.zeros(batch.records.num_rows, bool)
    for rule, idx in contract.failures:
        idx = idx[~bad[idx]]  # one reject per row: the first rule it breaks
        values = frame[rule.column].to_numpy()[idx]
        rejects += batch.origin.rejects(idx, paths, rule.field, [rule.reason(v) for v in values])
        bad[idx] = True
    batch = batch.take(np.flatnonzero(~bad))

    rejected = pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA).sort_by(
        [("file", "ascending"), ("row", "ascending")])
    n_read = batch.records.num_rows + n_duplicates + rejected.num_rows
    fraction = rejected.num_rows / n_read if n_read else 1.0
    metrics = {
        "files": len(paths),
        "rows_read": n_read,
        "rows_out": batch.records.num_rows,
        "rejected": rejected.num_rows,
        "reject_fraction": round(fraction, 6),
        "duplicates_dropped": n_duplicates,
        **_counts(batch, rejects),
        "rows_breaking_contract": int(bad.sum()),
        "skipped_files": skipped,
    }
    if batch.records.num_rows == 0 or fraction > max_reject_fraction:
        raise TooManyRejectsError(_too_many(rejected, fraction, max_reject_fraction, source))
    return IngestResult(batch.records, rejected, metrics, contract.summary)


@dataclass
class _Batch:
    """Records with each row's source format and origin, kept aligned."""

    records: pa.Table
    formats: np.ndarray
    origin: _Origin

    def take(self, idx: np.ndarray) -> _Batch:
        return _Batch(self.records.take(pa.array(idx, pa.int64())), self.formats[idx],
                      self.origin.take(idx))


def _canonical(files: Sequence[RawFile], paths: list[str],
               rejects: list[dict]) -> tuple[_Batch, pa.Array]:
    """Every row with a conversation as a canonical record (rows without one go to
    `rejects`), and each record's content key (everything but its id)."""
    raw = pa.concat_tables([f.table for f in files])
    origin = _Origin(
        np.repeat(np.arange(len(files)), [f.table.num_rows for f in files]),
        np.concatenate([f.rows for f in files]),
        np.concatenate([f.lines if f.lines is not None else np.full(f.table.num_rows, -1)
                        for f in files]),
    )
    formats = detect_formats(raw)
    unknown = np.flatnonzero(formats == NO_FORMAT)
    rejects += origin.rejects(
        unknown, paths, MESSAGES_COLUMN,
        ["no conversation: expected messages, conversations, instruction/output or "
         "prompt/response"] * len(unknown),
    )
    known = np.flatnonzero(formats != NO_FORMAT)
    raw, formats, origin = raw.take(pa.array(known)), formats[known], origin.take(known)
    messages = to_messages(raw, formats)
    label, group = _blank_to_null(raw.column(LABEL)), _blank_to_null(raw.column(GROUP))
    rating = raw.column(RATING).combine_chunks()
    # a record's key covers everything but its id: equal keys are exact duplicates
    record_key = hash_strings(pc.binary_join_element_wise(
        normalized_text(messages),
        *(pc.fill_null(c.cast(pa.string()), "") for c in (label, rating, group)),
        "\x1d",
    ))
    given_id = pc.utf8_trim_whitespace(raw.column(ID).combine_chunks())
    records = pa.table(
        {
            ID: pc.if_else(pc.fill_null(pc.utf8_length(given_id), 0).cast(pa.bool_()),
                           given_id, record_key),
            MESSAGES_COLUMN: messages,
            LABEL: label,
            RATING: rating,
            GROUP: group,
            SOURCE: pa.array(np.asarray(paths, dtype=object)[origin.file], pa.string()),
        },
        schema=RECORD_SCHEMA,
    )
    return _Batch(records, formats, origin), record_key


def _id_clashes_rejected(batch: _Batch, paths: list[str], rejects: list[dict]) -> np.ndarray:
    """Rows to keep: the same id on different content keeps its first row; later ones go to
    `rejects`, naming where the id was first seen."""
    ids = batch.records.column(ID).to_pandas()
    clash = np.flatnonzero(ids.duplicated(keep="first").to_numpy())
    first = ids.drop_duplicates(keep="first")
    first_at = pd.Series(np.flatnonzero(~ids.duplicated(keep="first").to_numpy()), index=first)
    rejects += batch.origin.rejects(
        clash, paths, ID,
        [f"duplicate id {ids.iat[i]!r} "
         f"(first seen in {_where(batch.origin, paths, first_at[ids.iat[i]])})" for i in clash],
    )
    return np.setdiff1d(np.arange(batch.records.num_rows), clash)


def _counts(batch: _Batch, rejects: list[dict]) -> dict:
    """Rows per source format and per label, and the most common reject reasons."""
    formats = {FORMAT_NAMES[c]: int(n)
               for c, n in zip(*np.unique(batch.formats, return_counts=True), strict=True)}
    labels = (Counter(batch.records.column(LABEL).to_pylist())
              if batch.records.num_rows else Counter())
    reasons = Counter(f"{r['field'] or 'row'}: {r['reason'].split(' (')[0]}" for r in rejects)
    return {"formats": formats, "labels": {str(k): v for k, v in labels.items()},
            "reject_reasons": dict(reasons.most_common(10))}


def _unreadable_files(files: Sequence[RawFile], skip: bool) -> list[dict]:
    """The files that could not be read, as metrics entries; an InputError unless `skip`."""
    bad = [f for f in files if f.unreadable is not None]
    if bad and not skip:
        more = f" ({len(bad) - 1} more unreadable file(s) after this one)" if len(bad) > 1 else ""
        raise InputError(f"cannot read this file: {bad[0].unreadable}{more}; fix or remove it, "
                         "or set ingest.skip_unreadable_files to list such files in the "
                         "metrics and go on", file=bad[0].path)
    if bad and len(bad) == len(files):
        raise InputError(f"no file of the source could be read (first: {bad[0].unreadable})",
                         file=bad[0].path)
    return [{"file": f.path, "bytes": f.bytes, "reason": f.unreadable} for f in bad]


def _blank_to_null(column: pa.ChunkedArray) -> pa.Array:
    """Trimmed text; blank text is missing (an unlabelled row, not a class '')."""
    text = pc.utf8_trim_whitespace(column.combine_chunks())
    return pc.if_else(pc.equal(pc.utf8_length(text), 0), pa.scalar(None, pa.string()), text)


def _where(origin: _Origin, paths: Sequence[str], i: int) -> str:
    line = origin.line[i]
    return f"{paths[origin.file[i]]} " + (f"line {line}" if line >= 0 else f"row {origin.row[i]}")


def _too_many(rejected: pa.Table, fraction: float, limit: float, source: str) -> str:
    lines = [
        f"ingest rejected {rejected.num_rows} row(s) of {source} ({fraction:.1%}), more than "
        f"ingest.max_reject_fraction ({limit:.1%}); nothing was written. First rejects:"
    ]
    for r in rejected.slice(0, 10).to_pylist():
        where = f"line {r['line']}" if r["line"] is not None else (
            f"row {r['row']}" if r["row"] is not None else "whole file")
        field = f", field {r['field']!r}" if r["field"] else ""
        lines.append(f"  {r['file']} {where}{field}: {r['reason']}")
    return "\n".join(lines)
