import pytest

from crediflow.errors import InputError, TooManyRejectsError
from crediflow.ingest.ingest import ingest

CLASSES = ["harmless", "harmful"]


def run(src, **kw):
    kw.setdefault("classes", CLASSES)
    kw.setdefault("max_reject_fraction", 1.0)
    return ingest(str(src), **kw)


def good_rows(chat, n=20):
    return [chat(f"question {i}", f"answer {i}", label=CLASSES[i % 2]) for i in range(n)]


def only_reject(result):
    (reject,) = result.rejected.to_pylist()
    return reject


def test_all_formats_land_in_one_canonical_table(write_jsonl, chat, tmp_path):
    write_jsonl([chat("a", "b", label="harmless", id="x1"),
                 {"prompt": "p", "response": "r", "label": "harmful", "rating": 3},
                 {"instruction": "i", "input": "", "output": "o", "label": "harmless"},
                 {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
                  "label": "harmless", "group": "g1"}])
    result = run(tmp_path / "src")
    records = result.records.to_pylist()
    assert [r["label"] for r in records] == ["harmless", "harmful", "harmless", "harmless"]
    assert records[0]["id"] == "x1" and len(records[1]["id"]) == 32
    assert records[1]["rating"] == 3.0 and records[3]["group"] == "g1"
    assert all(r["source"].endswith("data.jsonl") for r in records)
    assert result.metrics["formats"] == {"messages": 1, "sharegpt": 1, "alpaca": 1,
                                         "prompt_response": 1}
    assert result.rejected.num_rows == 0


def test_ids_are_stable_across_runs_and_files(write_jsonl, chat, tmp_path):
    rows = [chat("same", "text", label="harmless")]
    write_jsonl(rows, "a.jsonl", tmp_path / "one")
    write_jsonl(rows, "b.jsonl", tmp_path / "two")
    assert run(tmp_path / "one").records["id"] == run(tmp_path / "two").records["id"]


def test_exact_duplicates_are_dropped_and_counted(write_jsonl, chat, tmp_path):
    row = chat("q", "a", label="harmless")
    write_jsonl([row, row, {**row, "id": "other"}, chat("q", "a", label="harmful")])
    result = run(tmp_path / "src")
    assert result.metrics["duplicates_dropped"] == 2
    assert result.records.num_rows == 2  # the harmful copy is a different record


def test_malformed_json_line(write_jsonl, chat, tmp_path):
    write_jsonl([*good_rows(chat), '{"messages": [}'])
    reject = only_reject(run(tmp_path / "src"))
    assert reject["line"] == 21 and reject["file"].endswith("data.jsonl")
    assert "malformed JSON" in reject["reason"]


def test_missing_field(write_jsonl, chat, tmp_path):
    write_jsonl([*good_rows(chat), {"prompt": "only a prompt", "label": "harmless"}])
    reject = only_reject(run(tmp_path / "src"))
    assert (reject["line"], reject["field"]) == (21, "messages.content")
    assert "empty content" in reject["reason"]


def test_no_conversation_field(write_jsonl, chat, tmp_path):
    write_jsonl([*good_rows(chat), {"text": "not a known format", "label": "harmless"}])
    reject = only_reject(run(tmp_path / "src"))
    assert reject["field"] == "messages" and "no conversation" in reject["reason"]


def test_wrong_type(write_jsonl, chat, tmp_path):
    write_jsonl([*good_rows(chat), chat("q", "a", label="harmless", rating="very good")])
    reject = only_reject(run(tmp_path / "src"))
    assert (reject["line"], reject["field"]) == (21, "rating")


def test_unknown_role(write_jsonl, chat, tmp_path):
    row = chat("q", "a", label="harmless")
    row["messages"][0]["role"] = "robot"
    write_jsonl([*good_rows(chat), row])
    reject = only_reject(run(tmp_path / "src"))
    assert reject["field"] == "messages.role" and "'robot'" in reject["reason"]


