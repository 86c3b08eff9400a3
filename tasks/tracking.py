"""MLflow from inside a stage's process: live metrics into the child run that the runner opened
before the stage started (`CREDIFLOW_STAGE_RUN_ID`), models into the registry, and the logged
models a stage read as its run's model inputs (MLflow 3's `LoggedModelInput`).

A stage run by `dvc repro` alone has no such run: it logs nothing live, and a model it makes
is registered under a run of its own.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tasks.config import load_params
from tasks.lineage import STAGE_RUN_ENV, experiment_id, flatten, git_commit, mlflow_module
from tasks.runner import lock_entry

log = logging.getLogger("crediflow.tracking")


def stage_run_id() -> str | None:
    """The child run the runner opened for this stage, if any."""
    return os.environ.get(STAGE_RUN_ENV) or None


def live_logger(prefix: str = "") -> Callable[[dict], None] | None:
    """A function that logs a step's numbers (loss, learning rate, ...) to the stage's run
    right away, so the curves grow while the stage runs; None without a stage run. After a
    failed call (the tracking server gone, once MLflow's own retries are spent) it stops
    logging: training goes on without waiting for MLflow at every step."""
    run_id = stage_run_id()
    if run_id is None:
        return None
    mlflow = mlflow_module()
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    failed: list[str] = []

    def log_step(values: dict) -> None:
        if failed:
            return
        step = int(values.get("step", 0))
        now = int(time.time() * 1000)
        metrics = [Metric(f"{prefix}{k}", float(v), now, step) for k, v in values.items()
                   if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)]
        try:
            client.log_batch(run_id, metrics=metrics)
        except Exception as exc:  # noqa: BLE001 - tracking must never stop a training run
            failed.append(str(exc))
            log.warning("could not log live metrics to MLflow (no more live metrics for this "
                        "stage): %s", exc)

    return log_step


def stage_run(name: str) -> Any:
    """The stage's run as an active MLflow run (a context manager); a run of its own, named
    `name`, when the stage runs without one (plain `dvc repro`)."""
    mlflow = mlflow_module()
    run_id = stage_run_id()
    return (mlflow.start_run(run_id=run_id) if run_id else
            mlflow.start_run(experiment_id=experiment_id(), run_name=name))


def log_model_inputs(run_id: str, model_ids: Iterable[str]) -> list[str]:
    """Record logged models (by model id) as inputs of run `run_id`: the models a stage read
    (MLflow's run page lists them under "Logged models", marked as inputs). A model the run
    already has as an input or an output is not added again; return the ids added."""
    mlflow = mlflow_module()
    from mlflow.entities import LoggedModelInput

    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    known = {m.model_id for m in (run.inputs.model_inputs if run.inputs else [])}
    known |= {m.model_id for m in (run.outputs.model_outputs if run.outputs else [])}
    new = [model_id for model_id in dict.fromkeys(model_ids) if model_id and model_id not in known]
    if new:
        client.log_inputs(run_id, models=[LoggedModelInput(model_id) for model_id in new])
    return new


def model_inputs(run_id: str) -> list[str]:
    """The logged models run `run_id` records as its inputs (model ids)."""
    run = mlflow_module().MlflowClient().get_run(run_id)
    return [m.model_id for m in (run.inputs.model_inputs if run.inputs else [])]


def register_model(folder: Path, *, name: str, tags: dict[str, str], aliases: tuple[str, ...],
                   description: str = "", inputs: tuple[str, ...] = ()) -> dict[str, Any]:
    """Log the saved model in `folder` with MLflow's transformers flavour (safetensors) to the
    stage's run (the run's model output), record the logged models it was made from
    (`inputs`, model ids) as the run's model inputs, register it as a new version of `name`
    with `tags`, and point `aliases` at it; return the version, run, URI and model id."""
    mlflow = mlflow_module()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    with stage_run(f"{name} model") as run:
        log_model_inputs(run.info.run_id, inputs)
        info = mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tokenizer}, name="model",
            task="text-generation", save_pretrained=True,
            pip_requirements=["torch", "transformers", "safetensors"])
    client = mlflow.MlflowClient()
    version = mlflow.register_model(info.model_uri, name, tags=tags)
    if description:
        client.update_model_version(name, version.version, description=description)
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version.version)
    return {"name": name, "version": int(version.version), "run_id": run.info.run_id,
            "model_uri": info.model_uri, "model_id": info.model_id, "aliases": list(aliases)}


def lineage_tags(lock: dict, upstream: tuple[str, ...], extra: dict[str, str]) -> dict[str, str]:
    """Tags naming the DVC hash of every output of the `upstream` stages (from dvc.lock), the
    git commit, and `extra` (base model fingerprint, Airflow run, ...)."""
    stages = lock.get("stages", {})
    tags = {}
    for stage in upstream:
        for out in stages.get(stage, {}).get("outs", []):
            tags[f"dvc.{out['path']}"] = out.get("md5", "")
    commit, dirty = git_commit()
    tags |= {"git.commit": commit, "git.dirty": str(dirty).lower()}
    return tags | {k: str(v) for k, v in flatten(extra).items()}


def register_stage_model(folder: Path, *, stage: str, upstream: tuple[str, ...],
                         extra: dict[str, str], aliases: tuple[str, ...],
                         description: str, inputs: tuple[str, ...] = ()) -> dict[str, Any]:
    """Register the model a stage published in `folder` under params.yaml's
    `mlflow.registered_model`, tagged with the DVC hash of every `upstream` output, the git
    commit, the Airflow run and `extra`; `inputs` are the logged models (model ids) it was
    made from, recorded as the stage run's model inputs."""
    mlflow = mlflow_module()
    run_id = stage_run_id()
    airflow_run = (mlflow.MlflowClient().get_run(run_id).data.tags.get("airflow.run_id", "")
                   if run_id else "")
    lock = {"stages": {s: lock_entry(s) or {} for s in upstream}}
    tags = lineage_tags(lock, upstream, {"airflow.run_id": airflow_run, "crediflow.stage": stage,
                                         **extra})
    name = load_params()["mlflow"].get("registered_model", "crediflow-sft")
    return register_model(Path(folder), name=name, tags=tags, aliases=aliases,
                          description=description, inputs=inputs)


def reported_model_id(report: Path) -> str | None:
    """The logged model a stage registered, as its report (`metrics.json`, key `registered`)
    names it; None when the report or the id is missing (a report from before MLflow 3)."""
    import json

    if not report.is_file():
        return None
    registered = json.loads(report.read_text()).get("registered")
    model_id = registered.get("model_id") if isinstance(registered, dict) else None
    return str(model_id) if model_id else None
