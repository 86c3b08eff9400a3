"""The Airflow tasks every pipeline DAG is wired from: run one stage through the shared runner,
apply a manual run's Params, close the pipeline's MLflow run. Heavy libraries are imported
inside the tasks, never when a DAG file is parsed."""

from __future__ import annotations

from airflow.sdk import task


@task
def run_stage(stage: str, pipeline_name: str, **context) -> dict:
    """Run one pipeline stage through DVC and log it to MLflow; bad input is not retried.

    A stage with outlets (the curated-data Asset) emits its event only when its output
    changed, with the output's DVC hash, its row count and the MLflow run in the event's
    metadata; when DVC skipped it, the task ends as skipped and emits nothing.
    """
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from tasks.runner import InputRejected, lock_entry
    from tasks.runner import run_stage as run

    try:
        result = run(stage, pipeline_name=pipeline_name, dag_id=context["dag"].dag_id,
                     run_id=context["run_id"])
    except InputRejected as exc:
        raise AirflowFailException(str(exc)) from exc
    outlets = list(getattr(context["task"], "outlets", None) or [])
    if outlets and result["skipped"]:
        raise AirflowSkipException(f"{stage}: output unchanged, no new event on "
                                   f"{', '.join(a.name for a in outlets)}")
    for asset in outlets:
        outs = (lock_entry(stage) or {}).get("outs", [])
        context["outlet_events"][asset].extra = {
            "dvc_hash": outs[0]["md5"] if outs else None,
            "path": outs[0]["path"] if outs else None,
            "rows": result.get("rows"), "mlflow_run_id": result["mlflow_run_id"]}
    return result


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