def test_no_turns(write_jsonl, chat, tmp_path):
    write_jsonl([*good_rows(chat), {"messages": [], "label": "harmless"}])
    assert only_reject(run(tmp_path / "src"))["reason"] == "the conversation has no turns"


def test_no_assistant_turn(write_jsonl, chat, tmp_path):
    write_jsonl([*good_rows(chat), {"messages": [{"role": "user", "content": "q"}],
                                    "label": "harmless"}])
    assert "no assistant turn" in only_reject(run(tmp_path / "src"))["reason"]


def test_unknown_label(write_jsonl, chat, tmp_path):
    write_jsonl([*good_rows(chat), chat("q", "a", label="spicy")])
    reject = only_reject(run(tmp_path / "src"))
    assert (reject["line"], reject["field"]) == (21, "label")
    assert "unknown label 'spicy'" in reject["reason"]


def test_rating_out_of_range(write_jsonl, chat, tmp_path):
    write_jsonl([*good_rows(chat), chat("q", "a", label="harmless", rating=11)])
    reject = only_reject(run(tmp_path / "src", rating_range=[1, 10]))
    assert reject["field"] == "rating" and "outside [1, 10]" in reject["reason"]


def test_duplicate_ids_keep_the_first(write_jsonl, chat, tmp_path):
    write_jsonl([chat("q1", "a", label="harmless", id="7"), *good_rows(chat),
                 chat("q2", "a", label="harmless", id="7")])
    result = run(tmp_path / "src")
    reject = only_reject(result)
    assert (reject["line"], reject["field"]) == (22, "id")
    assert "first seen in" in reject["reason"] and "line 1" in reject["reason"]
    kept = [r for r in result.records.to_pylist() if r["id"] == "7"]
    assert kept[0]["messages"][0]["content"] == "q1"


def test_empty_file(write_jsonl, chat, tmp_path):
    write_jsonl(good_rows(chat))
    (tmp_path / "src" / "empty.jsonl").write_text("")
    reject = only_reject(run(tmp_path / "src"))
    assert reject["file"].endswith("empty.jsonl") and reject["reason"] == "the file is empty"


def test_non_utf8_file(write_jsonl, chat, tmp_path):
    write_jsonl(good_rows(chat))
    (tmp_path / "src" / "latin1.csv").write_bytes(
        "prompt,response,label\ncafé,au lait,harmless\n".encode("latin-1"))
    reject = only_reject(run(tmp_path / "src"))
    assert reject["file"].endswith("latin1.csv") and reject["line"] == 2
    assert "not valid UTF-8" in reject["reason"]


def test_missing_source_folder(tmp_path):
    with pytest.raises(InputError, match=r"nowhere.*does not exist"):
        run(tmp_path / "nowhere")


def test_too_many_rejects_fails_with_the_first_reasons(write_jsonl, chat, tmp_path):
    write_jsonl([*good_rows(chat, 4), chat("q", "a", label="spicy"), "{oops"])
    with pytest.raises(TooManyRejectsError) as err:
        run(tmp_path / "src", max_reject_fraction=0.1)
    message = str(err.value)
    assert "2 row(s)" in message and "33.3%" in message
    assert "line 5, field 'label': unknown label 'spicy'" in message
    assert "line 6" in message and "nothing was written" in message


def test_reads_an_fsspec_url(chat):
    import json

    import fsspec

    fs = fsspec.filesystem("memory")
    with fs.open("/bucket/feed/part-0.jsonl", "w") as fh:
        fh.write(json.dumps(chat("q", "a", label="harmless")) + "\n")
    result = run("memory://bucket/feed")
    (source,) = result.records.column("source").to_pylist()
    assert source.startswith("memory://") and source.endswith("/bucket/feed/part-0.jsonl")


