"""The one loader of stage paths and parameters (params.yaml) and stage wiring (dvc.yaml).

Cheap to import: the DAG files read their schedules and stage lists through it at parse time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tasks.settings import project_root


def _read_yaml(path: Path) -> dict:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def load_params(root: Path | None = None) -> dict[str, Any]:
    """All of params.yaml."""
    return _read_yaml((root or project_root()) / "params.yaml")


def stage_params(stage: str, root: Path | None = None) -> dict[str, Any]:
    """The params.yaml section of one stage."""
    params = load_params(root)
    if stage not in params:
        raise KeyError(f"params.yaml has no section {stage!r}")
    return params[stage]


def dvc_stages(root: Path | None = None) -> dict[str, dict]:
    """The stages declared in dvc.yaml, unresolved."""
    return _read_yaml((root or project_root()) / "dvc.yaml").get("stages", {})


def _interpolate(text: str, params: dict[str, Any]) -> str:
    """Resolve `${section.key}` references the way dvc.yaml does."""

    def lookup(match: re.Match) -> str:
        value: Any = params
        for part in match.group(1).split("."):
            value = value[part]
        return str(value)

    return re.sub(r"\$\{([\w.]+)\}", lookup, text)


def stage_metrics(stage: str, root: Path | None = None) -> list[str]:
    """The metrics files a dvc.yaml stage declares, as project-relative paths."""
    params = load_params(root)
    items = dvc_stages(root)[stage].get("metrics", [])
    return [_interpolate(next(iter(i)) if isinstance(i, dict) else i, params) for i in items]


@dataclass(frozen=True)
class PipelineSpec:
    """What a DAG needs to know about one pipeline of params.yaml."""

    name: str
    schedule: str | None
    retries: int
    retry_delay_minutes: float
    stages: tuple[str, ...]


def pipeline(name: str, root: Path | None = None) -> PipelineSpec:
    """The pipeline `name` of params.yaml, its stages checked against dvc.yaml."""
    spec = load_params(root)["pipelines"][name]
    declared = dvc_stages(root)
    missing = [s for s in spec["stages"] if s not in declared]
    if missing:
        raise KeyError(f"pipeline {name!r} lists stages that dvc.yaml lacks: {missing}")
    return PipelineSpec(
        name=name,
        schedule=spec.get("schedule"),
        retries=int(spec.get("retries", 0)),
        retry_delay_minutes=float(spec.get("retry_delay_minutes", 5)),
        stages=tuple(spec["stages"]),
    )
