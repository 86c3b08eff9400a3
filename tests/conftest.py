"""Shared fixtures. The project environment (offline switches, an Airflow home of the test
session's own) is set before anything imports Airflow, MLflow or DVC."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="crediflow-tests-"))
os.environ["CREDIFLOW_HOME"] = str(_SESSION_HOME / "project")
os.environ["AIRFLOW_HOME"] = str(_SESSION_HOME / "airflow")
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_SESSION_HOME / 'project' / 'mlflow.db'}"

from tasks.settings import apply  # noqa: E402

apply()


@pytest.fixture
def write_jsonl(tmp_path: Path):
    """Write rows (dicts, or raw strings for broken lines) as a JSONL file; return its path."""

    def write(rows: list, name: str = "data.jsonl", folder: Path | None = None) -> Path:
        path = (folder or tmp_path / "src") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    return write


@pytest.fixture
def chat():
    """Make a valid OpenAI-style record."""

    def make(user: str, answer: str, **extra) -> dict:
        return {"messages": [{"role": "user", "content": user},
                             {"role": "assistant", "content": answer}], **extra}

    return make
