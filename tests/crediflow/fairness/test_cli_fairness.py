"""`crediflow fairness` on small files: the printed table, --json, and exit 65 on bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from crediflow.cli import main

T = np.array([[0.8, 0.2], [0.25, 0.75]])
NAMES = np.array(["black", "white"])
FLAGS = ["--pred-column", "pred", "--label-column", "label", "--proxy-columns", "p1,p2,p3"]


def table(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Predictions favouring one group, labels, the true group and three proxies drawn
    independently given the group."""
    rng = np.random.default_rng(seed)
    g = (rng.random(n) < 0.4).astype(int)
    y = (rng.random(n) < np.where(g == 1, 0.5, 0.3)).astype(int)
    pred = (rng.random(n) < 0.15 + 0.25 * g + 0.3 * y).astype(int)
    df = pd.DataFrame({"pred": np.array(["no", "yes"])[pred],
                       "label": np.array(["no", "yes"])[y], "race": NAMES[g]})
    for i in range(3):
        df[f"p{i + 1}"] = NAMES[(rng.random(n) < T[g, 1]).astype(int)]
    return df


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fairness") / "preds.csv"
    table().to_csv(path, index=False)
    return path


def run_json(capsys, args: list[str]) -> dict:
    main(["fairness", *args, "--json"])
    return json.loads(capsys.readouterr().out)


def test_prints_the_estimates_and_the_true_gaps(csv_file, capsys):
    main(["fairness", str(csv_file), *FLAGS, "--group-column", "race"])
    out = capsys.readouterr().out
    assert "3000 rows; classes no, yes (positive yes); groups black, white" in out
    assert "transition matrix T[true group, proxy group]" in out
    for title in ("demographic parity", "equalized odds", "equal opportunity"):
        assert title in out
    assert "calibrated error" in out and "warning" not in out


def test_json_has_raw_calibrated_and_true_per_gap(csv_file, capsys):
    out = run_json(capsys, [str(csv_file), *FLAGS, "--group-column", "race"])
    for key in ("dp", "eod", "eop"):
        assert {"raw", "calibrated", "true"} <= set(out[key])
        assert out[key]["calibrated_error"] < out[key]["raw_error"] / 2
    assert out["groups"] == ["black", "white"] and out["rows"] == 3000
    np.testing.assert_allclose(out["T"], T, atol=0.05)
    without = run_json(capsys, [str(csv_file), *FLAGS, "--mode", "local"])
    assert set(without["dp"]) == {"raw", "calibrated"} and without["mode"] == "local"


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_reads_parquet_and_jsonl(tmp_path, capsys, suffix):
    df = table(n=2000, seed=1)
    path = tmp_path / f"preds{suffix}"
    if suffix == ".parquet":
        df.to_parquet(path)
    else:
        df.to_json(path, orient="records", lines=True)
    out = run_json(capsys, [str(path), *FLAGS, "--group-column", "race"])
    assert out["rows"] == 2000 and out["dp"]["true"] > 0


def write(tmp_path, df: pd.DataFrame, name: str = "bad.csv") -> str:
    path = tmp_path / name
    df.to_csv(path, index=False)
    return str(path)


def missing_label(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df.loc[6, "label"] = None
    return df


def third_class(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df.loc[3, "p2"] = "asian"
    return df


def empty_cell(df: pd.DataFrame) -> pd.DataFrame:
    return df[~((df["race"] == "white") & (df["label"] == "yes"))]


def random_proxies(df: pd.DataFrame) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    df = df.copy()
    for name in ("p1", "p2", "p3"):
        df[name] = NAMES[rng.integers(0, 2, len(df))]
    return df


@pytest.mark.parametrize(("edit", "args", "message"), [
    (None, ["--proxy-columns", "p1,p2"],
     "command line, flag --proxy-columns: fewer than three proxies: got 2 (p1, p2)"),
    (missing_label, ["--group-column", "race"],
     "line 8, field 'label': missing value (1 row(s) lack one)"),
    (third_class, ["--group-column", "race"],
     "field 'p2': proxy column has 3 classes (asian, black, white) but group column 'race' "
     "has 2"),
    (third_class, [], "field 'p1': proxy column has 2 classes (black, white) but the proxy "
                      "columns together have 3"),
    (empty_cell, ["--group-column", "race"],
     "field 'race': group 'white' has no rows with label 'yes'"),
    (random_proxies, [], "field 'p1,p2,p3': the proxies agree no more than chance"),
    (None, ["--label-column", "nope"], "field 'nope': no column 'nope'"),
    (None, ["--mode", "regional"], "flag --mode: 'regional' is not allowed"),
    (None, ["--positive-class", "2"], "flag --positive-class: 2 is not a class index"),
])
def test_bad_input_exits_65_with_one_line(tmp_path, capsys, edit, args, message):
    df = table(n=1500, seed=2)
    path = write(tmp_path, edit(df) if edit else df)
    with pytest.raises(SystemExit) as info:
        main(["fairness", path, *FLAGS, *args])
    err = capsys.readouterr().err
    assert info.value.code == 65
    assert message in err, err
    assert err.count("\n") == 1 and err.startswith("error: ")


def test_on_singular_raw_reports_the_raw_estimate_with_a_warning(tmp_path, capsys):
    path = write(tmp_path, random_proxies(table(n=1500, seed=3)))
    out = run_json(capsys, [path, *FLAGS, "--on-singular", "raw"])
    assert out["fallback"] == ["dp", "eod", "eop"]
    assert out["dp"]["calibrated"] == out["dp"]["raw"]
    assert any("falls back" in w or "fall(s) back" in w for w in out["warnings"])
