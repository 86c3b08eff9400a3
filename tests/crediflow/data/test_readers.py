import json

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crediflow.data.readers import list_source_files, read_source_file, sanitize_row
from crediflow.errors import InputError

FS = fsspec.filesystem("file")
GOOD = {"prompt": "p", "response": "r", "label": "harmless"}


def read(path):
    return read_source_file(FS, str(path))


def test_jsonl_fast_path_keeps_line_numbers_across_blank_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps({**GOOD, "prompt": "q"}) + "\n")
    raw = read(path)
    assert raw.table.column("prompt").to_pylist() == ["p", "q"]
    assert raw.lines.tolist() == [1, 3]
    assert raw.rejects == []


def test_jsonl_malformed_line_is_rejected_with_its_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{\"prompt\": \"oops\n" + json.dumps(GOOD) + "\n")
    raw = read(path)
    assert raw.table.num_rows == 2
    (reject,) = raw.rejects
    assert reject["line"] == 2 and reject["file"] == str(path)
    assert "malformed JSON" in reject["reason"]


def test_jsonl_wrong_type_names_the_field(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "response": 5}) + "\n")
    raw = read(path)
    (reject,) = raw.rejects
    assert (reject["line"], reject["field"]) == (2, "response")
    assert "expected a string, got number" in reject["reason"]


def test_jsonl_non_utf8_line_is_rejected_others_kept(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b'\n{"prompt": "caf\xe9", "response": "r"}\n')
    raw = read(path)
    assert raw.table.num_rows == 1
    (reject,) = raw.rejects
    assert reject["line"] == 2 and "not valid UTF-8" in reject["reason"]


def test_empty_file_is_one_reject(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n  \n")
    raw = read(path)
    assert raw.table.num_rows == 0
    assert raw.rejects[0]["reason"] == "the file is empty"


def test_unsupported_extension_is_rejected_not_ignored(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    assert "unsupported file type .txt" in read(path).rejects[0]["reason"]


def test_json_array_and_wrapped_object(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps([GOOD, {"instruction": "i", "output": "o"}]))
    b.write_text(json.dumps({"data": [GOOD]}))
    assert read(a).table.num_rows == 2
    assert read(b).table.column("prompt").to_pylist() == ["p"]


def test_json_malformed_names_line(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n{"prompt": "p",\n]')
    assert "malformed JSON at line 3" in read(path).rejects[0]["reason"]


def test_csv_with_rating_text_and_messages_as_json(tmp_path):
    path = tmp_path / "a.csv"
    msgs = json.dumps([{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}])
    pd.DataFrame({"messages": [msgs, msgs, "[{]"], "rating": ["7", "high", "3"],
                  "label": ["x", "y", "z"]}).to_csv(path, index=False)
    raw = read(path)
    assert raw.table.num_rows == 1
    assert raw.table.column("rating").to_pylist() == [7.0]
    assert raw.table.column("messages").to_pylist()[0][1] == {"role": "assistant", "content": "a"}
    fields = sorted((r["line"], r["field"]) for r in raw.rejects)
    assert fields == [(3, "rating"), (4, "messages")]


def test_parquet_columns_are_conformed(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"prompt": ["p"], "response": ["r"], "rating": [4], "id": [12]}), path)
    raw = read(path)
    assert raw.table.column("id").to_pylist() == ["12"]
    assert raw.table.column("rating").to_pylist() == [4.0]
    assert raw.lines is None and raw.rows.tolist() == [1]


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        list_source_files(str(tmp_path / "nowhere"))


def test_empty_source_folder_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="holds no files"):
        list_source_files(str(tmp_path))


def test_source_listing_skips_hidden_files(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "x.jsonl").write_text("{}")
    _, paths = list_source_files(str(tmp_path))
    assert [p.rsplit("/", 1)[1] for p in paths] == ["a.jsonl"]


@pytest.mark.parametrize(
    ("obj", "field", "reason"),
    [
        ([1], None, "expected a JSON object"),
        ({"rating": "abc"}, "rating", "expected a number"),
        ({"rating": True}, "rating", "expected a number"),
        ({"messages": "hi"}, "messages", "expected an array"),
        ({"messages": [{"role": "user"}]}, "messages[0].content", "got missing"),
        ({"conversations": [{"from": "human", "value": 1}]}, "conversations[0].value", "number"),
        ({"label": ["a"]}, "label", "got array"),
    ],
)
def test_sanitize_row_names_field_and_reason(obj, field, reason):
    row, problem = sanitize_row(obj)
    assert row is None and problem[0] == field and reason in problem[1]


def test_sanitize_row_accepts_numeric_ids_labels_and_rating_strings():
    row, problem = sanitize_row({"id": 3, "label": 1, "rating": "4.5", "extra": {"x": 1}})
    assert problem is None and row == {"id": "3", "label": "1", "rating": 4.5}
    assert np.isfinite(row["rating"])
