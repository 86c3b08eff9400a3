"""GPU-bound stages in containers: the runner of each stage, chosen in params.yaml's `runners`
section, and the Airflow task that runs the stage with it.

`local` (the default) is the task of tasks/airflow_tasks.py; `docker` a DockerOperator with a
GPU device request and the project folder mounted at the same path; `kubernetes` a
KubernetesPodOperator with `nvidia.com/gpu` limits and the workspace on a PersistentVolumeClaim.
A container runs its stage through the same stage runner as the local task (DVC + MLflow):
`python -m tasks.runner PIPELINE --stage STAGE --run-id RUN --dag-id DAG`, never the stage
module itself. Container tasks get what local stage tasks get: their pool (the GPU pool), the
stage's execution timeout, the outlets and the "MLflow run" link; retries, backoff and the
failure callback come from the DAG's default_args.

A container runner whose Airflow provider is not installed is an error when the DAG is parsed,
naming the pip package. The providers are imported only when a stage uses them.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

from crediflow.errors import ConfigError
from tasks import airflow_tasks
from tasks.config import PipelineSpec, airflow_settings, load_params
from tasks.settings import defaults, project_root

RUNNERS = ("local", "docker", "kubernetes")
# The module each container runner imports, and the pip package that provides it.
PROVIDERS = {
    "docker": ("airflow.providers.docker.operators.docker",
               "apache-airflow-providers-docker"),
    "kubernetes": ("airflow.providers.cncf.kubernetes.operators.pod",
                   "apache-airflow-providers-cncf-kubernetes"),
}
SECTION = "runners"


class RunnerUnavailable(ConfigError):
    """params.yaml chose a container runner whose Airflow provider is not installed."""


@dataclass(frozen=True)
class DockerSettings:
    """`runners.docker`: how a stage runs in a local Docker engine."""

    image: str = "crediflow-gpu:latest"
    # the project folder as the Docker engine's host sees it, mounted at that same path (null:
    # the project folder of this Airflow, $CREDIFLOW_HOST_HOME, else CREDIFLOW_HOME)
    project_dir: str | None = None
    docker_url: str = "unix://var/run/docker.sock"
    network_mode: str | None = None
    user: str | None = None  # e.g. "1000:0", so that what the stage writes stays yours
    gpus: int = -1  # GPUs requested (-1: all of them)
    environment: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class KubernetesSettings:
    """`runners.kubernetes`: how a stage runs as a pod."""

    image: str = "crediflow-gpu:latest"
    namespace: str = "default"
    claim: str = "crediflow-workspace"  # the PersistentVolumeClaim that holds the workspace
    mount_path: str = "/opt/crediflow"  # where it is mounted (the image's working dir)
    gpus: int = 1  # nvidia.com/gpu limit
    in_cluster: bool | None = None  # null: the provider's default
    environment: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunnerSettings:
    """params.yaml's `runners` section: the runner of each GPU-bound stage and how the container
    runners run."""

    stages: dict[str, str] = field(default_factory=dict)
    docker: DockerSettings = field(default_factory=DockerSettings)
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)

    def runner(self, stage: str) -> str:
        """The runner of `stage`: its entry in `stages`, else `local`."""
        return self.stages.get(stage, "local")


def _mapping(value: Any, key: str) -> dict:
    """A mapping of the `runners` section (null: empty); anything else is a ConfigError."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"expected a mapping, got {value!r}", source="params.yaml",
                          section=SECTION, key=key)
    return value


def _typed(cls: type, value: Any, key: str) -> Any:
    """`cls` (a settings dataclass) from a mapping; unknown keys are a ConfigError."""
    values = _mapping(value, key)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown keys {unknown}; known: {sorted(known)}",
                          source="params.yaml", section=SECTION, key=key)
    if "environment" in values:
        values = values | {"environment": {str(k): str(v) for k, v in
                                           _mapping(values["environment"], key).items()}}
    return cls(**values)


def runner_settings(root: Path | None = None) -> RunnerSettings:
    """params.yaml's `runners` section, checked: only GPU-bound stages (`airflow.gpu_stages`)
    may be given a runner, and only one of RUNNERS."""
    section = _mapping(load_params(root).get(SECTION), "")
    unknown = sorted(set(section) - {"stages", "docker", "kubernetes"})
    if unknown:
        raise ConfigError(f"unknown keys {unknown}; known: ['docker', 'kubernetes', 'stages']",
                          source="params.yaml", section=SECTION)
    stages = {str(k): str(v) for k, v in _mapping(section.get("stages"), "stages").items()}
    gpu_stages = airflow_settings(root).gpu_stages
    for stage, runner in stages.items():
        if stage not in gpu_stages:
            raise ConfigError(f"{stage!r} is not a GPU-bound stage (airflow.gpu_stages: "
                              f"{list(gpu_stages)}); other stages run locally",
                              source="params.yaml", section=SECTION, key=f"stages.{stage}")
        if runner not in RUNNERS:
            raise ConfigError(f"expected one of {list(RUNNERS)}, got {runner!r}",
                              source="params.yaml", section=SECTION, key=f"stages.{stage}")
    return RunnerSettings(stages=stages,
                          docker=_typed(DockerSettings, section.get("docker"), "docker"),
                          kubernetes=_typed(KubernetesSettings, section.get("kubernetes"),
                                            "kubernetes"))


