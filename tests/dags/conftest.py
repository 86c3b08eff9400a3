"""A temporary pipeline project for the DAG tests: the session's CREDIFLOW_HOME with the
project's code, dvc.yaml and params.yaml, under git and DVC, with Airflow's DB migrated."""

from __future__ import annotations

import json
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


@pytest.fixture(scope="session")
def rated_demo() -> Callable[[Path], None]:
    """setup(root): the demo data (300 records) with a rating in each record, so that select
    runs with the column rater (the LLM raters have their own tests)."""
    from crediflow.synthetic.demo import write_demo

    def setup(root: Path) -> None:
        write_demo(root / "data/raw/demo.jsonl", root / "data/truth/demo_labels.csv", n=300,
                   seed=1)
        raw = root / "data/raw/demo.jsonl"
        records = [json.loads(line) for line in raw.read_text().splitlines()]
        raw.write_text("".join(json.dumps({**r, "rating": 1 + i % 5}) + "\n"
                               for i, r in enumerate(records)))

    return setup
