"""A temporary pipeline project for the DAG tests: the session's CREDIFLOW_HOME with the
project's code, dvc.yaml and params.yaml, under git and DVC, with Airflow's DB migrated."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tasks.settings import PROJECT_ROOT, project_root

BIN = Path(sys.executable).parent


def run_in(root: Path, *cmd: str) -> None:
    """Run a command of the venv (git, dvc, airflow) in `root`."""
    subprocess.run(cmd, cwd=root, check=True, capture_output=True, env=os.environ | {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})


@pytest.fixture(scope="module")
def new_project() -> Callable[..., Path]:
    """make(setup, params) -> the project folder: emptied (the MLflow store stays, its
    connections are open), code copied, `setup(root)` writes the data, `params` updates
    params.yaml section by section, then git, DVC and Airflow's DB are initialised."""

    def make(setup: Callable[[Path], None], params: dict[str, dict]) -> Path:
        root = project_root()
        root.mkdir(parents=True, exist_ok=True)
        for old in root.iterdir():
            if old.name not in ("mlflow.db", "mlartifacts"):
                shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
        for name in ("crediflow", "tasks"):
            shutil.copytree(PROJECT_ROOT / name, root / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("dvc.yaml", "params.yaml", ".gitignore"):
            shutil.copy(PROJECT_ROOT / name, root / name)
        setup(root)
        values = yaml.safe_load((root / "params.yaml").read_text())
        for section, changes in params.items():
            values[section].update(changes)
        (root / "params.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
        run_in(root, "git", "init", "-q")
        run_in(root, "dvc", "init", "-q")
        run_in(root, "git", "add", ".")
        run_in(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
        run_in(root, "airflow", "db", "migrate")
        return root

    return make
