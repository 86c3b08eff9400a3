"""DAG `curate`: new data is ingested, embedded, audited, fixed and selected.

Wiring only. The stages, their order, the schedule, the retries (exponential backoff up to a
maximum delay), each stage's timeout and pool come from params.yaml; each task runs its stage
through the shared runner (DVC + MLflow) and links to its MLflow run. The last stage updates the
curated-data Asset, which schedules DAG `train`. The DAG starts unpaused: it runs on its
schedule from the first `make airflow` on.

A stage with `pipelines.curate.shards.<stage>` > 1 (embed, select) is preceded by a dynamically
mapped task `<stage>_shards`, one instance per shard, which fills the stage's cache (embeddings,
ratings) after the stage's upstream; the stage then finds every row cached. With 1 (the default)
the DAG has no such task.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG

from tasks.airflow_tasks import curated_asset, default_args, finish, shard_task, stage_task
from tasks.config import pipeline

SPEC = pipeline("curate")
CURATED = curated_asset()

with DAG(
    dag_id="curate",
    description="Ingest and curate SFT data (crediflow)",
    schedule=SPEC.schedule,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    is_paused_upon_creation=False,
    max_active_runs=1,
    default_args=default_args(SPEC),
    tags=["crediflow"],
) as dag:
    previous = None
    for i, stage in enumerate(SPEC.stages):
        last = i == len(SPEC.stages) - 1
        current = stage_task(SPEC, stage, outlets=[CURATED] if last else [])
        if SPEC.stage_shards(stage) > 1:  # the shards fill the stage's cache first
            shards = shard_task(SPEC, stage)
            if previous is not None:
                previous >> shards
            previous = shards
        if previous is not None:
            previous >> current
        previous = current
    previous >> finish(SPEC.name, list(SPEC.stages))
