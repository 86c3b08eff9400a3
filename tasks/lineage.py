"""MLflow lineage: a parent run per pipeline run, a child run per stage.

A stage's child run carries its parameters, numeric metrics, report files, system metrics
(CPU, memory, disk, network; GPU with nvidia-ml-py) sampled while the stage runs, and every data
dependency and output as an MLflow dataset whose digest is the DVC hash from dvc.lock. Runs
carry the URL of their Airflow run; the parent gets the whole dvc.lock when the pipeline ends.

A tracking server (`MLFLOW_TRACKING_URI=http://...`) is checked before a stage starts
(`check_tracking_server`): a bounded retry of its own, then one clear line
(`TrackingUnavailable`) instead of MLflow's minutes of retries and a traceback.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import re
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

from tasks.config import airflow_settings, load_params
from tasks.settings import apply, project_root

log = logging.getLogger("crediflow.lineage")

PARENT_TAGS = ("crediflow.pipeline", "airflow.dag_id", "airflow.run_id", "airflow.run_url",
               "mlflow.user", "mlflow.source.name", "mlflow.source.type")
# The experiment tag that picks the MLflow UI's default view: model training (runs first), not
# the GenAI view (traces first).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
DEFAULT_UI_URL = "http://localhost:5000"
# The stage's child run, opened before the stage starts: its process logs live metrics there.
STAGE_RUN_ENV = "CREDIFLOW_STAGE_RUN_ID"
_ARTIFACT_MAX_BYTES = 10 << 20
# System-metrics monitors of the stage runs open in this process, by run id.
_MONITORS: dict[str, Any] = {}
# The tracking-server check: this many attempts, the first retry after CHECK_FIRST_DELAY_S
# seconds, each next one twice as late, each attempt waiting at most CHECK_TIMEOUT_S for an
# answer (3 attempts: about 3 s when nothing listens). MLflow's own retries
# (MLFLOW_HTTP_REQUEST_MAX_RETRIES, 7 by default, minutes) still apply to every other call.
CHECK_ATTEMPTS = 3
CHECK_FIRST_DELAY_S = 1.0
CHECK_TIMEOUT_S = 10.0
# The REST call the check makes: the smallest read of the tracking API (it needs the
# credentials every other call needs).
_CHECK_ENDPOINT = "/api/2.0/mlflow/experiments/search"
# How long the end of a stage waits for its last system metrics to reach MLflow.
_METRICS_FLUSH_S = 60.0


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server does not answer (down, unreachable, refusing the
    credentials). Worth retrying later: the task fails without touching the workspace, and
    Airflow retries it with its backoff."""


def mlflow_module():
    """mlflow, imported with the project's environment applied and alembic's logs quiet."""
    apply()
    logging.getLogger("alembic").setLevel(logging.WARNING)
    import mlflow

    return mlflow


def tracking_uri() -> str:
    """The tracking URI MLflow uses in this process (MLFLOW_TRACKING_URI, else the project's
    local SQLite store)."""
    return str(mlflow_module().get_tracking_uri())


def _failure_reason(exc: BaseException) -> str:
    """The cause of a failed request in a few words (\"connection refused\", \"timed out\")."""
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if found:
        return found.group(1).strip().lower()
    if "timed out" in text.lower() or "timeout" in type(exc).__name__.lower():
        return "timed out"
    return (text.splitlines() or [type(exc).__name__])[0][:200]


def check_tracking_server(*, note: str = "", attempts: int = CHECK_ATTEMPTS,
                          first_delay_s: float = CHECK_FIRST_DELAY_S,
                          timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """Make sure the tracking server of an http(s) tracking URI answers, trying `attempts`
    times with a doubling delay; raise TrackingUnavailable with one line (the URI, the cause,
    the fix, then `note`) when it never does. A local store (sqlite, file) needs no server:
    nothing is checked."""
    uri = tracking_uri()
    if urlparse(uri).scheme not in ("http", "https"):
        return
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(uri)
    delay, started, reason = first_delay_s, time.monotonic(), ""
    for attempt in range(1, attempts + 1):
        try:
            response = http_request(creds, _CHECK_ENDPOINT, "GET", max_retries=0,
                                    backoff_factor=0, backoff_jitter=0, timeout=timeout_s,
                                    raise_on_status=False, params={"max_results": 1})
        except Exception as exc:  # noqa: BLE001 - any failure to connect is the answer
            reason = _failure_reason(exc)
        else:
            if response.status_code == 200:
                return
            if response.status_code in (401, 403):
                raise TrackingUnavailable(
                    f"the MLflow tracking server {uri} refused the credentials (HTTP "
                    f"{response.status_code}): set MLFLOW_TRACKING_USERNAME and "
                    f"MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
                    + (f"; {note}" if note else ""))
            reason = f"HTTP {response.status_code}"
        if attempt < attempts:
            log.warning("MLflow tracking server %s: %s (attempt %d of %d), trying again in "
                        "%.0f s", uri, reason, attempt, attempts, delay)
            time.sleep(delay)
            delay *= 2
    tries = (f"{attempts} attempts in {time.monotonic() - started:.0f} s" if attempts > 1
             else "one attempt")
    raise TrackingUnavailable(
        f"the MLflow tracking server {uri} does not answer ({reason}, {tries}): start it "
        f"(`make mlflow` serves the project's store on port 5000) or point "
        f"MLFLOW_TRACKING_URI at a server that runs (unset: the local SQLite store)"
        + (f"; {note}" if note else ""))


def mlflow_settings(root: Path | None = None) -> dict[str, Any]:
    """params.yaml's `mlflow` section."""
    return load_params(root).get("mlflow") or {}


def experiment_id(root: Path | None = None) -> str:
    """The project's MLflow experiment, created with its artifacts inside the project folder
    and marked as model development, so that the MLflow UI opens on its runs."""
    mlflow = mlflow_module()
    root = root or project_root()
    name = mlflow_settings(root)["experiment"]
    found = mlflow.get_experiment_by_name(name)
    if found:
        if found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            mlflow.MlflowClient().set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG,
                                                     EXPERIMENT_KIND)
        return found.experiment_id
    return mlflow.create_experiment(name, artifact_location=(root / "mlartifacts").as_uri(),
                                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})


