"""A temporary pipeline project for the DAG tests: the session's CREDIFLOW_HOME with the
project's code, dvc.yaml and params.yaml, under git and DVC, with Airflow's DB migrated."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def new_project(build_project) -> Callable[..., Path]:
    """make(setup, params) -> the project folder (tests/conftest.py `build_project`) with
    Airflow's DB migrated."""

    def make(setup: Callable[[Path], None], params: dict[str, dict]) -> Path:
        return build_project(setup, params, airflow=True)

    return make
