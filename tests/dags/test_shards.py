"""DAG `curate` with shards: with `pipelines.curate.shards.<stage>` > 1 a dynamically mapped
task fills the stage's cache between the stage's upstream and the stage, in Airflow's default
pool; with 1 the DAG has no such task."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from tasks.settings import PROJECT_ROOT

SHARDS = {"embed": 2, "select": 3}


def _curate_dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "curate.py"))
    assert bag.import_errors == {}
    return bag.dags["curate"]


@pytest.fixture(scope="module")
def project(build_project) -> Path:
    """A project (no data needed) whose params shard embed in 2 and select in 3."""
    pipelines = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["pipelines"]
    curate = pipelines["curate"] | {"shards": SHARDS}
    return build_project(lambda root: None, {"pipelines": {**pipelines, "curate": curate}})


@pytest.fixture(scope="module")
def dag(project):
    return _curate_dag()


def test_each_sharded_stage_has_a_mapped_task_between_its_upstream_and_itself(dag) -> None:
    order = ["ingest", "embed_shards", "embed", "audit", "fix", "select_shards", "select",
             "finish"]
    assert sorted(dag.task_ids) == sorted(order)
    for before, after in zip(order, order[1:], strict=False):
        assert dag.get_task(after).upstream_task_ids == {before}, after
    for stage, count in SHARDS.items():
        task = dag.get_task(f"{stage}_shards")
        assert task.is_mapped
        assert task.partial_kwargs["op_kwargs"] == {"stage": stage, "of": count}
        assert task.op_kwargs_expand_input.value == {"shard": list(range(count))}


def test_shard_tasks_use_the_default_pool_the_stage_timeout_and_the_dag_retries(dag) -> None:
    from tasks.airflow_tasks import SHARD_POOL, on_stage_failure
    from tasks.config import airflow_settings, pipeline

    spec = pipeline("curate")
    assert SHARD_POOL == "default_pool" != airflow_settings().workspace_pool
    for stage in SHARDS:
        task = dag.get_task(f"{stage}_shards")
        assert task.pool == SHARD_POOL
        assert task.execution_timeout == timedelta(minutes=spec.stage_timeout_minutes(stage))
        assert task.retries == spec.retries
        callbacks = task.on_failure_callback  # a mapped operator keeps the function as given
        assert on_stage_failure in (callbacks if isinstance(callbacks, list) else [callbacks])
        assert dag.get_task(stage).pool == airflow_settings().workspace_pool


def test_the_mapping_survives_serialization(dag) -> None:
    """The scheduler expands the task from the serialized DAG."""
    from airflow.serialization.serialized_objects import DagSerialization

    scheduler_dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    for stage, count in SHARDS.items():
        task = scheduler_dag.get_task(f"{stage}_shards")
        assert task.is_mapped and task.get_parse_time_mapped_ti_count() == count
        assert task.downstream_task_ids == {stage}


def test_one_shard_leaves_the_dag_as_it_was(project, monkeypatch) -> None:
    monkeypatch.setenv("CREDIFLOW_HOME", str(PROJECT_ROOT))  # the shipped params: 1 and 1
    dag = _curate_dag()
    assert dag.task_ids == ["ingest", "embed", "audit", "fix", "select", "finish"]
    assert not any(task.is_mapped for task in dag.tasks)