def ui_url(root: Path | None = None) -> str:
    """The MLflow UI's base URL (`mlflow.ui_url`)."""
    return str(mlflow_settings(root).get("ui_url") or DEFAULT_UI_URL).rstrip("/")


def run_url(run_id: str, experiment: str | None = None) -> str:
    """The MLflow UI page of a run."""
    return f"{ui_url()}/#/experiments/{experiment or experiment_id()}/runs/{run_id}"


def airflow_run_url(dag_id: str, run_id: str, task_id: str | None = None) -> str:
    """The Airflow UI page of a DAG run (`airflow.url`), or of one of its tasks."""
    url = f"{airflow_settings().url}/dags/{quote(dag_id)}/runs/{quote(run_id, safe='')}"
    return f"{url}/tasks/{quote(task_id)}" if task_id else url


def _user() -> str:
    """Who runs the pipeline, for the runs' `mlflow.user`."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "crediflow"


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
        "mlflow.source.name": f"dags/{dag_id}.py",
        "mlflow.source.type": "LOCAL",
        "mlflow.user": _user(),
        "airflow.run_url": airflow_run_url(dag_id, run_id),
    }
    return client.create_run(exp, run_name=f"{dag_id} {run_id}", tags=tags).info.run_id


def finish_pipeline_run(parent_id: str, failed: bool) -> None:
    """Record the whole dvc.lock on the parent run (artifact `dvc.lock`, tag `dvc.lock.md5`),
    then close it as FINISHED or FAILED."""
    client = mlflow_module().MlflowClient()
    lock = project_root() / "dvc.lock"
    if lock.is_file():
        try:
            client.set_tag(parent_id, "dvc.lock.md5", hashlib.md5(lock.read_bytes()).hexdigest())
            client.log_artifact(parent_id, str(lock))
        except Exception as exc:  # noqa: BLE001 - the record must not hide the run's outcome
            log.warning("could not log dvc.lock to MLflow run %s: %s", parent_id, exc)
    client.set_terminated(parent_id, "FAILED" if failed else "FINISHED")


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
    if "airflow.dag_id" in tags and "airflow.run_id" in tags:
        tags["airflow.task_url"] = airflow_run_url(tags["airflow.dag_id"],
                                                   tags["airflow.run_id"], stage)
    return tags | {"crediflow.role": "stage", "crediflow.stage": stage,
                   "mlflow.parentRunId": parent_id}


def close_stale_stage_runs(stage: str, parent_id: str) -> list[str]:
    """Mark FAILED the runs of `stage` under `parent_id` still RUNNING: an earlier attempt
    that ended without closing its run (the tracking server went away, the task was killed);
    return their ids. One attempt of a stage runs at a time, so none of them is alive."""
    client = mlflow_module().MlflowClient()
    stale = client.search_runs(
        [experiment_id()],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`crediflow.stage` = "
                      f"'{stage}' and attributes.status = 'RUNNING'")
    for run in stale:
        client.set_tag(run.info.run_id, "crediflow.error",
                       "this attempt ended without closing its run (tracking server gone or "
                       "task killed); a later attempt replaced it")
        client.set_terminated(run.info.run_id, "FAILED")
    return [run.info.run_id for run in stale]


def start_stage_run(stage: str, parent_id: str) -> str:
    """Open the stage's child run before the stage starts (real durations, live metrics) and
    start sampling system metrics into it until `log_stage` closes it; earlier attempts left
    RUNNING are closed as FAILED first."""
    client = mlflow_module().MlflowClient()
    close_stale_stage_runs(stage, parent_id)
    run_id = client.create_run(experiment_id(), run_name=stage,
                               tags=_stage_tags(client, stage, parent_id)).info.run_id
    start_system_metrics(run_id)
    return run_id


def start_system_metrics(run_id: str) -> None:
    """Sample CPU, memory, disk, network (and GPU, with nvidia-ml-py) into `run_id` every
    `mlflow.system_metrics_interval_s` seconds, unless `mlflow.system_metrics` is false."""
    settings = mlflow_settings()
    if not settings.get("system_metrics", True) or run_id in _MONITORS:
        return
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            run_id, sampling_interval=float(settings.get("system_metrics_interval_s", 5)))
        monitor.start()
    except Exception as exc:  # noqa: BLE001 - metrics must never stop a stage
        log.warning("no system metrics for MLflow run %s: %s", run_id, exc)
        return
    _MONITORS[run_id] = monitor


def stop_system_metrics(run_id: str, wait_s: float = _METRICS_FLUSH_S) -> None:
    """Stop sampling into `run_id`, logging the samples taken since the last interval (a stage
    shorter than one interval still gets its system metrics). Waits at most `wait_s` seconds
    for MLflow: a tracking server that went away does not hold the stage's end for the
    minutes of MLflow's own retries (the samples are then dropped)."""
    monitor = _MONITORS.pop(run_id, None)
    if monitor is None:
        return

    def last_samples() -> None:
        try:
            monitor.finish()
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
        except Exception as exc:  # noqa: BLE001 - metrics must never fail a stage
            log.warning("could not log the last system metrics of MLflow run %s: %s",
                        run_id, exc)

    worker = threading.Thread(target=last_samples, name=f"system-metrics-{run_id}",
                              daemon=True)
    worker.start()
    worker.join(wait_s)
    if worker.is_alive():
        log.warning("MLflow took more than %.0f s for the last system metrics of run %s; "
                    "they are dropped", wait_s, run_id)


