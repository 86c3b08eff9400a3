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
def test_audit_bad_columns_exit_with_a_clear_message(tmp_path, args, message):
    path = tmp_path / "t.csv"
    pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]}).to_csv(path, index=False)
    if "missing" in args:
        path.write_text("body,label\nhello,x\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", str(path), *args])
    assert message in str(exit_info.value)


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
    (["--budget", "0"], "budget must be positive"),
    (["--budget", "500"], "larger than the data"),
    (["--budget", "5", "--rating-column", "nope"], "no column 'nope'"),
])
def test_select_bad_budget_or_column(tmp_path, args, message):
    path = tmp_path / "t.csv"
    pd.DataFrame({"text": [f"text number {i}" for i in range(30)],
                  "rating": [1, 2, 3] * 10}).to_csv(path, index=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["select", str(path), *args])
    assert message in str(exit_info.value)
