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
