"""The project's environment: where things live and the switches that keep tools offline.

`python -m tasks.settings` prints them as `export` lines for the Makefile; Python entry
points call `apply()`. Values already set in the environment win.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def project_root() -> Path:
    """The project folder: $CREDIFLOW_HOME, else the checkout this module lives in."""
    return Path(os.environ.get("CREDIFLOW_HOME", PROJECT_ROOT)).resolve()


def defaults(root: Path | None = None) -> dict[str, str]:
    """Environment defaults for a project folder."""
    root = root or project_root()
    return {
        "CREDIFLOW_HOME": str(root),
        "AIRFLOW_HOME": str(root / ".airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # scheduled DAGs run on their schedule from the start, nobody has to unpause them
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "DO_NOT_TRACK": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DVC_NO_ANALYTICS": "1",
        "GX_ANALYTICS_ENABLED": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONWARNINGS": "ignore::UserWarning,ignore::DeprecationWarning",
    }


def apply(root: Path | None = None) -> dict[str, str]:
    """Set every default that the environment does not already set; return the result."""
    for key, value in defaults(root).items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in defaults(root)}


if __name__ == "__main__":
    for key, value in apply().items():
        print(f"export {key}={shlex.quote(value)}")
