"""DAG `curate`: new data is ingested (and, as stages land, audited, fixed and selected).

Wiring only. The stages, their order, the schedule and the retries come from params.yaml;
each task runs its stage through the shared runner (DVC + MLflow). Heavy libraries are
imported inside the tasks, never at parse time.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Asset, task

from tasks.config import pipeline

SPEC = pipeline("curate")
CURATED = Asset(name="crediflow_curated", uri="crediflow://curated")


@task
def run_stage(stage: str, **context) -> dict:
    """Run one pipeline stage through DVC and log it to MLflow; bad input is not retried."""
    from airflow.sdk.exceptions import AirflowFailException

    from tasks.runner import InputRejected
    from tasks.runner import run_stage as run

    try:
        return run(stage, pipeline_name=SPEC.name, dag_id=context["dag"].dag_id,
                   run_id=context["run_id"])
    except InputRejected as exc:
        raise AirflowFailException(str(exc)) from exc


@task(trigger_rule="all_done")
def finish(**context) -> str:
    """Close the MLflow pipeline run; fail (without retrying) when any stage did not finish."""
    from airflow.sdk.exceptions import AirflowFailException

    from tasks.runner import StageFailed
    from tasks.runner import finish as close

    try:
        return close(pipeline_name=SPEC.name, dag_id=context["dag"].dag_id,
                     run_id=context["run_id"], expected_stages=SPEC.stages)
    except StageFailed as exc:
        raise AirflowFailException(str(exc)) from exc


with DAG(
    dag_id="curate",
    description="Ingest and curate SFT data (crediflow)",
    schedule=SPEC.schedule,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": SPEC.retries,
                  "retry_delay": timedelta(minutes=SPEC.retry_delay_minutes)},
    tags=["crediflow"],
) as dag:
    previous = None
    for i, stage in enumerate(SPEC.stages):
        last = i == len(SPEC.stages) - 1
        current = run_stage.override(task_id=stage, outlets=[CURATED] if last else [])(stage)
        if previous is not None:
            previous >> current
        previous = current
    previous >> finish()
