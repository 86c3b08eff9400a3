"""GPU stages in containers: DAG `train` built with each runner of params.yaml's `runners`
section (docker, kubernetes, local) in a temporary project, its operators checked (image,
command through tasks.runner, mounts, GPU requests, pool, timeout, link). No Docker engine or
cluster is needed, and no task runs."""

from __future__ import annotations

import runpy
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from crediflow.errors import ConfigError
from tasks.settings import PROJECT_ROOT

TRAIN_DAG = PROJECT_ROOT / "dags" / "train.py"
GPU_STAGES = ("token_clean", "finetune", "prune", "evaluate")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with the checkout's params.yaml and dvc.yaml, as CREDIFLOW_HOME."""
    root = tmp_path / "project"
    root.mkdir()
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(PROJECT_ROOT / name, root / name)
    monkeypatch.setenv("CREDIFLOW_HOME", str(root))
    monkeypatch.delenv("CREDIFLOW_HOST_HOME", raising=False)
    return root


def set_runners(root: Path, runners: dict) -> None:
    """Update params.yaml's `runners` section, key by key."""
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    section = params.setdefault("runners", {})
    for key, value in runners.items():
        section[key] = (section.get(key) or {}) | value if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def build_train() -> object:
    """DAG `train` as its file builds it now (no DagBag, no database)."""
    return runpy.run_path(str(TRAIN_DAG))["dag"]


def expected_command(stage: str) -> list[str]:
    """What a container of `stage` runs: the shared stage runner, as a task of this run."""
    return ["python", "-m", "tasks.runner", "train", "--stage", stage,
            "--run-id", "{{ run_id }}", "--dag-id", "{{ dag.dag_id }}"]


def check_stage_settings(task: object) -> None:
    """What tasks/airflow_tasks.py gives a local stage task, a container task has too."""
    from tasks.airflow_tasks import MlflowRunLink, on_stage_failure
    from tasks.config import airflow_settings, pipeline

    spec = pipeline("train")
    assert task.pool == airflow_settings().gpu_pool
    assert task.execution_timeout == timedelta(minutes=spec.stage_timeout_minutes(task.task_id))
    assert task.retries == spec.retries
    assert task.retry_exponential_backoff == spec.retry_backoff
    assert on_stage_failure in task.on_failure_callback
    assert any(isinstance(link, MlflowRunLink) for link in task.operator_extra_links)


