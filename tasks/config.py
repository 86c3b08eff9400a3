"""The one loader of stage paths and parameters (params.yaml) and stage wiring (dvc.yaml).

Cheap to import: the DAG files read their schedules and stage lists through it at parse time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from crediflow.errors import ConfigError
from tasks.settings import project_root

if TYPE_CHECKING:
    from crediflow.config import MethodConfig

C = TypeVar("C", bound="MethodConfig")


def _read_yaml(path: Path) -> dict:
    """A YAML mapping; a syntax error or another top-level type is a ConfigError naming the
    file and line."""
    try:
        with path.open(encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError("file not found", source=str(path)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}YAML syntax error: {problem}", source=path.name) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of sections, got {type(data).__name__}",
                          source=path.name)
    return data


def load_params(root: Path | None = None) -> dict[str, Any]:
    """All of params.yaml."""
    return _read_yaml((root or project_root()) / "params.yaml")


def stage_params(stage: str, root: Path | None = None) -> dict[str, Any]:
    """The params.yaml section of one stage (empty when the file has none)."""
    section = load_params(root).get(stage) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"expected a mapping of keys to values, got {section!r}",
                          source="params.yaml", section=stage)
    return section


def stage_config(config_class: type[C], root: Path | None = None) -> C:
    """A method's typed config from its params.yaml section; keys it lacks keep the
    defaults, anything unknown or invalid is a ConfigError naming section and key."""
    return config_class.from_mapping(stage_params(config_class.section, root))


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
    spec = (load_params(root).get("pipelines") or {}).get(name)
    if not isinstance(spec, dict) or not isinstance(spec.get("stages"), list):
        raise ConfigError("missing, or without a list of stages", source="params.yaml",
                          section="pipelines", key=name)
    declared = dvc_stages(root)
    missing = [s for s in spec["stages"] if s not in declared]
    if missing:
        raise ConfigError(f"lists stages that dvc.yaml lacks: {missing}",
                          source="params.yaml", section="pipelines", key=name)
    return PipelineSpec(
        name=name,
        schedule=spec.get("schedule"),
        retries=int(spec.get("retries", 0)),
        retry_delay_minutes=float(spec.get("retry_delay_minutes", 5)),
        stages=tuple(spec["stages"]),
    )
