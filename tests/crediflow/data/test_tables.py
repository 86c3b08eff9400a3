"""Plain tables for the command line, read through the ingest readers."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crediflow.data.schema import REJECTED_REASON
from crediflow.data.tables import (
    RowRejects,
    check_output_path,
    column_labels,
    column_numbers,
    column_texts,
    conversation_column_texts,
    output_table,
    read_table,
    write_table,
)
from crediflow.errors import InputError, TooManyRejectsError


def test_rfc4180_csv_with_bom_crlf_quoted_newlines_and_null_words(tmp_path):
    frame = pd.DataFrame({"text": ["two\nlines", 'said "hi", twice', "NULL", "", "n/a"],
                          "topic": ["a", "", "b", "a", "NA"]})
    path = tmp_path / "t.csv"
    path.write_bytes(b"\xef\xbb\xbf" + frame.to_csv(index=False, lineterminator="\r\n").encode())
    table = read_table(str(path))
    assert table.columns.column_names == ["text", "topic"]
    rejects = RowRejects(table)
    texts = column_texts(table, "text", rejects)
    assert texts[:3].tolist() == ["two\nlines", 'said "hi", twice', "NULL"]
    assert column_labels(table, "topic").tolist() == ["a", None, "b", "a", "NA"]
    assert rejects.usable.tolist() == [True, True, True, False, True]
    lines = rejects.check(0.5)
    assert lines[0].startswith("rejected 1 of 5 rows") and "line 6, field 'text'" in lines[1]


def test_past_the_limit_no_row_is_used(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\n,a\n \nok,b\n")
    table = read_table(str(path))
    rejects = RowRejects(table)
    column_texts(table, "text", rejects)
    with pytest.raises(TooManyRejectsError, match=r"rejected 2 of 3 rows") as err:
        rejects.check(0.05)
    assert "line 3: expected 2 columns, got 1" in str(err.value)
    assert "line 2, field 'text': empty text" in str(err.value)


def test_cp1252_is_rejected_with_the_ingest_hint(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("text,label\ncafé,a\ntea,b\n".encode("cp1252"))
    table = read_table(str(path))
    assert table.columns.column("text").to_pylist() == ["tea"]
    (unparsed,) = table.unparsed
    assert unparsed["line"] == 2 and "re-encode the file as UTF-8" in unparsed["reason"]


def test_json_object_holding_one_array(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"data": [{"text": "a", "label": 1}, {"text": "b"}]}))
    table = read_table(str(path))
    assert column_labels(table, "label").tolist() == ["1", None]


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p.mkdir(), "is a folder"),
    (lambda p: p.write_text("a,a\n1,2\n"), "more than once"),
    (lambda p: None, "no such file"),
    (lambda p: p.write_text(""), "the file is empty"),
])
def test_unusable_files_are_input_errors(tmp_path, make, message):
    path = tmp_path / "t.csv"
    make(path)
    with pytest.raises(InputError, match=message):
        read_table(str(path))


def test_ratings_that_are_not_numbers_are_rejected(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,score\na,3\nb,high\nc,\n")
    table = read_table(str(path))
    rejects = RowRejects(table)
    ratings = column_numbers(table, "score", rejects)
    assert ratings[0] == 3 and np.isnan(ratings[1:]).all()
    assert rejects.reason.tolist() == [None, "expected a number, got 'high'", None]


def test_conversations_are_read_the_ingest_way(tmp_path):
    path = tmp_path / "t.jsonl"
    rows = [{"prompt": "p1", "response": "NULL"}, {"text": "no conversation"},
            {"prompt": "p3", "response": 7}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    table = read_table(str(path))
    rejects = RowRejects(table)
    texts = conversation_column_texts(table, rejects)
    assert texts[0] == "p1\nNULL"
    assert rejects.field.tolist() == [None, "messages", "response"]
    assert [r["line"] for r in table.unparsed] == [4]


def test_output_keeps_every_row_and_marks_the_rejected(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a"}\n{oops\n{"text": ""}\n{"text": "c"}\n')
    table = read_table(str(path))
    rejects = RowRejects(table)
    column_texts(table, "text", rejects)
    out = output_table(table, rejects, {"score": pa.array([0.5, 0.7])})
    assert out.column("text").to_pylist() == ["a", None, "", "c"]
    assert out.column("score").to_pylist() == [0.5, None, None, 0.7]
    reasons = out.column(REJECTED_REASON).to_pylist()
    assert reasons[0] is None and reasons[3] is None
    assert reasons[1].startswith("line 2: malformed JSON") and reasons[2] == "text: empty text"


def test_csv_output_writes_nested_columns_as_json_and_follows_the_umask(tmp_path):
    table = pa.table({"messages": [[{"role": "user", "content": "q"}]], "n": [1]})
    old = os.umask(0o022)
    try:
        write_table(table, str(tmp_path / "out.csv"))
        write_table(table, str(tmp_path / "out.parquet"))
    finally:
        os.umask(old)
    out = pd.read_csv(tmp_path / "out.csv")
    assert json.loads(out.loc[0, "messages"]) == [{"role": "user", "content": "q"}]
    assert stat.S_IMODE((tmp_path / "out.csv").stat().st_mode) == 0o644
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_output_path_is_checked_before_the_work(tmp_path):
    with pytest.raises(InputError, match="unsupported file type"):
        check_output_path(str(tmp_path / "out.txt"))
