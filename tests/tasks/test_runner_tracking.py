"""The stage runner and its MLflow tracking server: a server that does not answer stops the
task before any DVC work, with one clear line and an exit status Airflow retries (not 65); a
server that goes away while a stage runs fails the task the same way, and the workspace
stays as dvc.lock records it; a failed stage's outputs go back to what dvc.lock records.

Real DVC and MLflow: a closed port for the unreachable server, MLflow's own tracking server
(its Flask app, in a process of its own, on the session's SQLite store) for the one that
goes away."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from hashlib import md5
from pathlib import Path

import pytest
import yaml

from crediflow.synthetic.demo import write_demo
from tasks.stage import EXIT_BAD_INPUT

BIN = Path(sys.executable).parent
RUN_ID = "manual__tracking-test"
OUTPUTS = ("data/ingested", "reports/ingest/validation.json", "reports/ingest/metrics.json")
# MLflow's own retries, small: the check's bounded retry is what the tests measure.
FAST_MLFLOW = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
# MLflow's tracking server: its Flask app (the REST API the client calls) on werkzeug.
SERVER = """
import sys
from mlflow.server import app
from werkzeug.serving import make_server
server = make_server("127.0.0.1", int(sys.argv[1]), app, threaded=True)
print("serving", flush=True)
server.serve_forever()
"""


def _records(seed: int, n: int):
    def write(root: Path) -> None:
        write_demo(root / "data/raw/demo.jsonl", root / "data/truth/demo_labels.csv", n=n,
                   seed=seed)

    return write


def _free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file of the stage's outputs, and dvc.lock, by project-relative path."""
    files = {"dvc.lock": (root / "dvc.lock").read_bytes()}
    for top in OUTPUTS:
        base = root / top
        for path in [base] if base.is_file() else sorted(p for p in base.rglob("*")
                                                          if p.is_file()):
            files[path.relative_to(root).as_posix()] = path.read_bytes()
    return files


def _runner(root: Path, uri: str, *args: str, **kw) -> subprocess.Popen:
    env = os.environ | FAST_MLFLOW | {"MLFLOW_TRACKING_URI": uri,
                                      "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.Popen([sys.executable, "-m", "tasks.runner", "mini", *args], cwd=root,
                            env=env, text=True, **kw)


def _dvc_up_to_date(root: Path) -> bool:
    out = subprocess.run([str(BIN / "dvc"), "status", "--json", "ingest"], cwd=root,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out or "{}") == {}


@pytest.fixture(scope="module")
def project(build_project) -> Path:
    """A project whose pipeline `mini` (stage ingest) ran once through the runner, on the
    session's local MLflow store; then its raw data changed, so that ingest would run again."""
    from tasks.runner import run_pipeline

    root = build_project(_records(3, 80), {"pipelines": {"mini": {"stages": ["ingest"]}}})
    run_pipeline("mini", run_id=RUN_ID)
    _records(4, 90)(root)
    assert not _dvc_up_to_date(root)
    return root


