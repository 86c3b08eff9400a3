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


@pytest.mark.parametrize("name", ["notes.txt", "data.jsonl.gz"])
def test_unsupported_extension_is_an_unreadable_file_not_a_row(tmp_path, name):
    path = tmp_path / name
    path.write_text("hello")
    raw = read(path)
    assert "unsupported file type" in raw.unreadable and raw.rejects == []
    assert raw.bytes == 5


def test_json_array_and_wrapped_object(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps([GOOD, {"instruction": "i", "output": "o"}]))
    b.write_text(json.dumps({"data": [GOOD]}))
    assert read(a).table.num_rows == 2
    assert read(b).table.column("prompt").to_pylist() == ["p"]


def test_json_malformed_is_an_unreadable_file_naming_the_line(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n{"prompt": "p",\n]')
    assert "malformed JSON at line 3" in read(path).unreadable


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


def test_csv_rfc4180_quotes_newlines_bom_and_crlf(tmp_path):
    path = tmp_path / "a.csv"
    frame = pd.DataFrame({"prompt": ["two\nlines", 'he said "hi"', "", "p4"],
                          "response": ["r1", "r2, with a comma", "r3", "r4"],
                          "label": ["harmless", "", "harmful", "harmless"]})
    path.write_bytes(b"\xef\xbb\xbf" + frame.to_csv(index=False, lineterminator="\r\n").encode())
    raw = read(path)
    assert raw.unreadable is None and raw.rejects == []
    assert raw.table.column("prompt").to_pylist() == ["two\nlines", 'he said "hi"', None, "p4"]
    assert raw.table.column("response").to_pylist()[1] == "r2, with a comma"
    assert raw.lines.tolist() == [2, 4, 5, 6] and raw.rows.tolist() == [1, 2, 3, 4]


def test_csv_wrong_column_count_names_its_line_after_a_multiline_field(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text('prompt,response\n"a\nb",r\nonly one\np,r\n')
    raw = read(path)
    (reject,) = raw.rejects
    assert (reject["row"], reject["line"]) == (2, 4)
    assert "expected 2 columns, got 1" in reject["reason"]
    assert raw.lines.tolist() == [2, 5]


@pytest.mark.parametrize("word", ["NULL", "NA", "nan", "n/a", "None", "null"])
def test_csv_null_like_words_are_text(tmp_path, word):
    path = tmp_path / "a.csv"
    path.write_text(f"prompt,response\nq,{word}\n")
    assert read(path).table.column("response").to_pylist() == [word]


def test_csv_quote_inside_a_field_falls_back_to_the_csv_module(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text('prompt,response\nsay 5" please,r\nq,r2\nbad\n')
    raw = read(path)
    assert raw.table.column("prompt").to_pylist() == ['say 5" please', "q"]
    assert raw.lines.tolist() == [2, 3]
    assert [(r["line"], r["row"]) for r in raw.rejects] == [(4, 3)]


def test_csv_duplicate_header_is_unreadable(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("prompt,response,prompt\na,b,c\n")
    assert "'prompt' more than once" in read(path).unreadable


def test_csv_cp1252_lines_are_rejected_with_a_reencode_hint(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes("prompt,response\ncafé,r\nq,r\n".encode("cp1252"))
    raw = read(path)
    assert raw.table.column("prompt").to_pylist() == ["q"] and raw.lines.tolist() == [3]
    (reject,) = raw.rejects
    assert reject["line"] == 2 and "re-encode the file as UTF-8" in reject["reason"]


def test_jsonl_with_bom_and_a_bad_line_keeps_the_first_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n{oops\n")
    raw = read(path)
    assert raw.table.column("prompt").to_pylist() == ["p"]
    assert [r["line"] for r in raw.rejects] == [2]


def test_all_columns_keeps_every_column_of_parsed_records(tmp_path):
    csv_path, jsonl_path, json_path = tmp_path / "a.csv", tmp_path / "a.jsonl", tmp_path / "a.json"
    csv_path.write_text("text,topic,rating\nhello,x,high\nbye,,3\n")
    jsonl_path.write_text('{"text": "a", "n": 1}\n{oops\n{"text": "b", "n": "two"}\n')
    json_path.write_text(json.dumps({"rows": [{"text": "a"}, 5, {"text": "c"}]}))
    raw = read_source_file(FS, str(csv_path), all_columns=True)
    assert raw.columns.column_names == ["text", "topic", "rating"]
    assert raw.columns.column("topic").to_pylist() == ["x", None]
    assert raw.column_rows.tolist() == [1, 2] and raw.table.num_rows == 1  # rating 'high'
    raw = read_source_file(FS, str(jsonl_path), all_columns=True)
    assert raw.columns.column("n").to_pylist() == ["1", "two"]
    assert raw.column_lines.tolist() == [1, 3]
    raw = read_source_file(FS, str(json_path), all_columns=True)
    assert raw.columns.column("text").to_pylist() == ["a", "c"]
    assert raw.column_rows.tolist() == [1, 3]


def test_unreadable_parquet_and_read_errors_are_unreadable_files(tmp_path, monkeypatch):
    path = tmp_path / "a.parquet"
    path.write_bytes(b"not parquet at all")
    assert "unreadable Parquet" in read(path).unreadable
    good = tmp_path / "b.jsonl"
    good.write_text(json.dumps(GOOD))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(FS, "open", refuse)
    assert "Permission denied" in read(good).unreadable


def test_source_listing_follows_a_symlinked_folder_once_and_lists_broken_links(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "a.jsonl").write_text("{}")
    src = tmp_path / "src"
    src.mkdir()
    (src / "linked").symlink_to(real)
    (src / "again").symlink_to(real)
    (src / "loop").symlink_to(src)
    (src / "dangling.jsonl").symlink_to(tmp_path / "nowhere")
    (src / "self.jsonl").symlink_to(src / "self.jsonl")
    _, paths = list_source_files(str(src))
    names = [p.rsplit("/", 2)[-2:] for p in paths]
    assert sum(n[1] == "a.jsonl" for n in names) == 1
    assert ["src", "dangling.jsonl"] in names and ["src", "self.jsonl"] in names
    for p in paths:
        if not p.endswith("a.jsonl"):
            assert "cannot read the file" in read(p).unreadable