def provider(runner: str, stage: str) -> Any:
    """The operator module of a container runner; RunnerUnavailable, naming the pip package,
    when its provider is not installed."""
    module, package = PROVIDERS[runner]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RunnerUnavailable(
            f"runner {runner!r} needs the Airflow provider {package}, which is not installed "
            f"({exc}); install it (pip install {package}) or set the stage's runner to local",
            source="params.yaml", section=SECTION, key=f"stages.{stage}") from None


def runner_command(spec: PipelineSpec, stage: str) -> list[str]:
    """What a container runs: the stage, through the shared stage runner, as a task of this
    Airflow run (the run id and DAG id are Jinja templates the operator renders)."""
    return ["python", "-m", "tasks.runner", spec.name, "--stage", stage,
            "--run-id", "{{ run_id }}", "--dag-id", "{{ dag.dag_id }}"]


def _environment(workspace: str, extra: dict[str, str]) -> dict[str, str]:
    """The container's environment: the project folder, the MLflow tracking URI of this
    Airflow (the project's local store by default), then params' `environment`."""
    tracking = os.environ.get("MLFLOW_TRACKING_URI") or \
        defaults(Path(workspace))["MLFLOW_TRACKING_URI"]
    return {"CREDIFLOW_HOME": workspace, "PYTHONPATH": workspace,
            "MLFLOW_TRACKING_URI": tracking} | extra


def _task_settings(spec: PipelineSpec, stage: str, outlets: Iterable[Any]) -> dict[str, Any]:
    """The operator arguments every stage task gets, local or in a container: its task id, its
    pool (the GPU pool for GPU-bound stages), its execution timeout and its outlets."""
    minutes = spec.stage_timeout_minutes(stage)
    return {"task_id": stage, "pool": airflow_settings().pool(stage),
            "execution_timeout": timedelta(minutes=minutes) if minutes else None,
            "outlets": list(outlets)}


def docker_task(spec: PipelineSpec, stage: str, settings: DockerSettings,
                outlets: Iterable[Any] = ()) -> Any:
    """A DockerOperator that runs `stage` in `settings.image` with every GPU, the project folder
    mounted at the same path and set as the working directory."""
    operators = provider("docker", stage)
    from docker.types import DeviceRequest, Mount

    workspace = settings.project_dir or os.environ.get("CREDIFLOW_HOST_HOME") or \
        str(project_root())
    return operators.DockerOperator(
        image=settings.image,
        command=runner_command(spec, stage),
        working_dir=workspace,
        mounts=[Mount(target=workspace, source=workspace, type="bind")],
        device_requests=[DeviceRequest(count=settings.gpus, capabilities=[["gpu"]])],
        environment=_environment(workspace, settings.environment),
        docker_url=settings.docker_url,
        network_mode=settings.network_mode,
        user=settings.user,
        mount_tmp_dir=False,  # the temporary folder would be this machine's, not the engine's
        auto_remove="success",
        **_task_settings(spec, stage, outlets),
    )


def kubernetes_task(spec: PipelineSpec, stage: str, settings: KubernetesSettings,
                    outlets: Iterable[Any] = ()) -> Any:
    """A KubernetesPodOperator that runs `stage` in `settings.image` with `nvidia.com/gpu`
    limits and the workspace claim mounted at `settings.mount_path` (the working directory)."""
    operators = provider("kubernetes", stage)
    from kubernetes.client import models as k8s

    volume = "crediflow-workspace"
    env = _environment(settings.mount_path, settings.environment)
    optional = {} if settings.in_cluster is None else {"in_cluster": settings.in_cluster}
    return operators.KubernetesPodOperator(
        name=f"crediflow-{stage}".replace("_", "-"),
        namespace=settings.namespace,
        image=settings.image,
        cmds=runner_command(spec, stage)[:3],
        arguments=runner_command(spec, stage)[3:],
        env_vars=[k8s.V1EnvVar(name=k, value=v) for k, v in env.items()],
        volumes=[k8s.V1Volume(name=volume, persistent_volume_claim=(
            k8s.V1PersistentVolumeClaimVolumeSource(claim_name=settings.claim)))],
        volume_mounts=[k8s.V1VolumeMount(name=volume, mount_path=settings.mount_path)],
        container_resources=k8s.V1ResourceRequirements(
            limits={"nvidia.com/gpu": str(settings.gpus)}),
        get_logs=True,
        **optional,
        **_task_settings(spec, stage, outlets),
    )


def stage_task(stage: str, spec: PipelineSpec, runners: RunnerSettings,
               outlets: Iterable[Any] = ()) -> Any:
    """The Airflow task that runs `stage` of pipeline `spec` with the runner params.yaml chose
    for it: the local task, a DockerOperator or a KubernetesPodOperator; each container task
    links to its MLflow run as the local one does."""
    runner = runners.runner(stage)
    if runner == "local":
        return airflow_tasks.stage_task(spec, stage, outlets=outlets)
    if runner == "docker":
        operator = docker_task(spec, stage, runners.docker, outlets)
    else:
        operator = kubernetes_task(spec, stage, runners.kubernetes, outlets)
    operator.operator_extra_links = [airflow_tasks.MlflowRunLink()]
    return operator