def test_an_unreachable_server_stops_the_task_before_dvc_with_one_clear_line(project) -> None:
    from tasks.runner import EXIT_TRACKING_UNAVAILABLE

    before = _snapshot(project)
    uri = f"http://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    proc = _runner(project, uri, "--stage", "ingest", "--run-id", "manual__down",
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode == EXIT_TRACKING_UNAVAILABLE != EXIT_BAD_INPUT, err
    (last,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert last.startswith(f"error: the MLflow tracking server {uri} does not answer "
                           "(connection refused, 3 attempts")
    assert "make mlflow" in last and "MLFLOW_TRACKING_URI" in last
    assert "stage ingest did not run and the workspace is unchanged" in last
    assert "Traceback" not in err and out == ""
    assert "running repro" not in err  # DVC never started
    assert elapsed < 30
    assert _snapshot(project) == before


def test_in_airflow_the_task_fails_with_an_error_it_retries(project, monkeypatch) -> None:
    """Airflow's task calls run_stage and finish in its own process: what they raise is not
    InputRejected (the one error the task turns into a failure without retries)."""
    from tasks.runner import InputRejected, TrackingUnavailable, finish, run_stage

    before = _snapshot(project)
    uri = f"http://127.0.0.1:{_free_port()}"
    for name, value in FAST_MLFLOW.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(TrackingUnavailable, match="ingest did not run") as stage_error:
        run_stage("ingest", pipeline_name="mini", dag_id="mini", run_id="manual__down")
    with pytest.raises(TrackingUnavailable, match="is not closed yet and nothing was pushed"):
        finish(dag_id="mini", run_id="manual__down", pipeline_name="mini",
               expected_stages=("ingest",))
    assert not isinstance(stage_error.value, InputRejected)
    assert uri in str(stage_error.value) and "\n" not in str(stage_error.value)
    assert _snapshot(project) == before


@pytest.fixture
def server(project):
    """MLflow's tracking server on a free port, on the session's store (the one the project's
    runs are in); yields (URI, process); stopped at the end if still running."""
    port = _free_port()
    env = os.environ | {"_MLFLOW_SERVER_FILE_STORE": os.environ["MLFLOW_TRACKING_URI"],
                        "_MLFLOW_SERVER_ARTIFACT_ROOT": str(project / "mlartifacts")}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout.readline().strip() == "serving"
    yield f"http://127.0.0.1:{port}", proc
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_server_gone_while_the_stage_runs_fails_the_task_and_a_retry_ends_it(
        project, server) -> None:
    import mlflow

    from tasks import lineage
    from tasks.runner import EXIT_TRACKING_UNAVAILABLE, run_stage

    uri, server_proc = server
    proc = _runner(project, uri, "--stage", "ingest", "--run-id", "manual__gone",
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "running repro --single-item ingest" in line:  # the stage's run is open
            server_proc.terminate()
            server_proc.wait(timeout=30)
    assert proc.wait(timeout=60) == EXIT_TRACKING_UNAVAILABLE, "".join(lines)
    (last,) = [ln.strip() for ln in lines if ln.startswith("error:")]
    assert last.startswith(f"error: the MLflow tracking server {uri} does not answer"), last
    assert "stage ingest finished and dvc.lock records its outputs" in last
    # the stage ran to its end: outputs and dvc.lock agree, nothing half-written
    assert _dvc_up_to_date(project)
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["ingest"]
    validation = project / "reports/ingest/validation.json"
    outs = {o["path"]: o["md5"] for o in lock["outs"]}
    assert outs["reports/ingest/validation.json"] == md5(validation.read_bytes()).hexdigest()

    # the retry (back on the store): DVC finds the stage unchanged, the run is complete, and
    # the attempt the server left RUNNING is closed as FAILED
    result = run_stage("ingest", pipeline_name="mini", dag_id="mini", run_id="manual__gone")
    assert result["skipped"]
    parent = lineage.pipeline_run("mini", "mini", "manual__gone")
    runs = mlflow.MlflowClient().search_runs(
        [lineage.experiment_id()], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]
    assert lineage.finished_stages(parent) == {"ingest"}


def test_a_failed_stage_s_outputs_go_back_to_what_dvc_lock_records(project) -> None:
    """What a stage that died between two writes leaves (a new dataset file and report, an
    extra file) goes back to the hashes of dvc.lock, the uncached report from its copy."""
    import tempfile

    from tasks.runner import keep_uncached, put_back, stage_outputs

    before = _snapshot(project)
    outputs = stage_outputs("ingest")
    assert outputs == {"data/ingested": True, "reports/ingest/validation.json": False,
                       "reports/ingest/metrics.json": True}
    with tempfile.TemporaryDirectory() as folder:
        kept = keep_uncached(outputs, Path(folder))
        assert kept == {"reports/ingest/validation.json": True}
        (project / "data/ingested/records.parquet").write_bytes(b"half")
        (project / "data/ingested/extra.parquet").write_bytes(b"new")
        (project / "reports/ingest/validation.json").write_text("{}")
        (project / "reports/ingest/metrics.json").unlink()
        assert put_back("ingest", outputs, Path(folder), kept)
    assert _snapshot(project) == before
    assert _dvc_up_to_date(project)


def test_the_mlflow_link_and_the_failure_callback_do_not_wait_on_a_server_that_is_down(
        monkeypatch, capsys, caplog):
    from types import SimpleNamespace

    from tasks import airflow_tasks
    from tasks.settings import PROJECT_ROOT

    monkeypatch.setenv("CREDIFLOW_HOME", str(PROJECT_ROOT))  # params.yaml is only read
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")
    key = SimpleNamespace(dag_id="curate", run_id=RUN_ID, task_id="ingest")
    start = time.monotonic()
    link = airflow_tasks.MlflowRunLink().get_link(None, ti_key=key)
    ti = SimpleNamespace(dag_id="curate", run_id=RUN_ID, task_id="ingest", try_number=1)
    airflow_tasks.on_stage_failure({"ti": ti, "exception": RuntimeError("boom")})
    assert time.monotonic() - start < 20
    assert link.startswith("http")
    # to the logging handlers, or to stdout when Airflow's structlog set-up took them over
    logged = capsys.readouterr()
    assert "MLflow run: unknown (the MLflow tracking server" in \
        caplog.text + logged.out + logged.err


def test_a_stage_run_waits_while_another_run_holds_the_workspace(project) -> None:
    """What a container task runs (`python -m tasks.runner ... --stage`) takes the same
    workspace lock as a task on the Airflow worker."""
    from tasks.workspace import workspace_lock

    with workspace_lock("the test's run"):
        proc = _runner(project, os.environ["MLFLOW_TRACKING_URI"], "--stage", "ingest",
                       "--run-id", "manual__locked", stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
        time.sleep(8)
        assert proc.poll() is None, proc.communicate()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "waiting for the DVC workspace, held by the test's run" in err
    assert json.loads(out.splitlines()[-1])["stage"] == "ingest"