def test_docker_runner_builds_gpu_docker_operators(project):
    from airflow.providers.docker.operators.docker import DockerOperator

    set_runners(project, {"stages": {"finetune": "docker", "prune": "docker"},
                          "docker": {"image": "registry.example/crediflow-gpu:1",
                                     "network_mode": "crediflow_default",
                                     "user": "1000:0",
                                     "environment": {"AWS_ENDPOINT_URL_S3": "http://minio:9000"}}})
    dag = build_train()
    for stage in ("finetune", "prune"):
        task = dag.get_task(stage)
        assert isinstance(task, DockerOperator)
        assert task.image == "registry.example/crediflow-gpu:1"
        assert task.command == expected_command(stage)
        assert [(m["Source"], m["Target"], m["Type"]) for m in task.mounts] == \
            [(str(project), str(project), "bind")]
        assert task.working_dir == str(project)
        [gpu] = task.device_requests
        assert (gpu["Count"], gpu["Capabilities"]) == (-1, [["gpu"]])
        assert task.network_mode == "crediflow_default"
        assert task.user == "1000:0"
        assert task.environment["CREDIFLOW_HOME"] == str(project)
        assert task.environment["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
        assert task.environment["MLFLOW_TRACKING_URI"]
        check_stage_settings(task)
    for stage in ("token_clean", "evaluate"):
        assert not isinstance(dag.get_task(stage), DockerOperator)
    # the chain is the same as with local stages
    order = ["apply_params", *GPU_STAGES, "finish"]
    for before, after in zip(order, order[1:], strict=False):
        assert after in dag.get_task(before).downstream_task_ids


def test_docker_project_dir_is_the_engine_hosts_path(project, monkeypatch):
    """Behind compose, the engine's host path of the project is mounted at that same path."""
    monkeypatch.setenv("CREDIFLOW_HOST_HOME", "/home/team/crediflow")
    set_runners(project, {"stages": {"evaluate": "docker"}})
    task = build_train().get_task("evaluate")
    assert task.working_dir == "/home/team/crediflow"
    assert task.mounts[0]["Source"] == task.mounts[0]["Target"] == "/home/team/crediflow"
    set_runners(project, {"docker": {"project_dir": "/srv/crediflow"}})
    assert build_train().get_task("evaluate").working_dir == "/srv/crediflow"


def test_container_command_renders_and_runs_one_stage_through_the_runner(project, monkeypatch):
    """The command's templates render with Airflow's context names, and tasks.runner runs
    exactly that stage of that run (its `--stage` mode)."""
    import jinja2

    from tasks import runner

    rendered = [jinja2.Template(part).render(run_id="manual__1", dag={"dag_id": "train"})
                for part in expected_command("finetune")]
    calls = []
    monkeypatch.setattr(runner, "run_stage", lambda stage, **kw: calls.append((stage, kw)) or
                        {"stage": stage})
    runner.main(rendered[3:])
    assert calls == [("finetune", {"pipeline_name": "train", "dag_id": "train",
                                   "run_id": "manual__1"})]
    with pytest.raises(SystemExit, match="no stage 'ingest'"):
        runner.main(["train", "--stage", "ingest", "--run-id", "r"])


def test_kubernetes_without_its_provider_is_a_parse_time_error(project):
    """Building the DAG fails naming the pip package, and so does Airflow's parse of the file
    (its import error, which the UI shows)."""
    from airflow.dag_processing.dagbag import DagBag

    try:
        import airflow.providers.cncf.kubernetes.operators.pod  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("the cncf.kubernetes provider is installed")
    from tasks.containers import RunnerUnavailable

    set_runners(project, {"stages": {"finetune": "kubernetes"}})
    with pytest.raises(RunnerUnavailable,
                       match=r"pip install apache-airflow-providers-cncf-kubernetes") as err:
        build_train()
    assert "stages.finetune" in str(err.value)
    errors = DagBag(dag_folder=str(TRAIN_DAG)).import_errors
    assert "apache-airflow-providers-cncf-kubernetes" in errors[str(TRAIN_DAG)]


def test_kubernetes_runner_builds_gpu_pods(project):
    pod = pytest.importorskip("airflow.providers.cncf.kubernetes.operators.pod")
    set_runners(project, {"stages": {"finetune": "kubernetes"},
                          "kubernetes": {"claim": "team-workspace", "gpus": 2}})
    task = build_train().get_task("finetune")
    assert isinstance(task, pod.KubernetesPodOperator)
    assert task.image == "crediflow-gpu:latest"
    assert task.cmds + task.arguments == expected_command("finetune")
    assert task.k8s_resources.limits == {"nvidia.com/gpu": "2"}
    [volume] = task.volumes
    assert volume.persistent_volume_claim.claim_name == "team-workspace"
    assert task.volume_mounts[0].mount_path == "/opt/crediflow"
    check_stage_settings(task)


def test_local_runner_is_the_default(project):
    from airflow.providers.docker.operators.docker import DockerOperator

    from tasks.containers import runner_settings

    assert all(runner_settings().runner(s) == "local" for s in GPU_STAGES)
    dag = build_train()
    for stage in GPU_STAGES:
        task = dag.get_task(stage)
        assert not isinstance(task, DockerOperator)
        check_stage_settings(task)


@pytest.mark.parametrize(("runners", "message"), [
    ({"stages": {"finetune": "podman"}}, "expected one of"),
    ({"stages": {"ingest": "docker"}}, "not a GPU-bound stage"),
    ({"docker": {"gpu": 1}}, "unknown keys"),
    ({"cluster": {}}, "unknown keys"),
])
def test_bad_runner_settings_name_the_key(project, runners, message):
    from tasks.containers import runner_settings

    set_runners(project, runners)
    with pytest.raises(ConfigError, match=message):
        runner_settings()


def test_docker_stage_tasks_survive_serialization(project):
    """The scheduler runs what it deserializes: image, command, mounts and GPUs must be there."""
    from airflow.serialization.serialized_objects import DagSerialization

    set_runners(project, {"stages": {"finetune": "docker"}})
    dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(build_train()))
    task = dag.get_task("finetune")
    assert task.image == "crediflow-gpu:latest"
    assert list(task.command) == expected_command("finetune")
    assert task.pool == "crediflow_gpu"
