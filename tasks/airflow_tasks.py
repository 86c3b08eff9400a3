"""The Airflow tasks every pipeline DAG is wired from: run one stage through the shared runner,
apply a manual run's Params, close the pipeline's MLflow run; and what the DAGs give each of
them: pools, timeouts, retries with exponential backoff, a failure callback, and a link from a
stage task to its MLflow run. Heavy libraries are imported inside the tasks, never when a DAG
file is parsed.

`python -m tasks.airflow_tasks pools` creates (or updates) the pools of params.yaml's `airflow`
section in Airflow's database; `make airflow` and `make demo` run it after `airflow db migrate`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import Asset, BaseOperatorLink, task

from tasks.config import PipelineSpec, airflow_settings

log = logging.getLogger("crediflow.airflow")
LINK_NAME = "MLflow run"


class MlflowRunLink(BaseOperatorLink):
    """The "MLflow run" button of a stage task in the Airflow UI: the stage's MLflow run, or the
    experiment when the stage opened none."""

    name = LINK_NAME

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        """The MLflow UI URL of the run of stage `ti_key.task_id` in Airflow run
        `ti_key.run_id` (the newest, after retries)."""
        from tasks import lineage

        try:  # one quick try: the UI must not wait minutes on a server that is down
            lineage.check_tracking_server(attempts=1, timeout_s=3)
        except lineage.TrackingUnavailable:
            return lineage.ui_url()
        experiment = lineage.experiment_id()
        run = lineage.find_stage_run(ti_key.dag_id, ti_key.run_id, ti_key.task_id)
        if run is None:
            return f"{lineage.ui_url()}/#/experiments/{experiment}"
        return lineage.run_url(run, experiment)


def task_log_path(dag_id: str, run_id: str, task_id: str, try_number: int,
                  map_index: int = -1) -> Path:
    """Where Airflow's UI reads a task's log (the default `log_filename_template` under
    `base_log_folder`)."""
    try:
        from airflow.configuration import conf

        base = conf.get("logging", "base_log_folder")
    except ImportError:  # a worker with the task SDK only
        base = os.environ.get("AIRFLOW__LOGGING__BASE_LOG_FOLDER") or \
            str(Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser() / "logs")
    mapped = f"map_index={map_index}/" if map_index >= 0 else ""
    return (Path(base) / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
            / f"{mapped}attempt={try_number}.log")


def _ti_log_path(ti: Any) -> Path:
    map_index = getattr(ti, "map_index", -1)
    return task_log_path(ti.dag_id, ti.run_id, ti.task_id, int(ti.try_number or 1),
                         -1 if map_index is None else int(map_index))


class _Tee(io.TextIOBase):
    """A text stream that writes to several streams."""

    def __init__(self, *streams: Any) -> None:
        super().__init__()
        self.streams = streams

    def write(self, text: str) -> int:
        """Write `text` to every stream."""
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        """Flush every stream."""
        for stream in self.streams:
            stream.flush()


@contextlib.contextmanager
def task_log_file(context: dict) -> Iterator[None]:
    """Keep the task's log where the Airflow UI finds it when nothing else does: `dag.test()`
    (what `make demo` runs) runs tasks in its own process and writes no log files, so what the
    task prints and logs is copied into that file. Under a scheduler the supervisor has created
    the file already, and this does nothing."""
    ti = context.get("ti")
    path = _ti_log_path(ti) if ti is not None else None
    if path is None or path.exists():
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(
            logging.Formatter("[%(asctime)s] %(levelname)s %(name)s - %(message)s"))
        handler.setLevel(logging.INFO)
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            with contextlib.redirect_stdout(_Tee(sys.stdout, fh)):
                yield
        finally:
            root.removeHandler(handler)


def make_notifier() -> Any:
    """The Airflow notifier of `airflow.notifier` in params.yaml ({class, kwargs}), or None."""
    spec = airflow_settings().notifier
    if not spec:
        return None
    module, _, name = str(spec["class"]).rpartition(".")
    return getattr(importlib.import_module(module), name)(**(spec.get("kwargs") or {}))


def on_stage_failure(context: dict) -> None:
    """A failed task's callback: log the stage, where its log is and its MLflow run, then
    notify through the notifier of params.yaml when one is configured."""
    ti = context["ti"]
    try:
        from tasks import lineage

        lineage.check_tracking_server(attempts=1, timeout_s=5)  # not MLflow's minutes of retries
        run = lineage.find_stage_run(ti.dag_id, ti.run_id, ti.task_id)
        mlflow_run = lineage.run_url(run) if run else "none (the stage opened no run)"
    except Exception as exc:  # noqa: BLE001 - a callback must report, not fail
        mlflow_run = f"unknown ({exc})"
    log.error("crediflow: stage %s of DAG %s run %s failed (try %s): %s\n  log: %s (%s)\n"
              "  MLflow run: %s", ti.task_id, ti.dag_id, ti.run_id, ti.try_number,
              context.get("exception"), getattr(ti, "log_url", "-"), _ti_log_path(ti),
              mlflow_run)
    try:
        notifier = make_notifier()
        if notifier is not None:
            notifier(context)
    except Exception:  # noqa: BLE001 - a broken notifier must not hide the failure
        log.exception("crediflow: the notifier of params.yaml (airflow.notifier) failed")


def default_args(spec: PipelineSpec) -> dict[str, Any]:
    """The arguments every task of a pipeline's DAG shares: retries with exponential backoff
    up to a maximum delay, the workspace pool, and the failure callback."""
    return {
        "retries": spec.retries,
        "retry_delay": timedelta(minutes=spec.retry_delay_minutes),
        "retry_exponential_backoff": spec.retry_backoff,
        "max_retry_delay": timedelta(minutes=spec.max_retry_delay_minutes),
        "pool": airflow_settings().workspace_pool,
        "on_failure_callback": on_stage_failure,
    }


def stage_task(spec: PipelineSpec, stage: str, outlets: Iterable[Any] = ()) -> Any:
    """The task that runs `stage` of pipeline `spec`: in its pool (the GPU pool for GPU-bound
    stages), with its execution timeout, and a link to its MLflow run."""
    minutes = spec.stage_timeout_minutes(stage)
    current = run_stage.override(
        task_id=stage,
        pool=airflow_settings().pool(stage),
        execution_timeout=timedelta(minutes=minutes) if minutes else None,
        outlets=list(outlets),
    )(stage, spec.name)
    current.operator.operator_extra_links = [MlflowRunLink()]
    return current


def _run(stage: str, pipeline_name: str, context: dict) -> dict:
    """Run the stage through the runner; emit the outlets' events."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from tasks.runner import InputRejected, lock_entry
    from tasks.runner import run_stage as run

    dag_id = context["dag"].dag_id
    try:
        # the runner holds the workspace lock (tasks/workspace.py) while the stage runs
        result = run(stage, pipeline_name=pipeline_name, dag_id=dag_id, run_id=context["run_id"])
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
def run_stage(stage: str, pipeline_name: str, **context) -> dict:
    """Run one pipeline stage through DVC and log it to MLflow; bad input is not retried.

    A stage with outlets (the curated-data Asset) emits its event only when its output
    changed, with the output's DVC hash, its row count and the MLflow run in the event's
    metadata; when DVC skipped it, the task ends as skipped and emits nothing.
    """
    with task_log_file(context):
        return _run(stage, pipeline_name, context)


