"""`crediflow lineage MODEL`: a model registered by a training run (the registry code the
finetune stage uses, in a train pipeline run) after a real pipeline run (stage ingest through
the runner, DVC and MLflow) leads back to the ingested and raw data with the hashes of
dvc.lock, by version, by alias and by run id; unknown names exit 65 with one line."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from crediflow.synthetic.demo import write_demo
from tasks.stage import EXIT_BAD_INPUT


def _demo_records(root: Path) -> None:
    write_demo(root / "data/raw/demo.jsonl", root / "data/truth/demo_labels.csv", n=80, seed=5)


def _train_run(root: Path, model_dir: Path) -> dict:
    """A train pipeline run whose finetune stage (read: ingest's records) registers a model
    with the finetune stage's own registry call, then logs its dvc.lock entry."""
    from tasks import lineage
    from tasks.tracking import register_stage_model

    records = root / "data/ingested/records.parquet"
    parent = lineage.pipeline_run("train", "train", "manual__lineage-test")
    child = lineage.start_stage_run("finetune", parent)
    os.environ[lineage.STAGE_RUN_ENV] = child
    try:
        made = register_stage_model(model_dir, stage="finetune", upstream=("ingest",),
                                    extra={"base_model": "tiny"}, aliases=("lineage-test",),
                                    description="lineage test")
    finally:
        del os.environ[lineage.STAGE_RUN_ENV]
    lock = {"deps": [{"path": "data/ingested/records.parquet", "hash": "md5",
                      "md5": hashlib.md5(records.read_bytes()).hexdigest()}],
            "params": {"params.yaml": {"finetune": {"max_steps": 3}}},
            "outs": [{"path": "models/finetune", "hash": "md5", "md5": "0" * 32 + ".dir"}]}
    lineage.log_stage("finetune", parent, lock, skipped=False, run_id=child)
    lineage.finish_pipeline_run(parent, failed=False)
    return made


@pytest.fixture(scope="module")
def project(tiny_lm, tmp_path_factory, build_project) -> dict:
    """A project after pipeline `mini` ran, and a model version registered from a train
    run that read its output."""
    from tasks.runner import run_pipeline

    root = build_project(_demo_records, {"pipelines": {"mini": {"stages": ["ingest"]}}})
    parent = run_pipeline("mini", run_id="manual__lineage-ingest")
    model_dir = tmp_path_factory.mktemp("model")
    model, tokenizer = tiny_lm
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    made = _train_run(root, model_dir)
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["ingest"]
    return {"root": root, "parent": parent, "model": made, "lock": lock}


def _lineage(capsys, *args: str) -> str:
    from tasks.ops import main

    main(["lineage", *args])
    return capsys.readouterr().out


def _chain(capsys, ref: str) -> list[dict]:
    return json.loads(_lineage(capsys, ref, "--json"))


def test_the_chain_of_a_registered_version_matches_dvc_lock(project, capsys) -> None:
    made, lock = project["model"], project["lock"]
    chain = _chain(capsys, f"{made['name']}/{made['version']}")
    assert [(c["kind"], c["name"]) for c in chain] == [
        ("model", f"{made['name']}/{made['version']}"), ("stage", "finetune"),
        ("stage", "ingest"), ("raw", "data/raw")]
    model, train, ingest, raw = chain
    outs = {o["path"]: o["md5"] for o in lock["outs"]}
    assert model["outputs"]["data/ingested"] == outs["data/ingested"]
    assert model["mlflow_run"] == train["mlflow_run"] == made["run_id"]
    assert train["airflow_run"] == "manual__lineage-test"
    assert train["params"] == {"finetune": {"max_steps": 3}}
    assert ingest["outputs"] == outs
    assert ingest["params"] == lock["params"]["params.yaml"]
    assert ingest["airflow_run"] == "manual__lineage-ingest"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project["root"], text=True,
                          capture_output=True).stdout.strip()
    assert ingest["git_commit"] == model["git_commit"] == head
    assert ingest["mlflow_url"].endswith(f"/runs/{ingest['mlflow_run']}")
    deps = {d["path"]: d["md5"] for d in lock["deps"]}
    assert raw["outputs"] == {"data/raw": deps["data/raw"]}


def test_alias_and_run_id_give_the_same_chain_and_text_reads(project, capsys) -> None:
    made = project["model"]
    by_version = _chain(capsys, f"{made['name']}/{made['version']}")
    assert _chain(capsys, f"{made['name']}@lineage-test") == by_version
    assert _chain(capsys, made["run_id"]) == by_version
    text = _lineage(capsys, f"{made['name']}@lineage-test")
    assert text.splitlines()[0].startswith(f"model {made['name']}/{made['version']}")
    assert "<- training run, stage finetune" in text
    assert "<- stage ingest" in text and "<- raw data data/raw" in text
    assert project["lock"]["outs"][0]["md5"] in text


def test_a_pipeline_run_id_starts_at_its_last_stage(project, capsys) -> None:
    chain = _chain(capsys, project["parent"])
    assert [c["name"] for c in chain] == ["ingest", "data/raw"]


@pytest.mark.parametrize(("ref", "message"), [
    ("crediflow-sft@no-such-alias", "error: unknown model or alias 'crediflow-sft@no-such-alias'"),
    ("no-such-model/1", "error: unknown model version 'no-such-model/1'"),
    ("deadbeef", "error: unknown model or run 'deadbeef': expected NAME/VERSION, NAME@ALIAS "
                 "or an MLflow run id"),
])
def test_unknown_models_exit_65_with_one_line(project, capsys, ref, message) -> None:
    with pytest.raises(SystemExit) as exit_:
        _lineage(capsys, ref)
    assert exit_.value.code == EXIT_BAD_INPUT
    assert capsys.readouterr().err.strip() == message
