"""The one loader of stage paths and parameters (params.yaml) and stage wiring (dvc.yaml).

Cheap to import: the DAG files read their schedules and stage lists through it at parse time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from crediflow.errors import ConfigError
from tasks.settings import project_root

if TYPE_CHECKING:
    from crediflow.config import MethodConfig

C = TypeVar("C", bound="MethodConfig")
# The stages whose cost grows with the data and whose rows tasks/shards.py can compute in
# shards ahead of the stage, into their content-addressed caches (`pipelines.<dag>.shards`).
SHARDED_STAGES = ("embed", "select")


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
    retry_backoff: float = 2.0
    max_retry_delay_minutes: float = 60.0
    timeout_minutes: float = 60.0
    timeouts: dict[str, float] = field(default_factory=dict)
    shards: dict[str, int] = field(default_factory=dict)

    def stage_timeout_minutes(self, stage: str) -> float:
        """The execution timeout of `stage`: its entry in `timeouts`, else `timeout_minutes`."""
        return float(self.timeouts.get(stage, self.timeout_minutes))

    def stage_shards(self, stage: str) -> int:
        """How many shards fill `stage`'s cache before it runs: its entry in `shards`, else 1
        (no shards: the stage computes every row itself)."""
        return self.shards.get(stage, 1)


def _number(spec: dict, key: str, default: float, name: str) -> float:
    """A non-negative number of a pipeline's section; anything else is a ConfigError."""
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"expected a number >= 0, got {value!r}", source="params.yaml",
                          section="pipelines", key=f"{name}.{key}")
    return float(value)


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
    timeouts = spec.get("timeouts") or {}
    unknown = [s for s in timeouts if s not in spec["stages"]] if isinstance(timeouts, dict) \
        else ["(not a mapping)"]
    if unknown:
        raise ConfigError(f"timeouts for stages the pipeline lacks: {unknown}",
                          source="params.yaml", section="pipelines", key=f"{name}.timeouts")
    return PipelineSpec(
        name=name,
        schedule=spec.get("schedule"),
        retries=int(spec.get("retries", 0)),
        retry_delay_minutes=_number(spec, "retry_delay_minutes", 5, name),
        stages=tuple(spec["stages"]),
        retry_backoff=_number(spec, "retry_backoff", 2.0, name),
        max_retry_delay_minutes=_number(spec, "max_retry_delay_minutes", 60, name),
        timeout_minutes=_number(spec, "timeout_minutes", 60, name),
        timeouts={stage: _number(timeouts, stage, 0, f"{name}.timeouts") for stage in timeouts},
        shards=_shards(spec, name),
    )


def _shards(spec: dict, name: str) -> dict[str, int]:
    """A pipeline's `shards` ({stage: count}): stages of SHARDED_STAGES that the pipeline runs,
    each with an integer count >= 1; anything else is a ConfigError naming the key."""
    shards = spec.get("shards") or {}
    if not isinstance(shards, dict):
        raise ConfigError(f"expected a mapping of stage to shard count, got {shards!r}",
                          source="params.yaml", section="pipelines", key=f"{name}.shards")
    out = {}
    for stage, count in shards.items():
        key = f"{name}.shards.{stage}"
        if stage not in SHARDED_STAGES or stage not in spec["stages"]:
            runs = [s for s in SHARDED_STAGES if s in spec["stages"]]
            raise ConfigError(f"only stages with a shard runner that this pipeline runs can be "
                              f"sharded: {', '.join(runs) or 'none'}", source="params.yaml",
                              section="pipelines", key=key)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"expected an integer >= 1, got {count!r}", source="params.yaml",
                              section="pipelines", key=key)
        out[stage] = count
    return out


@dataclass(frozen=True)
class AirflowSettings:
    """The Airflow-wide settings of params.yaml's `airflow` section, with their defaults."""

    url: str = "http://localhost:8080"
    workspace_pool: str = "crediflow_workspace"
    gpu_pool: str = "crediflow_gpu"
    gpu_pool_slots: int = 1
    gpu_stages: tuple[str, ...] = ("token_clean", "finetune", "prune", "evaluate")
    notifier: dict[str, Any] | None = None

    def pool(self, stage: str) -> str:
        """The Airflow pool a stage's task runs in: the GPU pool for GPU-bound stages."""
        return self.gpu_pool if stage in self.gpu_stages else self.workspace_pool


def airflow_settings(root: Path | None = None) -> AirflowSettings:
    """params.yaml's `airflow` section; keys it leaves out keep their defaults."""
    section = load_params(root).get("airflow") or {}
    known = set(AirflowSettings.__dataclass_fields__)
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(f"unknown keys {unknown}; known: {sorted(known)}",
                          source="params.yaml", section="airflow")
    notifier = section.get("notifier")
    if notifier is not None and not (isinstance(notifier, dict) and "class" in notifier):
        raise ConfigError("expected null or {class: dotted.path, kwargs: {...}}",
                          source="params.yaml", section="airflow", key="notifier")
    values = dict(section)
    if "gpu_stages" in values:
        values["gpu_stages"] = tuple(values["gpu_stages"] or ())
    if "url" in values:
        values["url"] = str(values["url"]).rstrip("/")
    return AirflowSettings(**values)
