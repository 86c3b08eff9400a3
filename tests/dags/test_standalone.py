"""Scheduling for real: `make airflow` (Airflow standalone: API server, scheduler, DAG processor,
triggerer; SQLite in the project) started in a temporary project, DAG `curate` triggered
through the REST API (`/api/v2`, with the token of the password that standalone mode
generates), the curated-data Asset event and the `train` run it queues checked, and every
process the test started stopped through its process group."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from tasks.settings import PROJECT_ROOT

START_TIMEOUT_S = 240
RUN_TIMEOUT_S = 900


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Api:
    """The Airflow REST API at `base`, with a bearer token of the standalone admin user."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.token: str | None = None

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def login(self, password_file: Path) -> None:
        users = json.loads(password_file.read_text())
        status, body = self.call("POST", "/auth/token",
                                 {"username": "admin", "password": users["admin"]})
        assert status == 201, (status, body)
        self.token = body["access_token"]


def _wait(what: str, check, timeout: float, log: Path, every: float = 2.0):
    """Call `check` until it returns something truthy; fail with the log's tail on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except (urllib.error.URLError, ConnectionError, OSError):
            result = None
        if result:
            return result
        time.sleep(every)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; airflow's output:\n{tail}")


@pytest.fixture(scope="module")
def project(new_project, rated_demo) -> Path:
    """A project with 300 demo records rated in the data (the column rater), curate manual
    only, so that the REST trigger makes the only run."""
    curate = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["pipelines"]["curate"]
    return new_project(rated_demo, {
        "select": {"rater": "column"},
        "pipelines": {"curate": curate | {"schedule": None, "retries": 0}}})


def _tree(root: psutil.Process, seen: dict[int, float]) -> None:
    """Add `root` and its descendants (pid -> start time) to `seen`."""
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            seen.setdefault(proc.pid, proc.create_time())


def _alive(seen: dict[int, float]) -> list[str]:
    alive = []
    for pid, started in seen.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == started and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{pid} {' '.join(proc.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return alive


class Standalone:
    """`make airflow` running in its own process group, and every process seen under it."""

    def __init__(self, log: Path, home: Path) -> None:
        port = _free_port()
        self.home = home
        env = os.environ | {
            # its own Airflow DB: the session's holds the DAGs' next runs from earlier tests,
            # which the scheduler would start before the DAG processor reads this project's
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"http://localhost:{port}",
            "PATH": f"{PROJECT_ROOT / '.venv/bin'}{os.pathsep}{os.environ['PATH']}",
        }
        self.log = log
        self.seen: dict[int, float] = {}
        self.api = Api(f"http://localhost:{port}")
        with log.open("wb") as out:
            self.make = subprocess.Popen(["make", "-s", "-C", str(PROJECT_ROOT), "airflow"],
                                         env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.top = psutil.Process(self.make.pid)

    def wait(self, what: str, check, timeout: float, every: float = 2.0):
        """Wait for `check`, noting the processes running meanwhile."""

        def noted():
            _tree(self.top, self.seen)
            assert self.make.poll() is None, "make airflow exited"
            return check()

        return _wait(what, noted, timeout, self.log, every)

    def stop(self) -> list[str]:
        """SIGTERM the process group; return the processes still there a minute later
        (killed)."""
        _tree(self.top, self.seen)
        os.killpg(self.make.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.make.wait(timeout=60)
        deadline = time.monotonic() + 60
        while _alive(self.seen) and time.monotonic() < deadline:
            time.sleep(1)
        left = _alive(self.seen)
        for line in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line.split()[0]), signal.SIGKILL)
        return left


@pytest.fixture
def airflow(project, tmp_path):
    """`make airflow` started, healthy and logged in; stopped afterwards, and nothing it
    started may outlive the stop of its process group."""
    server = Standalone(tmp_path / "airflow.log", tmp_path / "airflow")
    try:
        api = server.api

        def healthy() -> bool:
            status, body = api.call("GET", "/api/v2/monitor/health")
            return status == 200 and body["scheduler"]["status"] == "healthy"

        server.wait("the API server and a healthy scheduler", healthy, START_TIMEOUT_S)
        password_file = server.home / "simple_auth_manager_passwords.json.generated"
        assert password_file.exists(), "standalone mode wrote no password file"
        assert api.call("GET", "/api/v2/dags")[0] == 401, "the API answers without a token"
        api.login(password_file)
        server.wait("the DAG processor to parse curate and train",
                    lambda: all(api.call("GET", f"/api/v2/dags/{d}")[0] == 200
                                for d in ("curate", "train")), START_TIMEOUT_S)
        yield server
    finally:
        left = server.stop()
    assert left == [], f"still running after the process group was stopped: {left}"


def test_make_airflow_runs_curate_from_the_rest_api_and_queues_train(airflow, project):
    api = airflow.api
    assert api.call("GET", "/api/v2/dags/curate")[1]["is_paused"] is False
    pools = {p["name"]: p["slots"] for p in api.call("GET", "/api/v2/pools")[1]["pools"]}
    assert pools["crediflow_workspace"] == 1 and pools["crediflow_gpu"] >= 1

    started = time.monotonic()
    status, run = api.call("POST", "/api/v2/dags/curate/dagRuns",
                           {"logical_date": None, "conf": {}})
    assert status == 200, run
    runs = f"/api/v2/dags/curate/dagRuns/{run['dag_run_id']}"

    def finished():
        state = api.call("GET", runs)[1]["state"]
        return state if state in ("success", "failed") else None

    airflow.wait(f"curate run {run['dag_run_id']}", finished, RUN_TIMEOUT_S, every=5)
    states = {t["task_id"]: t["state"]
              for t in api.call("GET", f"{runs}/taskInstances")[1]["task_instances"]}
    assert states == {stage: "success" for stage in
                      ("ingest", "embed", "audit", "fix", "select", "finish")}
    print(f"curate through the standalone scheduler: {time.monotonic() - started:.0f} s")

    events = api.call("GET", "/api/v2/assets/events?source_dag_id=curate")[1]["asset_events"]
    [event] = [e for e in events if e["source_run_id"] == run["dag_run_id"]]
    assert event["uri"] == (project / "data/selected").resolve().as_uri()
    select = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["select"]
    assert event["extra"]["dvc_hash"] == select["outs"][0]["md5"]
    assert event["extra"]["rows"] == 300
    assert event["extra"]["mlflow_run_id"]

    def train_queued():
        dag_runs = api.call("GET", "/api/v2/dags/train/dagRuns")[1]["dag_runs"]
        return [r for r in dag_runs if r["run_type"] == "asset_triggered"]

    [train] = airflow.wait("a train run queued by the asset event", train_queued, 120)
    assert train["state"] in ("queued", "running")
