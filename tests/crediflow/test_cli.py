"""`crediflow audit` end to end on the packaged MiniLM encoder (offline)."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from crediflow.cli import main
from crediflow.synthetic.demo import build_demo_records


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """400 demo records in mixed ingest formats, 8% of their labels flipped."""
    records, truth = build_demo_records(n=400, seed=0)
    path = tmp_path_factory.mktemp("cli") / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path, truth


def test_audit_records_file_prints_and_writes(demo, tmp_path, capsys):
    path, truth = demo
    out = tmp_path / "audited.parquet"
    main(["audit", str(path), "--label-column", "label", "--out", str(out), "--seed", "1"])
    printed = capsys.readouterr().out
    assert "noise transition matrix" in printed and "credibility:" in printed
    assert "suspected label errors:" in printed
    table = pq.read_table(out).to_pandas()
    assert len(table) == 400
    assert {"label_issue", "label_score", "suggested_label", "suggestion_confidence"} <= set(
        table.columns)
    flagged = set(table.loc[table["label_issue"], "id"])
    flipped = set(truth.loc[truth["flipped"], "id"])
    assert flagged and len(flagged & flipped) / len(flagged) >= 0.6


def test_audit_plain_table_with_a_text_column(tmp_path, capsys):
    rows = [{"review": f"A python function that returns item {i} from the list", "topic": "code"}
            for i in range(20)]
    rows += [{"review": f"The movie was a delight, scene {i} made me cry", "topic": "film"}
             for i in range(20)]
    rows[3]["topic"] = "film"
    path = tmp_path / "plain.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    main(["audit", str(path), "--label-column", "topic", "--text-column", "review",
          "--out", str(tmp_path / "out.csv")])
    out = pd.read_csv(tmp_path / "out.csv")
    assert out.loc[3, "label_issue"] and out.loc[3, "suggested_label"] == "code"
    assert out["label_issue"].sum() <= 3


@pytest.mark.parametrize(("args", "message"), [
    (["--label-column", "nope"], "no column 'nope'"),
    (["--label-column", "label", "--text-column", "missing"], "no column 'missing'"),
])
def test_audit_bad_columns_exit_with_a_clear_message(tmp_path, capsys, args, message):
    path = tmp_path / "t.csv"
    pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]}).to_csv(path, index=False)
    if "missing" in args:
        path.write_text("body,label\nhello,x\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", str(path), *args])
    assert exit_info.value.code == 65 and message in capsys.readouterr().err


def test_select_curates_ratings_and_fills_the_budget(tmp_path, capsys):
    rows = [{"text": f"A python function that returns item {i} from the list", "score": 5}
            for i in range(30)]
    rows += [{"text": f"The movie was a delight, scene {i} made me cry", "score": 1}
             for i in range(30)]
    rows[4]["score"] = 1  # a good sample with a wrong rating
    path = tmp_path / "rated.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    main(["select", str(path), "--budget", "25", "--rating-column", "score",
          "--bins", "0.5,2.5,5.5", "--out", str(tmp_path / "out.parquet")])
    assert "selected 25 of 60 rows" in capsys.readouterr().out
    out = pq.read_table(tmp_path / "out.parquet").to_pandas()
    assert out.loc[4, "curated_rating"] == 5
    assert out["selected"].sum() == 25 and out.loc[out["selected"], "text"].str.contains(
        "python").all()
    assert out["long_tail_score"].between(0, 1).all()


@pytest.mark.parametrize(("args", "message"), [
    (["--budget", "0", "--rater", "column"], "flag --budget: 0.0 is out of range"),
    (["--budget", "500", "--rater", "column"], "larger than the data"),
    (["--budget", "5", "--rating-column", "nope"], "no column 'nope'"),
    (["--rating-column", "rating", "--rater", "hf"], "flag --rater"),
    (["--rater", "openai"], "rates with --rater column or hf"),
    (["--k", "1", "--rater", "column"], "flag --k: 1 is out of range"),
])
def test_select_bad_settings_or_column(tmp_path, capsys, args, message):
    path = tmp_path / "t.csv"
    pd.DataFrame({"text": [f"text number {i}" for i in range(30)],
                  "rating": [1, 2, 3] * 10}).to_csv(path, index=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["select", str(path), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 65 and message in err and err.count("\n") == 1


def _two_topics(n: int = 20) -> list[dict]:
    rows = [{"review": f"A python function that returns item {i} from the list", "topic": "code"}
            for i in range(n)]
    rows += [{"review": f"The movie was a delight, scene {i} made me cry", "topic": "film"}
             for i in range(n)]
    return rows


def test_audit_reports_rejects_keeps_every_row_and_blank_labels_are_unlabelled(tmp_path,
                                                                               capsys):
    rows = _two_topics()
    rows[5]["review"] = ""
    rows[6]["topic"] = ""
    rows[7]["review"] = "NULL"  # a real text, not a missing value
    path = tmp_path / "plain.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    out = tmp_path / "out.csv"
    main(["audit", str(path), "--label-column", "topic", "--text-column", "review",
          "--out", str(out)])
    printed = capsys.readouterr().out
    assert "rejected 1 of 40 rows" in printed and "line 7, field 'review': empty text" in printed
    assert "classes: code, film" in printed and "of 38 labelled rows" in printed
    table = pd.read_csv(out)
    assert len(table) == 40 and table.loc[5, "rejected_reason"] == "review: empty text"
    assert table["rejected_reason"].isna().sum() == 39
    assert pd.isna(table.loc[5, "label_issue"]) and pd.isna(table.loc[6, "label_issue"])


def test_audit_fails_past_the_reject_limit(tmp_path, capsys):
    rows = _two_topics()
    for row in rows[:4]:
        row["review"] = " "
    path = tmp_path / "plain.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", str(path), "--label-column", "topic", "--text-column", "review",
              "--max-reject-fraction", "0.05"])
    assert exit_info.value.code == 65
    assert "rejected 4 of 40 rows" in capsys.readouterr().err


def test_text_column_flag_wins_over_conversation_fields(tmp_path, capsys):
    rows = [{"text": r["review"], "output": "same answer", "prompt": "same question",
             "topic": r["topic"]} for r in _two_topics()]
    rows[3]["topic"] = "film"
    path = tmp_path / "both.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.parquet"
    main(["audit", str(path), "--label-column", "topic", "--text-column", "text",
          "--out", str(out)])
    printed = capsys.readouterr().out
    assert "note:" not in printed and "python function" in printed
    assert pq.read_table(out).column("suggested_label").to_pylist()[3] == "code"
    main(["audit", str(path), "--label-column", "topic"])
    assert "embedding the conversations" in capsys.readouterr().out


def test_bad_flag_values_and_outputs_fail_before_the_work(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_text("text,label\na,x\n")
    for args, message in ((["--k", "one"], "flag --k: expected int"),
                          (["--detector", "magic"], "flag --detector"),
                          (["--max-reject-fraction", "2"], "flag --max-reject-fraction"),
                          (["--out", str(tmp_path / "out.txt")], "unsupported file type")):
        with pytest.raises(SystemExit) as exit_info:
            main(["audit", str(path), "--label-column", "label", *args])
        assert exit_info.value.code == 65 and message in capsys.readouterr().err


def test_audit_flags_come_from_the_config():
    from crediflow.audit.config import AuditConfig
    from crediflow.cli import build_parser
    from crediflow.select.config import SelectConfig

    parser = build_parser()
    args = parser.parse_args(["audit", "f.csv", "--label-column", "l", "--rounds", "7"])
    assert AuditConfig.from_args(args) == AuditConfig(rounds=7)
    args = parser.parse_args(["select", "f.csv", "--rater-model", "m", "--threshold", "0.7"])
    assert SelectConfig.from_args(args) == SelectConfig(model="m", threshold=0.7)


def test_records_with_nested_turns_to_csv_as_json_text(demo, tmp_path):
    path, _ = demo
    out = tmp_path / "audited.csv"
    main(["audit", str(path), "--label-column", "label", "--out", str(out), "--top", "0"])
    table = pd.read_csv(out)
    assert len(table) == 400
    nested = table["messages"].dropna()
    assert len(nested) and json.loads(nested.iloc[0])[0]["role"] in ("system", "user")


def test_select_with_the_hf_rater(tiny_lm, tmp_path, capsys):
    from crediflow.select.raters.hf import HFRater

    model, tokenizer = tiny_lm
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    texts = [f"Q: what does json dumps do? A: {'it serializes obj ' * (i % 12)}item {i}"
             for i in range(30)]
    path = tmp_path / "t.csv"
    pd.DataFrame({"text": texts}).to_csv(path, index=False)
    out = tmp_path / "out.parquet"
    main(["select", str(path), "--rater", "hf", "--rater-model", str(tmp_path / "tiny"),
          "--max-prompt-tokens", "600", "--batch-size", "4", "--score", "expected",
          "--bins", "0.5,3,5.5", "--budget", "10", "--k", "3", "--out", str(out)])
    assert "selected 10 of 30 rows" in capsys.readouterr().out
    expected = HFRater(model, tokenizer, max_prompt_tokens=600, batch_size=4).rate(texts).expected
    table = pq.read_table(out)
    assert table.column("rating").to_pylist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert sum(table.column("selected").to_pylist()) == 10
