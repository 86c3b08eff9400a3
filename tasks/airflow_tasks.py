"""The Airflow tasks every pipeline DAG is wired from: run one stage through the shared runner,
apply a manual run's Params, close the pipeline's MLflow run. Heavy libraries are imported
inside the tasks, never when a DAG file is parsed."""

from __future__ import annotations

from airflow.sdk import task


@task
def run_stage(stage: str, pipeline_name: str, **context) -> dict:
    """Run one pipeline stage through DVC and log it to MLflow; bad input is not retried."""
    from airflow.sdk.exceptions import AirflowFailException

    from tasks.runner import InputRejected
    from tasks.runner import run_stage as run

    try:
        return run(stage, pipeline_name=pipeline_name, dag_id=context["dag"].dag_id,
                   run_id=context["run_id"])
    except InputRejected as exc:
        raise AirflowFailException(str(exc)) from exc


@task
def apply_params(**context) -> dict:
    """Write a manual run's Params form values (those set) into params.yaml, checked by the
    stages' configs first, so that DVC sees and records them; return what changed."""
    from airflow.sdk.exceptions import AirflowFailException

    from crediflow.errors import CrediflowError
    from tasks.overrides import apply_overrides

    try:
        return apply_overrides(dict(context["params"]))
    except CrediflowError as exc:
        raise AirflowFailException(str(exc)) from exc


@task(trigger_rule="all_done")
def finish(pipeline_name: str, stages: list[str], **context) -> str:
    """Close the MLflow pipeline run; fail (without retrying) when any stage did not finish."""
    from airflow.sdk.exceptions import AirflowFailException

    from tasks.runner import StageFailed
    from tasks.runner import finish as close

    try:
        return close(pipeline_name=pipeline_name, dag_id=context["dag"].dag_id,
                     run_id=context["run_id"], expected_stages=tuple(stages))
    except StageFailed as exc:
        raise AirflowFailException(str(exc)) from exc
