"""DAG `train` end to end with `dag.test()` on a tiny model, in a temporary project: real
Airflow, DVC and MLflow (registry included). Fixed mode first (the pruned model passes the
gate and becomes champion), then a manual run whose Params form switches to self-evolving
mode and sets a gate nothing passes (the champion stays), then a run with nothing changed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from crediflow.data.schema import CURATED_RATING, ID, MESSAGES_COLUMN, SELECTED
from tasks.settings import PROJECT_ROOT, project_root

N = 40


def _selected(n: int) -> pa.Table:
    """What DAG curate leaves for train: records with curated ratings, all selected."""
    rng = np.random.default_rng(0)
    messages = [[{"role": "system", "content": "be brief"},
                 {"role": "user", "content": f"what does function f{i} return?"},
                 {"role": "assistant", "content": "it returns the json string " * (1 + i % 3)}]
                for i in range(n)]
    return pa.table({ID: [f"r{i}" for i in range(n)], MESSAGES_COLUMN: messages,
                     CURATED_RATING: rng.integers(1, 6, n).astype(float),
                     SELECTED: [True] * n})


@pytest.fixture(scope="module")
def project(new_project, tiny_lm) -> Path:
    """A project holding what DAG curate leaves (selected records) and a tiny base model."""

    def setup(root: Path) -> None:
        model, tokenizer = tiny_lm
        model.save_pretrained(root / "base")
        tokenizer.save_pretrained(root / "base")
        (root / "data/selected").mkdir(parents=True)
        pq.write_table(_selected(N), root / "data/selected/records.parquet")

    return new_project(setup, {
        "token_clean": {"warmup_size": 6, "chunks": 3, "heldout_fraction": 0.2,
                        "max_records": None, "batch_size": 4, "html_records": 3},
        "finetune": {"model": str(project_root() / "base"), "max_steps": 3, "batch_size": 4,
                     "lora_r": 4, "lora_alpha": 8, "logging_steps": 1, "max_length": 64},
        "prune": {"count": 1, "max_steps": 2},
        "evaluate": {"prompts": 2, "max_new_tokens": 4, "repeats": 1, "fairness_rows": 200,
                     "max_perplexity_increase": 1000.0, "min_speedup": 0.0,
                     "promote_finetuned": False}})


def _stage_runs(run_id: str) -> dict:
    import mlflow

    from tasks import lineage

    parent = lineage.pipeline_run("train", "train", run_id)
    client = mlflow.MlflowClient()
    runs = client.search_runs([lineage.experiment_id()],
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    return {r.data.tags["crediflow.stage"]: r for r in runs}


def _check_prune_and_promotion(project: Path, client, name: str, evaluate_run: str):
    """prune -> partial fine-tune -> evaluate -> the pruned model is champion; returns it."""
    pruned = json.loads((project / "reports/prune/metrics.json").read_text())
    assert pruned["removed_layers"] == [1] and pruned["layers_after"] == 1
    assert pruned["train"]["steps"] == 2
    assert 0 < pruned["train"]["trainable_params"] < pruned["train"]["total_params"]
    evaluation = json.loads((project / "reports/evaluate/metrics.json").read_text())
    rows = evaluation["models"]
    assert set(rows) == {"base", "finetuned", "pruned"}
    assert rows["pruned"]["params"] < rows["finetuned"]["params"] == rows["base"]["params"]
    assert rows["pruned"]["size_bytes"] < rows["finetuned"]["size_bytes"]
    assert all(np.isfinite(r["perplexity"]) and r["tokens_per_second"] > 0 for r in rows.values())
    assert all(0 <= r["dp_true"] <= 1 and np.isfinite(r["dp_calibrated"]) for r in rows.values())
    assert evaluation["fairness"]["rows"] == 200 and "T" in evaluation["fairness"]["pruned"]
    assert evaluation["gate"]["champion"] == "pruned" and evaluation["gate"]["changed"]
    champion = client.get_model_version_by_alias(name, "champion")
    assert int(champion.version) == pruned["registered"]["version"]
    assert champion.tags["gate.passed"] == "true" and "speed-up" in champion.tags["gate.reason"]
    assert champion.tags["crediflow.stage"] == "prune"
    assert champion.tags["evaluate.heldout_md5"] == evaluation["heldout_md5"]
    logged = client.get_logged_model(pruned["registered"]["model_id"])
    assert {m.key for m in logged.metrics} >= {"perplexity", "tokens_per_second", "params",
                                               "dp_calibrated", "dp_true"}
    assert (project / "reports/evaluate/models.png").stat().st_size > 0
    assert "evaluate/models.png" in {
        f.path for f in client.list_artifacts(evaluate_run, "evaluate")}
    return champion


def _check_model_inputs(project: Path, client, runs: dict) -> None:
    """The chain in MLflow's logged models: finetune's run has the fine-tuned model as its
    output, prune's has it as its input (and the pruned one as its output), evaluate's has
    both as inputs; `crediflow lineage` shows prune's input with its registered version."""
    from tasks.provenance import chain
    from tasks.tracking import model_inputs

    finetuned = json.loads((project / "reports/finetune/metrics.json").read_text())["registered"]
    pruned = json.loads((project / "reports/prune/metrics.json").read_text())["registered"]

    def outputs(stage: str) -> list[str]:
        run = client.get_run(runs[stage].info.run_id)
        return [m.model_id for m in run.outputs.model_outputs]

    assert outputs("finetune") == [finetuned["model_id"]]
    assert outputs("prune") == [pruned["model_id"]]
    assert model_inputs(runs["prune"].info.run_id) == [finetuned["model_id"]]
    assert sorted(model_inputs(runs["evaluate"].info.run_id)) == sorted(
        [finetuned["model_id"], pruned["model_id"]])
    links = chain(f"{pruned['name']}/{pruned['version']}")
    assert [lk.name for lk in links[:3]] == [f"{pruned['name']}/{pruned['version']}", "prune",
                                             "finetune"]
    assert links[1].model_inputs == [
        f"{finetuned['name']}/{finetuned['version']} ({finetuned['model_id']})"]


