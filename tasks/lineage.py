"""MLflow lineage: a parent run per pipeline run, a child run per stage.

A stage's child run carries its parameters, numeric metrics, report files, and every data
dependency and output as an MLflow dataset whose digest is the DVC hash from dvc.lock.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tasks.config import load_params
from tasks.settings import apply, project_root

log = logging.getLogger("crediflow.lineage")

PARENT_TAGS = ("crediflow.pipeline", "airflow.dag_id", "airflow.run_id")
# The stage's child run, opened before the stage starts: its process logs live metrics there.
STAGE_RUN_ENV = "CREDIFLOW_STAGE_RUN_ID"
_ARTIFACT_MAX_BYTES = 10 << 20


def mlflow_module():
    """mlflow, imported with the project's environment applied and alembic's logs quiet."""
    apply()
    logging.getLogger("alembic").setLevel(logging.WARNING)
    import mlflow

    return mlflow


def experiment_id(root: Path | None = None) -> str:
    """The project's MLflow experiment, created with its artifacts inside the project folder."""
    mlflow = mlflow_module()
    root = root or project_root()
    name = load_params(root)["mlflow"]["experiment"]
    found = mlflow.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    return mlflow.create_experiment(name, artifact_location=(root / "mlartifacts").as_uri())


def git_commit(root: Path | None = None) -> tuple[str, bool]:
    """(HEAD commit, whether tracked files changed since); ('unknown', False) outside git."""
    root = root or project_root()
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown", False
    return head, bool(dirty)


def pipeline_run(pipeline: str, dag_id: str, run_id: str) -> str:
    """The MLflow run id of this pipeline run, created on first use."""
    mlflow = mlflow_module()
    client = mlflow.MlflowClient()
    exp = experiment_id()
    found = client.search_runs(
        [exp],
        filter_string=f"tags.`crediflow.role` = 'pipeline' and tags.`airflow.dag_id` = '{dag_id}' "
        f"and tags.`airflow.run_id` = '{run_id}'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    commit, dirty = git_commit()
    tags = {
        "crediflow.role": "pipeline",
        "crediflow.pipeline": pipeline,
        "airflow.dag_id": dag_id,
        "airflow.run_id": run_id,
        "git.commit": commit,
        "git.dirty": str(dirty).lower(),
        "mlflow.source.git.commit": commit,
    }
    return client.create_run(exp, run_name=f"{dag_id} {run_id}", tags=tags).info.run_id


def finish_pipeline_run(parent_id: str, failed: bool) -> None:
    """Close the parent run as FINISHED or FAILED."""
    mlflow_module().MlflowClient().set_terminated(parent_id, "FAILED" if failed else "FINISHED")


def finished_stages(parent_id: str) -> set[str]:
    """Stages logged under `parent_id` whose child run FINISHED."""
    runs = mlflow_module().MlflowClient().search_runs(
        [experiment_id()], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {r.data.tags.get("crediflow.stage") for r in runs if r.info.status == "FINISHED"}


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys."""
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _metric_key(key: str) -> str:
    """MLflow allows only word characters, - . : / and spaces in metric names; "a->b" (a
    change from a to b) becomes "a_to_b"."""
    return re.sub(r"[^\w\-.:/ ]", "_", key.replace("->", "_to_"))[:250]


def _is_data(path: str) -> bool:
    return not path.endswith((".py", ".yaml", ".yml", ".toml"))


def _stage_tags(client: Any, stage: str, parent_id: str) -> dict[str, str]:
    parent_tags = client.get_run(parent_id).data.tags
    tags = {k: parent_tags[k] for k in (*PARENT_TAGS, "git.commit") if k in parent_tags}
    return tags | {"crediflow.role": "stage", "crediflow.stage": stage,
                   "mlflow.parentRunId": parent_id}


def start_stage_run(stage: str, parent_id: str) -> str:
    """Open the stage's child run before the stage starts (real durations, live metrics)."""
    client = mlflow_module().MlflowClient()
    return client.create_run(experiment_id(), run_name=stage,
                             tags=_stage_tags(client, stage, parent_id)).info.run_id


def log_stage(
    stage: str,
    parent_id: str,
    lock: dict | None,
    *,
    skipped: bool,
    metrics_files: Iterable[str] = (),
    error: str | None = None,
    run_id: str | None = None,
) -> str:
    """Record one stage as a child run of `parent_id` (the one `start_stage_run` opened, when
    given); return the child's run id."""
    mlflow = mlflow_module()
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    root = project_root()
    client = mlflow.MlflowClient()
    tags = _stage_tags(client, stage, parent_id) | {"dvc.skipped": str(skipped).lower()}
    status = "FAILED" if error else "FINISHED"
    opened = (mlflow.start_run(run_id=run_id) if run_id else
              mlflow.start_run(experiment_id=experiment_id(), run_name=stage,
                               parent_run_id=parent_id))
    with opened as run:
        mlflow.set_tags(tags)
        if error:
            mlflow.set_tag("crediflow.error", error[-4000:])
        lock = lock or {}
        params = flatten(lock.get("params", {}).get("params.yaml", {}))
        if params:
            mlflow.log_params({k: json.dumps(v) if isinstance(v, list | dict) else v
                               for k, v in params.items()})
        for context, entries in (("input", lock.get("deps", [])), ("output", lock.get("outs", []))):
            for entry in entries:
                if not _is_data(entry["path"]):
                    continue
                source = resolve_dataset_source(str(root / entry["path"]))
                dataset = MetaDataset(source, name=entry["path"], digest=entry["md5"])
                mlflow.log_input(dataset, context=context)
                if context == "output":
                    client.set_tag(parent_id, f"dvc.{entry['path']}", entry["md5"])
                    path = root / entry["path"]
                    if path.is_file() and path.stat().st_size <= _ARTIFACT_MAX_BYTES:
                        mlflow.log_artifact(str(path),
                                            artifact_path=str(Path(entry["path"]).parent))
        numbers, resolved = {}, {}
        for name in metrics_files:
            path = root / name
            if path.is_file():
                report = json.loads(path.read_text())
                # what a stage resolved at run time (e.g. precision "auto" -> "fp32") is a
                # parameter of the run, next to the params.yaml values it came from
                resolved |= {f"resolved.{k}": str(v) for k, v in
                             flatten(report.pop("resolved", None) or {}).items()}
                numbers |= {_metric_key(k): float(v) for k, v in flatten(report).items()
                            if isinstance(v, int | float) and not isinstance(v, bool)}
        if resolved:
            mlflow.log_params(resolved)
        if numbers:
            mlflow.log_metrics(numbers)
        mlflow.log_dict(lock, "dvc_stage.json")
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id
