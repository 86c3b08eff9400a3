"""DAG `train`: token_clean -> finetune -> prune -> evaluate (and promotion) on the curated
data.

Scheduled by the curated-data Asset that DAG `curate` updates, or triggered by hand with the
Params form (base model, rho, mode, epochs, learning rate, LoRA). A manual run's values are
written into params.yaml before the stages run (as `dvc exp run -S` does), so DVC records
them in dvc.lock and MLflow in each stage's params; a run whose values and inputs did not
change is skipped by DVC stage by stage. Retries, timeouts and pools (the GPU pool for the
GPU-bound stages) come from params.yaml, and so does the runner of each GPU-bound stage (local,
docker or kubernetes: tasks/containers.py); the DAG starts unpaused. Wiring only.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param

from tasks.airflow_tasks import apply_params, curated_asset, default_args, finish
from tasks.config import pipeline
from tasks.containers import runner_settings, stage_task
from tasks.overrides import FORM, form_schema

SPEC = pipeline("train")
RUNNERS = runner_settings()
CURATED = curated_asset()

with DAG(
    dag_id="train",
    description="Token cleaning, fine-tuning, layer pruning, evaluation and promotion "
                "(crediflow)",
    schedule=[CURATED],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    is_paused_upon_creation=False,
    max_active_runs=1,
    default_args=default_args(SPEC),
    params={name: Param(None, type=[kind, "null"], description=help_text,
                        **form_schema(name))
            for name, (kind, help_text) in FORM.items()},
    tags=["crediflow"],
) as dag:
    previous = apply_params()
    for stage in SPEC.stages:
        current = stage_task(stage, SPEC, RUNNERS)
        previous >> current
        previous = current
    previous >> finish(SPEC.name, list(SPEC.stages))
