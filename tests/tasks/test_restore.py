"""Versions you can get back: a pipeline run (stage ingest, through the real runner, DVC and
MLflow) pushes its outputs to a local-folder DVC remote, and `crediflow restore RUN` brings
them back byte for byte from the cache, from the remote with the cache emptied, and into
another folder; a run whose data is nowhere names the missing files (exit 65)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from crediflow.errors import ConfigError
from crediflow.synthetic.demo import write_demo
from tasks.stage import EXIT_BAD_INPUT

BIN = Path(sys.executable).parent
RUN_ID = "manual__restore-test"


def _demo_records(root: Path) -> None:
    write_demo(root / "data/raw/demo.jsonl", root / "data/truth/demo_labels.csv", n=80, seed=3)


def md5s(root: Path, paths: tuple[str, ...]) -> dict[str, str]:
    """md5 of every file under `paths` (files or folders), by project-relative path."""
    found = {}
    for top in paths:
        base = root / top
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for path in files:
            found[path.relative_to(root).as_posix()] = hashlib.md5(path.read_bytes()).hexdigest()
    return found


OUTPUTS = ("data/ingested", "reports/ingest/validation.json", "reports/ingest/metrics.json")


@pytest.fixture(scope="module")
def project(tmp_path_factory, build_project) -> dict:
    """A project whose pipeline `mini` (stage ingest) ran once through the runner, with a
    local-folder DVC remote in params.yaml; returns its root, remote, parent run and md5s."""
    from tasks.runner import run_pipeline

    remote = tmp_path_factory.mktemp("dvc-remote")
    root = build_project(_demo_records, {"pipelines": {"mini": {"stages": ["ingest"]}},
                                         "dvc": {"remote": str(remote)}})
    parent = run_pipeline("mini", run_id=RUN_ID)
    return {"root": root, "remote": remote, "parent": parent, "md5": md5s(root, OUTPUTS)}


def _lock_outs(root: Path) -> dict[str, str]:
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["ingest"]
    return {o["path"]: o["md5"] for o in lock["outs"]}


def _delete_outputs(root: Path) -> None:
    shutil.rmtree(root / "data/ingested")
    shutil.rmtree(root / "reports/ingest")


def _restore(*args: str) -> None:
    from tasks.ops import main

    main(["restore", *args])


def test_a_successful_run_pushes_its_outputs_to_the_remote(project) -> None:
    import mlflow

    tags = mlflow.MlflowClient().get_run(project["parent"]).data.tags
    assert tags["dvc.remote"] == str(project["remote"])
    assert int(tags["dvc.pushed"]) >= 3  # the .dir listing and both parquet files
    pushed = {p.name for p in project["remote"].rglob("*") if p.is_file()}
    assert _lock_outs(project["root"])["data/ingested"].split(".")[0][2:] + ".dir" in pushed


def test_restore_from_the_cache_brings_back_every_byte(project, capsys) -> None:
    root = project["root"]
    _delete_outputs(root)
    _restore(project["parent"])
    assert md5s(root, OUTPUTS) == project["md5"]
    out = capsys.readouterr().out
    assert "data/ingested" in out and "from dvc" in out and "from mlflow" in out


def test_restore_by_airflow_run_id_into_another_folder(project, tmp_path) -> None:
    _restore(RUN_ID, "--to", str(tmp_path / "copy"))
    assert md5s(tmp_path / "copy", OUTPUTS) == project["md5"]
    lock = _lock_outs(project["root"])
    restored = tmp_path / "copy/reports/ingest/metrics.json"
    assert hashlib.md5(restored.read_bytes()).hexdigest() == lock["reports/ingest/metrics.json"]


def test_restore_from_the_remote_with_the_cache_emptied(project) -> None:
    root = project["root"]
    shutil.rmtree(root / ".dvc/cache")
    _delete_outputs(root)
    _restore(project["parent"])
    assert md5s(root, OUTPUTS) == project["md5"]


def test_restore_over_a_busy_workspace_exits_1(project, capsys) -> None:
    """A stage holding DVC's lock: restoring over the workspace exits 1 and says so."""
    from dvc.repo import lock_repo

    from tasks.runner import open_repo

    with open_repo(project["root"]) as repo, lock_repo(repo), pytest.raises(SystemExit) as exit_:
        _restore(project["parent"])
    assert exit_.value.code == 1
    assert "the DVC workspace is busy" in capsys.readouterr().err


def test_data_in_neither_cache_nor_remote_is_named(project, capsys) -> None:
    root = project["root"]
    shutil.rmtree(root / ".dvc/cache")
    shutil.rmtree(project["remote"])
    project["remote"].mkdir()
    with pytest.raises(SystemExit) as exit_:
        _restore(project["parent"], "--to", str(root / "elsewhere"))
    assert exit_.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "in neither the DVC cache nor the DVC remote" in err and "data/ingested" in err
    assert not (root / "elsewhere").exists()  # nothing written when anything is missing


def test_a_failed_push_fails_the_run_with_the_reason(project) -> None:
    import mlflow

    from tasks.runner import PushFailed, run_pipeline

    root = project["root"]
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["dvc"]["remote"] = "/proc/no-such-remote"  # a folder that cannot be created
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        with pytest.raises(PushFailed, match="dvc push to /proc/no-such-remote failed"):
            run_pipeline("mini", run_id="manual__restore-push-fails")
    finally:
        params["dvc"]["remote"] = str(project["remote"])
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    from tasks import lineage

    parent = mlflow.MlflowClient().get_run(
        lineage.pipeline_run("mini", "mini", "manual__restore-push-fails"))
    assert parent.info.status == "FAILED"
    assert "no-such-remote" in parent.data.tags["dvc.push_error"]


def test_an_unknown_run_is_one_line_and_exit_65_through_the_console_script(project) -> None:
    result = subprocess.run([str(BIN / "crediflow"), "restore", "no-such-run"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    assert result.stderr.strip() == ("error: unknown run 'no-such-run': no MLflow pipeline run "
                                     "has this id or this Airflow run id")


def test_the_dvc_section_is_checked(tmp_path) -> None:
    from tasks.runner import dvc_remote

    (tmp_path / "params.yaml").write_text("dvc:\n  remote: null\n")
    assert dvc_remote(tmp_path) is None
    (tmp_path / "params.yaml").write_text("dvc:\n  remot: /tmp/x\n")
    with pytest.raises(ConfigError, match="section 'dvc', key 'remot': unknown key"):
        dvc_remote(tmp_path)
    (tmp_path / "params.yaml").write_text("dvc:\n  remote: 3\n")
    with pytest.raises(ConfigError, match="key 'remote': expected a remote name"):
        dvc_remote(tmp_path)
