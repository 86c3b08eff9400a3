"""DAG `curate`: new data is ingested, embedded, audited, fixed and selected.

Wiring only. The stages, their order, the schedule and the retries come from params.yaml;
each task runs its stage through the shared runner (DVC + MLflow). The last stage updates the
curated-data Asset, which schedules DAG `train`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Asset

from tasks.airflow_tasks import finish, run_stage
from tasks.config import pipeline

SPEC = pipeline("curate")
CURATED = Asset(name="crediflow_curated", uri="crediflow://curated")

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
        current = run_stage.override(task_id=stage, outlets=[CURATED] if last else [])(
            stage, SPEC.name)
        if previous is not None:
            previous >> current
        previous = current
    previous >> finish(SPEC.name, list(SPEC.stages))
