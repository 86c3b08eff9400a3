"""The select task's rater settings: params.yaml's template and answer prefix reach the rater."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from crediflow.data.schema import RECORD_SCHEMA
from crediflow.errors import ConfigError
from crediflow.select.config import SelectConfig
from crediflow.select.raters.hf import HFRater
from crediflow.select.rating import rate
from crediflow.synthetic.noise import clustered_embeddings
from tasks.catalog import Catalog, vectors_table
from tasks.select import run
from tasks.settings import PROJECT_ROOT

PAIRS = [(f"what does json dumps do? {'really ' * n}", "it serializes obj " * (n + 1))
         for n in range(6)]


TEXTS = [f"{q}\n{a}" for q, a in PAIRS]


@pytest.fixture
def hf_params(tiny_lm, tmp_path: Path) -> dict:
    model, tokenizer = tiny_lm
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    return {"rater": "hf", "model": str(tmp_path / "tiny"), "template": None,
            "max_prompt_tokens": 600, "batch_size": 4}


def test_hf_rater_uses_the_template_and_answer_prefix_from_params(tiny_lm, hf_params,
                                                                 tmp_path) -> None:
    model, tokenizer = tiny_lm
    texts = TEXTS
    default = rate(texts, SelectConfig.from_mapping(hf_params), cache_folder=tmp_path / "r")
    assert default.metrics["rated"] == len(PAIRS) and default.metrics["ratings_from_cache"] == 0
    reference = HFRater(model, tokenizer, max_prompt_tokens=600, batch_size=4).rate(texts)
    np.testing.assert_allclose(default.expected, reference.expected, atol=1e-5)
    np.testing.assert_array_equal(default.argmax, reference.argmax)

    custom = {**hf_params, "template": "Rate it 1 to 5.\n{text}\nOne digit.",
              "answer_prefix": "", "score": "expected"}
    ratings = rate(texts, SelectConfig.from_mapping(custom)).rating
    expected = HFRater(model, tokenizer, template=custom["template"], answer_prefix="",
                       max_prompt_tokens=600, batch_size=4).rate(texts).expected
    np.testing.assert_allclose(ratings, expected, atol=1e-5)
    assert np.abs(ratings - default.expected).max() > 1e-3  # the prompt really changed


def test_a_template_without_the_text_slot_is_refused(hf_params) -> None:
    with pytest.raises(ConfigError, match=r"section 'select', key 'template'.*\{text\}"):
        SelectConfig.from_mapping({**hf_params, "template": "Rate this sample."})


@pytest.fixture
def project(hf_params, tmp_path: Path, monkeypatch) -> Path:
    """A project with 60 fixed records and their embeddings, rated by the tiny model."""
    monkeypatch.setenv("CREDIFLOW_HOME", str(tmp_path))
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["select"].update({**hf_params, "k": 5, "budget": 20})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    n = 60
    vectors, _ = clustered_embeddings(n, 16, 2, clusters_per_class=2, latent_dim=4, seed=0)
    ids = [f"r{i}" for i in range(n)]
    records = pa.table({
        "id": ids,
        "messages": [[{"role": "user", "content": f"what does f{i} do?"},
                      {"role": "assistant", "content": "it serializes obj " * (1 + i % 7)}]
                     for i in range(n)],
        "label": [None] * n, "rating": [None] * n, "group": [None] * n, "source": ["s"] * n,
    }, schema=RECORD_SCHEMA)
    catalog = Catalog(tmp_path)
    for name, table in [("fixed", records),
                        ("embeddings", vectors_table(records.column("id"),
                                                     vectors.astype(np.float32)))]:
        catalog.path(name).parent.mkdir(parents=True)
        pq.write_table(table, catalog.path(name))
    return tmp_path


def _set_score(project: Path, score: str) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    params["select"]["score"] = score
    (project / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")


def test_the_stage_rates_by_argmax_or_expected_score_and_records_both(project) -> None:
    first = run()
    assert (first["rated"], first["ratings_from_cache"]) == (60, 0)
    out = pq.read_table(project / "data/selected/records.parquet").to_pandas()
    assert out["rating"].tolist() == out["rating_argmax"].astype(float).tolist()
    assert out["rating_expected"].between(1, 5).all()
    assert out["selected"].sum() == 20
    _set_score(project, "expected")
    second = run()
    assert (second["rated"], second["ratings_from_cache"]) == (0, 60)  # a rerun pays nothing
    again = pq.read_table(project / "data/selected/records.parquet").to_pandas()
    np.testing.assert_allclose(again["rating"], out["rating_expected"], atol=1e-5)
    np.testing.assert_array_equal(again["rating_argmax"], out["rating_argmax"])


def test_an_unknown_score_choice_is_refused_before_rating(project) -> None:
    _set_score(project, "mean")
    with pytest.raises(ConfigError, match="section 'select', key 'score'.*argmax, expected"):
        run()
    assert not (project / "data/selected").exists()


def test_moves_are_named_by_rating_class() -> None:
    from tasks.select import _class_move

    classes = ["0.5-1.5", "1.5-2.5", "2.5-3.5"]
    assert _class_move("2->0", classes) == "2.5-3.5->0.5-1.5"
