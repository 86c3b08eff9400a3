"""The shard runner (tasks/shards.py): shards fill the embedding and rating caches, the stage
then finds every row cached and writes the same outputs as an unsharded run; shard counts in
params.yaml are checked; bad params exit 65 naming the key."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from crediflow.data.schema import RECORD_SCHEMA
from crediflow.errors import ConfigError
from crediflow.synthetic.noise import clustered_embeddings
from tasks.catalog import Catalog, vectors_table
from tasks.config import pipeline
from tasks.settings import PROJECT_ROOT
from tasks.stage import EXIT_BAD_INPUT

N, DISTINCT, SHARDS = 60, 48, 3


@pytest.fixture(scope="module")
def tiny_model(tiny_lm, tmp_path_factory) -> Path:
    """The tiny Llama of tests/conftest.py saved as a folder: the encoder of embed (mean
    pooling over its hidden states) and the rater of select."""
    model, tokenizer = tiny_lm
    folder = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _records() -> pa.Table:
    """N records of DISTINCT texts: the last N - DISTINCT repeat the first ones (other ids)."""
    text = [(f"what does f{i} do?", "it serializes obj " * (1 + i % 7)) for i in range(DISTINCT)]
    text += text[: N - DISTINCT]
    return pa.table({
        "id": [f"r{i}" for i in range(N)],
        "messages": [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                     for q, a in text],
        "label": [None] * N, "rating": [None] * N, "group": [None] * N, "source": ["s"] * N,
    }, schema=RECORD_SCHEMA)


def _set(project: Path, section: str, **values: object) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


@pytest.fixture
def project(tiny_model: Path, tmp_path: Path, monkeypatch) -> Path:
    """A project with N ingested (= fixed) records and their embeddings; embed and select
    use the tiny model."""
    monkeypatch.setenv("CREDIFLOW_HOME", str(tmp_path))
    shutil.copy(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml")
    _set(tmp_path, "embed", model=str(tiny_model), batch_size=8, precision="fp32")
    _set(tmp_path, "select", rater="hf", model=str(tiny_model), max_prompt_tokens=600,
         batch_size=4, precision="fp32", k=5, budget=20)
    records = _records()
    vectors, _ = clustered_embeddings(N, 16, 2, clusters_per_class=2, latent_dim=4, seed=0)
    catalog = Catalog(tmp_path)
    for name, table in [("ingested", records), ("fixed", records),
                        ("embeddings", vectors_table(records.column("id"),
                                                     vectors.astype(np.float32)))]:
        catalog.path(name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, catalog.path(name))
    return tmp_path


def _cache_files(project: Path, kind: str) -> list[Path]:
    return sorted((project / ".cache-sharded" / kind).rglob("*.parquet"))


def _check_partition(project: Path, kind: str, summaries: list[dict]) -> None:
    """Each shard computed its own rows, together every row, each distinct text in one shard
    only (one cache file per shard, their keys disjoint)."""
    assert sorted(s["shard"] for s in summaries) == list(range(SHARDS))
    assert {s["of"] for s in summaries} == {SHARDS} and {s["rows"] for s in summaries} == {N}
    assert sum(s["shard_rows"] for s in summaries) == N
    assert sum(s["computed"] for s in summaries) == N  # rows (a repeated text counts, once
    # computed: the keys below)
    assert all(s["computed"] > 0 and s["reused"] == 0 for s in summaries)
    files = _cache_files(project, kind)
    assert len(files) == SHARDS
    keys = [pq.read_table(f, columns=["key"]).column("key").to_pylist() for f in files]
    assert len(set().union(*keys)) == sum(map(len, keys)) == DISTINCT  # disjoint shards


def _same_records(got: pa.Table, expected: pa.Table, floats: dict[str, float]) -> None:
    """Equal tables, except that the float columns in `floats` may differ by float32
    rounding (up to the given absolute difference): a row's forward pass rounds differently
    at the last bit in a batch of another composition (other rows, other padding), as it
    does in an unsharded run that finds some rows cached."""
    assert got.schema == expected.schema
    for name in got.column_names:
        if name not in floats:
            assert got.column(name).equals(expected.column(name)), name
            continue
        a, b = (np.asarray(t.column(name).to_pylist(), dtype=np.float64) for t in (got, expected))
        np.testing.assert_allclose(a, b, rtol=0, atol=floats[name], err_msg=name)


def test_embedding_shards_fill_the_cache_and_the_stage_reuses_every_row(project) -> None:
    from tasks.embed import run
    from tasks.shards import fill_cache

    _set(project, "catalog", cache=".cache-unsharded")
    unsharded = run()
    assert (unsharded["reused_from_cache"], unsharded["embedded"]) == (0, N)
    expected = pq.read_table(project / "data/embeddings/embeddings.parquet")
    shutil.rmtree(project / "data/embeddings")
    shutil.rmtree(project / "reports")

    _set(project, "catalog", cache=".cache-sharded")
    # the shards at once, each with its own cache object: concurrent writers of one folder
    with ThreadPoolExecutor(SHARDS) as pool:
        summaries = list(pool.map(lambda i: fill_cache("embed", shard=i, of=SHARDS),
                                  range(SHARDS)))
    _check_partition(project, "embeddings", summaries)
    assert not (project / "data/embeddings").exists()  # shards write no stage output
    assert not (project / "reports").exists()

    sharded = run()
    assert (sharded["reused_from_cache"], sharded["embedded"]) == (N, 0)
    # unit vectors: 1e-6 is a few float32 ulps; a wrong or missing vector is off by ~0.1-1
    _same_records(pq.read_table(project / "data/embeddings/embeddings.parquet"), expected,
                  {"vector": 1e-6})


def test_rating_shards_fill_the_cache_and_the_stage_reuses_every_row(project) -> None:
    from tasks.select import run
    from tasks.shards import fill_cache

    _set(project, "catalog", cache=".cache-unsharded")
    unsharded = run()
    assert (unsharded["rated"], unsharded["ratings_from_cache"]) == (N, 0)
    expected = pq.read_table(project / "data/selected/records.parquet")
    shutil.rmtree(project / "data/selected")
    shutil.rmtree(project / "reports")

    _set(project, "catalog", cache=".cache-sharded")
    summaries = [fill_cache("select", shard=i, of=SHARDS) for i in range(SHARDS)]
    _check_partition(project, "ratings", summaries)
    assert not (project / "data/selected").exists() and not (project / "reports").exists()
    again = fill_cache("select", shard=1, of=SHARDS)  # a retried shard computes nothing
    assert again["computed"] == 0 and again["reused"] == summaries[1]["shard_rows"]

    sharded = run()
    assert (sharded["rated"], sharded["ratings_from_cache"]) == (0, N)
    # the ratings (argmax), curated ratings and the selection are equal; the expected score
    # (a float32 softmax over the digits) to float32 rounding
    _same_records(pq.read_table(project / "data/selected/records.parquet"), expected,
                  {"rating_expected": 1e-5})


def test_a_column_rater_has_nothing_to_compute(project) -> None:
    from tasks.shards import fill_cache

    _set(project, "select", rater="column")
    summary = fill_cache("select", shard=0, of=2)
    assert summary["computed"] == 0 and summary["shard_rows"] > 0
    assert not (project / ".cache").exists()


def test_a_shard_runs_in_its_own_process_and_returns_its_summary(project) -> None:
    """What the Airflow task runs: the shard's process, its output streamed, its summary
    parsed; a refused shard raises ShardRejected (not retried)."""
    from tasks.shards import ShardRejected, run_shard

    _set(project, "select", rater="column")
    summary = run_shard("select", shard=1, of=2)
    assert {k: summary[k] for k in ("stage", "shard", "of", "rows", "computed")} == {
        "stage": "select", "shard": 1, "of": 2, "rows": N, "computed": 0}
    with pytest.raises(ShardRejected, match="flag --shard: expected an integer in 0..1"):
        run_shard("select", shard=2, of=2)


def _params(tmp_path: Path, curate: dict) -> Path:
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["pipelines"]["curate"].update(curate)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    shutil.copy(PROJECT_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    return tmp_path


@pytest.mark.parametrize(("shards", "key", "reason"), [
    ({"embed": 0}, "curate.shards.embed", "expected an integer >= 1, got 0"),
    ({"select": 1.5}, "curate.shards.select", "expected an integer >= 1, got 1.5"),
    ({"select": True}, "curate.shards.select", "expected an integer >= 1, got True"),
    ({"audit": 2}, "curate.shards.audit", "can be sharded: embed, select"),
    ([2], "curate.shards", "expected a mapping of stage to shard count"),
])
def test_bad_shard_counts_name_the_key(tmp_path, shards, key: str, reason: str) -> None:
    root = _params(tmp_path, {"shards": shards})
    with pytest.raises(ConfigError) as info:
        pipeline("curate", root)
    assert info.value.key == key and reason in str(info.value)
    assert f"params.yaml, section 'pipelines', key '{key}'" in str(info.value)


def test_shard_counts_default_to_one(tmp_path) -> None:
    spec = pipeline("curate", _params(tmp_path, {"shards": None}))
    assert spec.stage_shards("embed") == spec.stage_shards("select") == 1
    spec = pipeline("curate", _params(tmp_path, {"shards": {"embed": 4}}))
    assert (spec.stage_shards("embed"), spec.stage_shards("select")) == (4, 1)
    assert pipeline("curate", PROJECT_ROOT).shards == {"embed": 1, "select": 1}


def _run_cli(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"CREDIFLOW_HOME": str(project)}
    return subprocess.run([sys.executable, "-m", "tasks.shards", *args], cwd=PROJECT_ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("curate", "args", "expected"), [
    ({"shards": {"embed": 0}}, ["embed", "--shard", "0"],
     "params.yaml, section 'pipelines', key 'curate.shards.embed': expected an integer >= 1"),
    ({}, ["embed", "--shard", "3", "--of", "3"],
     "command line, flag --shard: expected an integer in 0..2, got 3"),
    ({}, ["select", "--shard", "0", "--of", "2", "--threads", "0"],
     "command line, flag --threads: expected an integer >= 1, got 0"),
])
def test_bad_params_exit_65_with_one_line_naming_the_key(tmp_path, curate, args,
                                                         expected: str) -> None:
    root = _params(tmp_path, curate)
    result = _run_cli(root, *args)
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "Traceback" not in result.stderr and not (root / ".cache").exists()