def test_train_end_to_end_fixed_then_self_evolving(project) -> None:
    import mlflow
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags")).dags["train"]
    run = dag.test()
    assert str(run.state) == "success"
    metrics = json.loads((project / "reports/token_clean/metrics.json").read_text())
    assert metrics["mode"] == "fixed" and 0 < metrics["kept_fraction"] <= 0.6 + 1e-9
    assert (project / "reports/token_clean/tokens.html").read_text().count("<span") > 0
    cleaned = pq.read_table(project / "data/token_cleaned/records.parquet")
    assert cleaned.num_rows + pq.read_table(
        project / "data/token_cleaned/heldout.parquet").num_rows == N
    finetune = json.loads((project / "reports/finetune/metrics.json").read_text())
    assert finetune["train"]["steps"] == 3 and finetune["all_tokens"]["train"]["steps"] == 3
    assert np.isfinite(finetune["heldout_loss"]) and np.isfinite(finetune["base_heldout_loss"])
    assert (project / "models/finetune/model.safetensors").exists()

    client = mlflow.MlflowClient()
    registered = finetune["registered"]
    version = client.get_model_version(registered["name"], str(registered["version"]))
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    token_out = {o["path"]: o["md5"] for o in lock["token_clean"]["outs"]}
    assert version.tags["dvc.data/token_cleaned"] == token_out["data/token_cleaned"]
    assert version.tags["airflow.run_id"] == run.run_id
    assert len(version.tags["base_model.fingerprint"]) == 32 and version.tags["git.commit"]
    alias = client.get_model_version_by_alias(registered["name"], "candidate")
    assert alias.version == version.version
    runs = _stage_runs(run.run_id)
    # live curves: the loss of every logging step is in the run, not only the last one
    history = client.get_metric_history(runs["finetune"].info.run_id, "loss")
    assert len(history) >= 3
    assert client.get_metric_history(runs["token_clean"].info.run_id, "reference.loss")

    champion = _check_prune_and_promotion(project, client, registered["name"],
                                          runs["evaluate"].info.run_id)
    _check_model_inputs(project, client, runs)

    # a manual run with the Params form: its values reach the stages, DVC and MLflow
    manual = dag.test(run_conf={"mode": "self_evolving", "rho": 0.5, "min_speedup": 1000.0})
    assert str(manual.state) == "success"
    metrics = json.loads((project / "reports/token_clean/metrics.json").read_text())
    assert metrics["mode"] == "self_evolving" and metrics["rho"] == 0.5
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert lock["token_clean"]["params"]["params.yaml"]["token_clean"]["mode"] == "self_evolving"
    assert _stage_runs(manual.run_id)["token_clean"].data.params["token_clean.mode"] == (
        "self_evolving")
    newer = client.get_model_version_by_alias(registered["name"], "candidate")
    assert int(newer.version) == int(version.version) + 2  # the pruned model took one too
    evaluation = json.loads((project / "reports/evaluate/metrics.json").read_text())
    assert evaluation["gate"]["champion"] is None and not evaluation["gate"]["changed"]
    assert "1000.00x" in evaluation["gate"]["reasons"]["pruned"]
    assert client.get_model_version_by_alias(registered["name"], "champion").version == (
        champion.version)
    _check_model_inputs(project, client, _stage_runs(manual.run_id))  # the newer models

    # nothing changed: DVC skips both stages
    again = dag.test()
    assert str(again.state) == "success"
    assert all(r.data.tags["dvc.skipped"] == "true" for r in _stage_runs(again.run_id).values())
