"""A manual run's Params form: which params.yaml keys its fields set, and writing the values
that were given into params.yaml (comments and layout kept), after the stages' configs have
checked them. DVC then sees the new values like any edit of params.yaml and records them in
dvc.lock; a field left empty (null) keeps what params.yaml says.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from crediflow.errors import ConfigError
from tasks.config import load_params
from tasks.settings import project_root

# form field -> (JSON type, params.yaml section, key, help)
FIELDS: dict[str, tuple[str, str, str, str]] = {
    "base_model": ("string", "finetune", "model",
                   "base causal LM: a local folder or .gguf (empty: params.yaml)"),
    "rho": ("number", "token_clean", "rho", "share of response tokens kept, in (0, 1]"),
    "mode": ("string", "token_clean", "mode", "token cleaning: fixed or self_evolving"),
    "epochs": ("integer", "finetune", "epochs", "fine-tuning epochs"),
    "max_steps": ("integer", "finetune", "max_steps", "fine-tuning steps (-1: by epochs)"),
    "learning_rate": ("number", "finetune", "learning_rate", "fine-tuning learning rate"),
    "lora": ("boolean", "finetune", "method", "true: LoRA, false: full fine-tuning"),
    "prune_selector": ("string", "prune", "selector", "layer pruning: reverse, random, "
                       "magnitude, taylor, block_influence or perplexity"),
    "prune_ratio": ("number", "prune", "ratio", "share of the decoder layers removed, in (0, 1)"),
    "max_perplexity_increase": ("number", "evaluate", "max_perplexity_increase",
                                "gate: pruned perplexity at most this share above fine-tuned"),
    "min_speedup": ("number", "evaluate", "min_speedup",
                    "gate: pruned generation speed-up over fine-tuned, at least"),
}
FORM: dict[str, tuple[str, str]] = {name: (kind, help_text)
                                    for name, (kind, _, _, help_text) in FIELDS.items()}


def form_schema(name: str) -> dict[str, Any]:
    """The JSON-schema bounds of form field `name` from its config field (minimum, maximum,
    exclusive bounds, allowed values), so that the Airflow form refuses a value out of range
    before a run starts; {} for a field without bounds."""
    _, section, key, _ = FIELDS[name]
    config = _configs()[section]
    field = next(f for f in dataclasses.fields(config) if f.name == key)
    meta = field.metadata
    schema: dict[str, Any] = {}
    if name != "lora" and meta.get("choices"):
        schema["enum"] = [*meta["choices"], None]
    for bound, inclusive, exclusive in (("low", "minimum", "exclusiveMinimum"),
                                        ("high", "maximum", "exclusiveMaximum")):
        if meta.get(bound) is not None:
            open_ = meta.get(f"{bound}_open", False)
            schema[exclusive if open_ else inclusive] = meta[bound]
    return schema


def _configs() -> dict[str, Any]:
    from crediflow.evaluate.config import EvaluateConfig
    from crediflow.finetune.config import FinetuneConfig
    from crediflow.prune.config import PruneConfig
    from crediflow.token_clean.config import TokenCleanConfig

    return {c.section: c for c in (TokenCleanConfig, FinetuneConfig, PruneConfig,
                                   EvaluateConfig)}


def apply_overrides(form: dict[str, Any], root: Path | None = None) -> dict[str, Any]:
    """Write the form's set values into params.yaml; return {"section.key": value} changed.

    Every value is checked by its stage's config before anything is written.
    """
    root = root or project_root()
    params = load_params(root)
    changes: dict[tuple[str, str], Any] = {}
    for name, value in form.items():
        if name not in FIELDS or value is None or value == "":
            continue
        _, section, key, _ = FIELDS[name]
        if name == "lora":
            value = "lora" if value else "full"
        changes[(section, key)] = value
    configs = _configs()
    for section in {s for s, _ in changes}:
        values = dict(params.get(section) or {})
        values |= {k: v for (s, k), v in changes.items() if s == section}
        configs[section].from_mapping(values, source="the Params form")
    changed = {f"{s}.{k}": v for (s, k), v in changes.items()
               if (params.get(s) or {}).get(k) != v}
    if changed:
        path = root / "params.yaml"
        text = path.read_text(encoding="utf-8")
        for (section, key), value in changes.items():
            text = set_param(text, section, key, value)
        path.write_text(text, encoding="utf-8")
    return changed


def set_param(text: str, section: str, key: str, value: Any) -> str:
    """params.yaml text with `section.key` set to `value`, its comment and layout kept."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if re.match(rf"{re.escape(section)}:\s*(#.*)?$",
                                                                 line.rstrip("\n"))), None)
    if start is None:
        raise ConfigError("missing section", source="params.yaml", section=section)
    # YAML's own rendering: json.dumps writes 1e-05, which YAML reads back as a string
    rendered = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    end = next((i for i in range(start + 1, len(lines))
                if lines[i].strip() and not lines[i].startswith((" ", "#"))), len(lines))
    pattern = re.compile(rf"^(\s+{re.escape(key)}:\s*)(.*?)(\s+#.*)?$")
    for i in range(start + 1, end):
        match = pattern.match(lines[i].rstrip("\n"))
        if match:
            comment = match.group(3) or ""
            lines[i] = f"{match.group(1)}{rendered}{comment}\n"
            return "".join(lines)
    lines.insert(start + 1, f"  {key}: {rendered}\n")
    return "".join(lines)