# The pool of the mapped shard tasks (see `shard_task`): Airflow's own, not the workspace's.
SHARD_POOL = "default_pool"


def shard_task(spec: PipelineSpec, stage: str) -> Any:
    """The dynamically mapped task that fills `stage`'s cache ahead of it, one task instance per
    shard (`pipelines.<dag>.shards.<stage>` of them), with the stage's timeout.

    The shards only read the workspace (the stage's input) and add files to the
    content-addressed caches, so they neither take the workspace pool's single slot (there they
    would run one at a time, and queue behind any other run's stage) nor the workspace lock:
    they run in Airflow's `default_pool`, as many at once as the executor's parallelism allows.
    """
    count = spec.stage_shards(stage)
    minutes = spec.stage_timeout_minutes(stage)
    return fill_shard.override(
        task_id=f"{stage}_shards",
        pool=SHARD_POOL,
        execution_timeout=timedelta(minutes=minutes) if minutes else None,
    ).partial(stage=stage, of=count).expand(shard=list(range(count)))


@task
def fill_shard(stage: str, of: int, shard: int, **context) -> dict:
    """Compute shard `shard` of `of` of a stage's rows into its cache (`python -m tasks.shards`,
    in its own process, with this machine's CPUs divided among the shards: they run at once
    under the LocalExecutor, and oversubscribed torch threads cost more than they bring, see
    the README); bad params or input are not retried."""
    from airflow.sdk.exceptions import AirflowFailException

    from crediflow.core.cpus import available_cpus
    from tasks.shards import ShardRejected, run_shard

    with task_log_file(context):
        try:
            return run_shard(stage, shard=shard, of=of, threads=max(1, available_cpus() // of))
        except ShardRejected as exc:
            raise AirflowFailException(str(exc)) from exc


@task
def apply_params(**context) -> dict:
    """Write a manual run's Params form values (those set) into params.yaml, checked by the
    stages' configs first, so that DVC sees and records them; return what changed."""
    from airflow.sdk.exceptions import AirflowFailException

    from crediflow.errors import CrediflowError
    from tasks.overrides import apply_overrides

    with task_log_file(context):
        try:
            return apply_overrides(dict(context["params"]))
        except CrediflowError as exc:
            raise AirflowFailException(str(exc)) from exc


@task(trigger_rule="all_done")
def finish(pipeline_name: str, stages: list[str], **context) -> str:
    """Close the MLflow pipeline run (with the whole dvc.lock on it); fail (without retrying)
    when any stage did not finish."""
    from airflow.sdk.exceptions import AirflowFailException

    from tasks.runner import StageFailed
    from tasks.runner import finish as close

    with task_log_file(context):
        try:
            return close(pipeline_name=pipeline_name, dag_id=context["dag"].dag_id,
                         run_id=context["run_id"], expected_stages=tuple(stages))
        except StageFailed as exc:
            raise AirflowFailException(str(exc)) from exc


def ensure_pools() -> dict[str, int]:
    """Create or update the pools of params.yaml's `airflow` section in Airflow's database:
    the workspace pool (one slot) and the GPU pool; return {name: slots}."""
    from airflow.models.pool import Pool

    settings = airflow_settings()
    pools = {
        settings.workspace_pool: (1, "crediflow: the DVC workspace, one stage at a time"),
        settings.gpu_pool: (settings.gpu_pool_slots,
                            f"crediflow: GPU-bound stages ({', '.join(settings.gpu_stages)})"),
    }
    for name, (slots, description) in pools.items():
        Pool.create_or_update_pool(name, slots, description, include_deferred=False)
    return {name: slots for name, (slots, _) in pools.items()}


def main(argv: list[str] | None = None) -> None:
    """`python -m tasks.airflow_tasks pools`: create the project's Airflow pools."""
    parser = argparse.ArgumentParser(prog="python -m tasks.airflow_tasks", description=__doc__)
    parser.add_argument("command", choices=["pools"])
    parser.parse_args(argv)
    for name, slots in ensure_pools().items():
        print(f"pool {name}: {slots} slot(s)")


if __name__ == "__main__":
    main()


def curated_asset() -> Asset:
    """The curated-data Asset: DAG `curate`'s last stage updates it, DAG `train` runs on it;
    its URI names the data (the selected records' folder of the catalog, as a file:// URI)."""
    from tasks.catalog import Catalog

    folder = Path(Catalog().folder("selected"))
    return Asset(name="crediflow_curated", uri=folder.resolve().as_uri())