def find_stage_run(dag_id: str, run_id: str, stage: str) -> str | None:
    """The MLflow run of a stage in an Airflow run (the newest, after retries), if any."""
    found = mlflow_module().MlflowClient().search_runs(
        [experiment_id()],
        filter_string=f"tags.`crediflow.role` = 'stage' and tags.`crediflow.stage` = '{stage}' "
        f"and tags.`airflow.dag_id` = '{dag_id}' and tags.`airflow.run_id` = '{run_id}'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return found[0].info.run_id if found else None


def _report_values(root: Path, metrics_files: Iterable[str]) -> tuple[dict, dict]:
    """(numeric metrics, resolved params) of a stage's metrics files."""
    numbers: dict[str, float] = {}
    resolved: dict[str, str] = {}
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
    return numbers, resolved


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
    given); return the child's run id.

    Everything goes through MlflowClient calls on the run's id, never MLflow's active-run
    state: when the tracking server goes away half-way, the error comes back once (no
    `end_run` on the way out, none at the interpreter's exit, each with its own retries)."""
    mlflow = mlflow_module()
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    if run_id:
        stop_system_metrics(run_id)  # the stage's work is over
    root = project_root()
    client = mlflow.MlflowClient()
    tags = _stage_tags(client, stage, parent_id) | {"dvc.skipped": str(skipped).lower()}
    if error:
        tags["crediflow.error"] = error[-4000:]
    if not run_id:
        run_id = client.create_run(experiment_id(), run_name=stage, tags=tags).info.run_id
    lock = lock or {}
    params = {k: json.dumps(v) if isinstance(v, list | dict) else v
              for k, v in flatten(lock.get("params", {}).get("params.yaml", {})).items()}
    numbers, resolved = _report_values(root, metrics_files)
    now = int(time.time() * 1000)
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()],
                     params=[Param(k, str(v)) for k, v in (params | resolved).items()],
                     metrics=[Metric(k, v, now, 0) for k, v in numbers.items()])
    datasets = []
    for context, entries in (("input", lock.get("deps", [])), ("output", lock.get("outs", []))):
        for entry in entries:
            if not _is_data(entry["path"]):
                continue
            source = resolve_dataset_source(str(root / entry["path"]))
            dataset = MetaDataset(source, name=entry["path"], digest=entry["md5"])
            datasets.append(DatasetInput(dataset._to_mlflow_entity(),
                                         tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
            if context == "output":
                client.set_tag(parent_id, f"dvc.{entry['path']}", entry["md5"])
                path = root / entry["path"]
                if path.is_file() and path.stat().st_size <= _ARTIFACT_MAX_BYTES:
                    client.log_artifact(run_id, str(path),
                                        artifact_path=str(Path(entry["path"]).parent))
    if datasets:
        client.log_inputs(run_id, datasets=datasets)
    client.log_dict(run_id, lock, "dvc_stage.json")
    client.set_terminated(run_id, "FAILED" if error else "FINISHED")
    return run_id