@pytest.mark.parametrize(("name", "content", "reason"), [
    ("more.jsonl.gz", b"\x1f\x8b\x08\x00 gzip bytes", "unsupported file type .gz"),
    ("broken.json", b'[{"prompt": "p",', "malformed JSON"),
    ("broken.parquet", b"PAR1 not really", "unreadable Parquet"),
])
def test_an_unreadable_file_fails_the_stage_naming_it(write_jsonl, chat, tmp_path, name,
                                                      content, reason):
    write_jsonl(good_rows(chat))
    (tmp_path / "src" / name).write_bytes(content)
    with pytest.raises(InputError, match=reason) as err:
        run(tmp_path / "src")
    assert name in str(err.value) and "skip_unreadable_files" in str(err.value)


def test_skip_unreadable_files_lists_them_with_their_size(write_jsonl, chat, tmp_path):
    write_jsonl(good_rows(chat))
    (tmp_path / "src" / "more.jsonl.gz").write_bytes(b"0123456789")
    result = run(tmp_path / "src", skip_unreadable_files=True)
    (skipped,) = result.metrics["skipped_files"]
    assert skipped["file"].endswith("more.jsonl.gz") and skipped["bytes"] == 10
    assert "unsupported file type" in skipped["reason"]
    assert result.records.num_rows == 20 and result.rejected.num_rows == 0


def test_links_under_the_source(write_jsonl, chat, tmp_path):
    write_jsonl(good_rows(chat), folder=tmp_path / "real")
    src = tmp_path / "src"
    src.mkdir()
    (src / "linked").symlink_to(tmp_path / "real")
    (src / "twice").symlink_to(tmp_path / "real")
    (src / "loop").symlink_to(src)
    assert run(src).records.num_rows == 20  # the linked folder, read once
    (src / "dangling.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    with pytest.raises(InputError, match=r"dangling.jsonl.*cannot read the file"):
        run(src)
    skipped = run(src, skip_unreadable_files=True).metrics["skipped_files"]
    assert [s["file"].rsplit("/", 1)[1] for s in skipped] == ["dangling.jsonl"]


def test_a_file_that_cannot_be_opened_is_an_input_error(write_jsonl, chat, tmp_path,
                                                        monkeypatch):
    from fsspec.implementations.local import LocalFileSystem

    write_jsonl(good_rows(chat))

    def refuse(self, path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(LocalFileSystem, "open", refuse)
    with pytest.raises(InputError, match="Permission denied"):
        run(tmp_path / "src")


def test_blank_labels_are_missing_and_null_words_are_text(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.csv").write_text("prompt,response,label\nq1,NULL,harmless\nq2,NA,  \nq3,nan,\n"
                               "q4,n/a,harmful\n")
    result = run(src)
    assert result.rejected.num_rows == 0
    records = result.records.to_pylist()
    assert [r["messages"][1]["content"] for r in records] == ["NULL", "NA", "nan", "n/a"]
    assert [r["label"] for r in records] == ["harmless", None, None, "harmful"]


def test_rfc4180_csv_with_bom_crlf_and_quoted_newlines(tmp_path):
    import pandas as pd

    src = tmp_path / "src"
    src.mkdir()
    frame = pd.DataFrame({"prompt": ["line one\nline two", 'a "quoted" word', "q"],
                          "response": ["r1", "r2", ""], "label": ["harmless"] * 3})
    (src / "a.csv").write_bytes(
        b"\xef\xbb\xbf" + frame.to_csv(index=False, lineterminator="\r\n").encode())
    result = run(src)
    assert [r["messages"][0]["content"] for r in result.records.to_pylist()] == [
        "line one\nline two", 'a "quoted" word']
    reject = only_reject(result)
    assert (reject["line"], reject["field"]) == (5, "messages.content")


def test_jsonl_with_bom_and_one_bad_line(tmp_path, chat):
    import json

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jsonl").write_bytes(
        b"\xef\xbb\xbf" + json.dumps(chat("q", "a", label="harmless")).encode() + b"\n{bad\n")
    result = run(src)
    assert result.records.num_rows == 1 and only_reject(result)["line"] == 2
