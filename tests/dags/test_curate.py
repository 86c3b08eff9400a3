"""DAG integrity, and DAG `curate` end to end with `dag.test()` in a temporary project folder:
real Airflow (SQLite), real DVC, real MLflow (SQLite store)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tasks.settings import PROJECT_ROOT


@pytest.fixture(scope="module")
def project(new_project, rated_demo) -> Path:
    """A fresh project with the demo data (300 records); ratings in the data, so that select
    runs with the column rater (the LLM raters have their own tests)."""
    return new_project(rated_demo, {"select": {"rater": "column"}})


def _dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT_ROOT / "dags"))


def test_dags_import_cleanly_and_every_task_retries(project):
    bag = _dagbag()
    assert bag.import_errors == {}
    assert "curate" in bag.dags
    for dag in bag.dags.values():
        for task in dag.tasks:
            assert task.retries >= 1, f"{dag.dag_id}.{task.task_id} has no retries"


def test_dag_files_import_nothing_heavy():
    code = ("import sys, runpy; runpy.run_path('dags/curate.py'); "
            "print(sorted({'mlflow', 'dvc', 'great_expectations', 'torch', 'transformers', "
            "'pandas'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def _lock(project: Path) -> dict:
    return yaml.safe_load((project / "dvc.lock").read_text())["stages"]["ingest"]


def _runs(run_id: str):
    import mlflow

    from tasks import lineage

    parent_id = lineage.pipeline_run("curate", "curate", run_id)
    client = mlflow.MlflowClient()
    children = client.search_runs([lineage.experiment_id()],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return client.get_run(parent_id), {c.data.tags["crediflow.stage"]: c for c in children}


def _check_curated_outputs(project: Path) -> dict:
    """Every curate stage wrote what it should; return the audit's metrics."""
    records = pq.read_table(project / "data/ingested/records.parquet")
    assert records.num_rows == 300
    assert set(records.column("label").to_pylist()) == {"harmless", "harmful"}
    assert pq.read_table(project / "data/ingested/rejected.parquet").num_rows == 0
    metrics = json.loads((project / "reports/ingest/metrics.json").read_text())
    assert metrics["rows_out"] == 300
    vectors = pq.read_table(project / "data/embeddings/embeddings.parquet")
    assert vectors.column("id").equals(records.column("id"))
    audited = pq.read_table(project / "data/audited/records.parquet")
    assert {"label_issue", "label_score", "suggested_label",
            "suggestion_confidence"} <= set(audited.column_names)
    audit = json.loads((project / "reports/audit/metrics.json").read_text())
    assert 0 <= audit["credibility"] <= 1 and len(audit["T"]) == 2
    assert (project / "reports/audit/transition_matrix.png").stat().st_size > 1000
    fixed = json.loads((project / "reports/fix/metrics.json").read_text())
    assert fixed["rows_out"] == 300 and fixed["against_truth"]["wrong_labels"] == 24
    changelog = pq.read_table(project / "data/fixed/changelog.parquet")
    assert changelog.num_rows == fixed["flagged"]
    return audit


def test_curate_end_to_end(project):
    dag = _dagbag().dags["curate"]

    run = dag.test()
    assert str(run.state) == "success"
    audit = _check_curated_outputs(project)

    lock = _lock(project)
    outs = {o["path"]: o["md5"] for o in lock["outs"]}
    deps = {d["path"]: d["md5"] for d in lock["deps"]}
    assert outs["data/ingested"].endswith(".dir")

    parent, children = _runs(run.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["airflow.run_id"] == run.run_id
    assert parent.data.tags["airflow.dag_id"] == "curate"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True,
                          text=True).stdout.strip()
    assert parent.data.tags["git.commit"] == head
    assert set(children) == {"ingest", "embed", "audit", "fix", "select"}
    chosen = pq.read_table(project / "data/selected/records.parquet")
    assert chosen.num_rows == 300 and sum(chosen.column("selected").to_pylist()) == 150
    # ratings came from a column: no score distribution to record
    assert {chosen.column(c).null_count for c in ("rating_argmax", "rating_expected")} == {300}
    assert (project / "reports/select/rating_histogram.png").exists()
    assert all(c.info.status == "FINISHED" for c in children.values())
    assert children["audit"].data.metrics["credibility"] == audit["credibility"]
    child = children["ingest"]
    assert child.data.tags["dvc.skipped"] == "false"
    assert child.data.metrics["rows_out"] == 300
    assert child.data.params["ingest.max_reject_fraction"] == "0.05"
    logged = {(d.dataset.name, [t.value for t in d.tags if t.key == "mlflow.data.context"][0]):
              d.dataset.digest for d in child.inputs.dataset_inputs}
    assert logged[("data/raw", "input")] == deps["data/raw"]
    assert logged[("data/ingested", "output")] == outs["data/ingested"]

    # nothing changed: DVC skips the stage, and says so in MLflow
    again = dag.test()
    assert str(again.state) == "success"
    _, children = _runs(again.run_id)
    assert set(children) == {"ingest", "embed", "audit", "fix", "select"}
    assert all(c.data.tags["dvc.skipped"] == "true" for c in children.values())
    assert _lock(project) == lock
    states = {ti.task_id: str(ti.state) for ti in again.get_task_instances()}
    assert states["select"] == "skipped"  # unchanged output: no event for DAG train


def test_what_a_stage_resolved_is_a_param_of_its_run(project):
    """Precision "auto" -> what it became on this device, next to the params.yaml value."""
    import mlflow

    from tasks import lineage

    if not (project / "data/embeddings/embeddings.parquet").exists():
        pytest.skip("needs the end-to-end run above")
    runs = mlflow.MlflowClient().search_runs(
        [lineage.experiment_id()], filter_string="tags.`crediflow.stage` = 'embed'")
    params = runs[-1].data.params  # the first run, which embedded
    assert params["embed.precision"] == "auto"
    assert params["resolved.precision"] in ("fp32", "bf16")
    assert params["resolved.device"] == "cpu"


def test_curate_bad_input_fails_and_keeps_previous_outputs(project):
    if not (project / "data/ingested/records.parquet").exists():
        pytest.skip("needs the successful run of test_curate_end_to_end first")
    before = (project / "data/ingested/records.parquet").read_bytes()
    lock = _lock(project)
    with (project / "data/raw/demo.jsonl").open("a") as fh:
        for i in range(30):
            fh.write(json.dumps({"prompt": f"p{i}", "response": "r", "label": "spicy"}) + "\n")
    try:
        run = _dagbag().dags["curate"].test()
        assert str(run.state) == "failed"
        assert (project / "data/ingested/records.parquet").read_bytes() == before
        assert _lock(project) == lock
        parent, children = _runs(run.run_id)
        assert parent.info.status == "FAILED"
        assert children["ingest"].info.status == "FAILED"
        assert "unknown label 'spicy'" in children["ingest"].data.tags["crediflow.error"]
    finally:
        lines = (project / "data/raw/demo.jsonl").read_text().splitlines()[:-30]
        (project / "data/raw/demo.jsonl").write_text("\n".join(lines) + "\n")
