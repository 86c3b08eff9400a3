"""What a user sees in the Airflow and MLflow UIs, as settings a test can check: DAGs unpaused
at creation, pools, timeouts and retry backoff on the tasks, the failure callback, the "MLflow
run" link of a stage task, the experiment kind, the runs' source, user and Airflow URL, system
metrics on a stage run, and the whole dvc.lock on the pipeline run."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pytest
import yaml

from tasks.settings import PROJECT_ROOT, defaults

RUN_ID = "manual__2026-11-29T23:00:00+00:00"
STAGE_TASKS = {"curate": ("ingest", "embed", "audit", "fix", "select"),
               "train": ("token_clean", "finetune", "prune", "evaluate")}


@pytest.fixture(scope="module")
def project(new_project) -> Path:
    """A fresh project (code, params, git, DVC, Airflow's DB); no data needed."""
    return new_project(lambda root: None, {})


@pytest.fixture(scope="module")
def dags(project) -> dict:
    """The project's DAGs as Airflow parses them."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.dags


def test_dags_start_unpaused_without_catchup(dags):
    assert defaults()["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "False"
    assert set(STAGE_TASKS) <= set(dags)
    for dag in dags.values():
        assert dag.is_paused_upon_creation is False, dag.dag_id
        assert dag.catchup is False, dag.dag_id


def test_tasks_have_pools_timeouts_backoff_and_callback(dags):
    from tasks.airflow_tasks import on_stage_failure
    from tasks.config import airflow_settings, pipeline

    settings = airflow_settings()
    assert settings.gpu_stages == STAGE_TASKS["train"]
    for dag_id, stages in STAGE_TASKS.items():
        spec = pipeline(dag_id)
        for task in dags[dag_id].tasks:
            assert task.retries == spec.retries >= 1
            assert task.retry_exponential_backoff == spec.retry_backoff == 2.0
            assert task.max_retry_delay == timedelta(minutes=spec.max_retry_delay_minutes)
            assert on_stage_failure in task.on_failure_callback
            if task.task_id not in stages:
                assert task.pool == settings.workspace_pool, task.task_id
                continue
            expected_pool = (settings.gpu_pool if dag_id == "train" else
                             settings.workspace_pool)
            assert task.pool == expected_pool, task.task_id
            assert task.execution_timeout == timedelta(
                minutes=spec.stage_timeout_minutes(task.task_id))
    assert dags["curate"].get_task("select").execution_timeout == timedelta(minutes=240)
    assert dags["curate"].get_task("ingest").execution_timeout == timedelta(minutes=60)


def test_stage_tasks_carry_the_mlflow_link_through_serialization(dags):
    """The scheduler and the UI see the DAG serialized: the link must survive that."""
    from airflow.serialization.serialized_objects import DagSerialization

    for dag_id, stages in STAGE_TASKS.items():
        scheduler_dag = DagSerialization.deserialize_dag(
            DagSerialization.serialize_dag(dags[dag_id]))
        for stage in stages:
            links = scheduler_dag.get_task(stage).operator_extra_link_dict
            assert "MLflow run" in links, (dag_id, stage)
            assert links["MLflow run"].xcom_key == "_link_MlflowRunLink"


def test_pools_are_created_from_params(project):
    from airflow.models.pool import Pool

    from tasks.airflow_tasks import ensure_pools
    from tasks.config import airflow_settings

    settings = airflow_settings()
    assert ensure_pools() == {settings.workspace_pool: 1, settings.gpu_pool: 1}
    assert ensure_pools()  # a second time updates, nothing fails
    assert Pool.get_pool(settings.workspace_pool).slots == 1
    assert Pool.get_pool(settings.gpu_pool).slots == settings.gpu_pool_slots


@pytest.fixture(scope="module")
def stage_run(project) -> dict:
    """A pipeline run and a stage run (1.5 s long) as the runner makes them."""
    from tasks import lineage

    parent = lineage.pipeline_run("curate", "curate", RUN_ID)
    child = lineage.start_stage_run("ingest", parent)
    time.sleep(1.5)
    lineage.log_stage("ingest", parent, None, skipped=False, run_id=child)
    return {"parent": parent, "child": child}


def test_experiment_is_marked_as_model_development(stage_run):
    import mlflow

    from tasks import lineage

    experiment = mlflow.MlflowClient().get_experiment(lineage.experiment_id())
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_runs_carry_source_user_and_the_airflow_run_url(stage_run):
    import mlflow

    client = mlflow.MlflowClient()
    parent = client.get_run(stage_run["parent"]).data.tags
    child = client.get_run(stage_run["child"]).data.tags
    run_url = f"http://localhost:8080/dags/curate/runs/{quote(RUN_ID, safe='')}"
    assert parent["airflow.run_url"] == child["airflow.run_url"] == run_url
    assert child["airflow.task_url"] == f"{run_url}/tasks/ingest"
    assert parent["mlflow.source.name"] == "dags/curate.py"
    assert parent["mlflow.user"] and child["mlflow.user"] == parent["mlflow.user"]


def test_stage_run_has_system_metrics(stage_run):
    import mlflow

    metrics = mlflow.MlflowClient().get_run(stage_run["child"]).data.metrics
    assert "system/cpu_utilization_percentage" in metrics
    assert "system/system_memory_usage_megabytes" in metrics


def test_mlflow_link_of_a_task_instance(stage_run):
    from airflow.models.taskinstancekey import TaskInstanceKey

    from tasks import lineage
    from tasks.airflow_tasks import MlflowRunLink

    experiment = lineage.experiment_id()
    key = TaskInstanceKey(dag_id="curate", task_id="ingest", run_id=RUN_ID, try_number=1)
    assert MlflowRunLink().get_link(None, ti_key=key) == (
        f"http://localhost:5000/#/experiments/{experiment}/runs/{stage_run['child']}")
    other = TaskInstanceKey(dag_id="curate", task_id="embed", run_id=RUN_ID, try_number=1)
    assert MlflowRunLink().get_link(None, ti_key=other) == (
        f"http://localhost:5000/#/experiments/{experiment}")


def test_pipeline_run_records_the_whole_dvc_lock(project, stage_run):
    import mlflow

    from tasks import lineage

    lock = project / "dvc.lock"
    lock.write_text(yaml.safe_dump({"schema": "2.0", "stages": {"ingest": {"outs": []}}}))
    lineage.finish_pipeline_run(stage_run["parent"], failed=False)
    client = mlflow.MlflowClient()
    run = client.get_run(stage_run["parent"])
    assert run.info.status == "FINISHED"
    assert "dvc.lock" in [a.path for a in client.list_artifacts(stage_run["parent"])]
    local = mlflow.artifacts.download_artifacts(run_id=stage_run["parent"],
                                                artifact_path="dvc.lock")
    assert Path(local).read_bytes() == lock.read_bytes()
    assert len(run.data.tags["dvc.lock.md5"]) == 32


class _Recorder:
    """A stand-in notifier: remembers the contexts it was called with."""

    calls: list = []

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs

    def __call__(self, context: dict) -> None:
        _Recorder.calls.append((self.kwargs, context))


def test_failure_callback_logs_stage_log_and_run_and_notifies(project, stage_run, caplog,
                                                             monkeypatch):
    import sys

    from tasks import airflow_tasks

    monkeypatch.setitem(sys.modules, "crediflow_test_notifiers",
                        SimpleNamespace(Recorder=_Recorder))
    params_path = project / "params.yaml"
    original = params_path.read_text()
    values = yaml.safe_load(original)
    values["airflow"]["notifier"] = {"class": "crediflow_test_notifiers.Recorder",
                                     "kwargs": {"to": "team"}}
    params_path.write_text(yaml.safe_dump(values, sort_keys=False))
    ti = SimpleNamespace(dag_id="curate", run_id=RUN_ID, task_id="ingest", try_number=1,
                         map_index=-1, log_url="http://localhost:8080/dags/curate/...")
    context = {"ti": ti, "exception": RuntimeError("boom")}
    try:
        with caplog.at_level(logging.ERROR, logger="crediflow.airflow"):
            airflow_tasks.on_stage_failure(context)
    finally:
        params_path.write_text(original)
    message = caplog.text
    assert "stage ingest of DAG curate" in message and "boom" in message
    assert "task_id=ingest/attempt=1.log" in message
    assert f"/runs/{stage_run['child']}" in message
    assert _Recorder.calls == [({"to": "team"}, context)]


def test_a_second_run_waits_for_the_workspace(project):
    from tasks.workspace import workspace_lock

    events: list[tuple[str, float]] = []

    def hold(name: str, seconds: float) -> None:
        with workspace_lock(name):
            events.append((f"{name} in", time.monotonic()))
            time.sleep(seconds)
            events.append((f"{name} out", time.monotonic()))

    first = threading.Thread(target=hold, args=("first", 0.5))
    first.start()
    time.sleep(0.1)
    hold("second", 0)
    first.join()
    assert [name for name, _ in events] == ["first in", "first out", "second in", "second out"]
    assert (project / ".dvc/tmp/crediflow-workspace.lock").read_text() == "second"


def test_task_log_path_is_where_airflow_reads_it():
    """The demo's dag.test() copies task logs here: Airflow's own file name for the task."""
    import os

    from airflow.configuration import conf

    from tasks.airflow_tasks import task_log_path

    path = task_log_path("curate", RUN_ID, "ingest", 2)
    assert path == (Path(conf.get("logging", "base_log_folder")) / "dag_id=curate"
                    / f"run_id={RUN_ID}" / "task_id=ingest" / "attempt=2.log")
    assert str(path).startswith(os.environ["AIRFLOW_HOME"])


def test_a_dag_test_run_keeps_links_and_task_logs():
    """After test_curate's `dag.test()` runs in this session (the Airflow DB and logs are the
    session's): each stage task pushed its "MLflow run" link, and its log file is where the UI
    reads it. Skipped when this module runs alone."""
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    from tasks import lineage
    from tasks.airflow_tasks import task_log_path

    runs = [r for r in DagRun.find(dag_id="curate") if str(r.state) == "success"]
    if not runs:
        pytest.skip("needs a dag.test() run of DAG curate earlier in this session")
    run = runs[0]
    with create_session() as session:
        links = {x.task_id: XComModel.deserialize_value(x) for x in session.query(XComModel)
                 .filter(XComModel.dag_id == "curate", XComModel.run_id == run.run_id,
                         XComModel.key == "_link_MlflowRunLink")}
    assert set(links) == set(STAGE_TASKS["curate"])
    child = lineage.find_stage_run("curate", run.run_id, "ingest")
    assert links["ingest"].endswith(f"/runs/{child}")
    log_file = task_log_path("curate", run.run_id, "ingest", 1)
    text = log_file.read_text()
    assert "Running stage 'ingest'" in text or "python -m tasks.ingest" in text, text[-2000:]
