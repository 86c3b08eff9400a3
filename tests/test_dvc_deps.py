"""dvc.yaml's deps cover every module a stage runs: import the stage's task module in a fresh
interpreter, add every project module it can import later (imports inside functions included,
found statically), and fail when one is not under that stage's deps."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.config import dvc_stages
from tasks.settings import PROJECT_ROOT

PACKAGES = ("crediflow", "tasks")


def _loaded_at_import(stage: str) -> set[str]:
    code = (f"import sys, json, importlib; importlib.import_module('tasks.{stage}'); "
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{PACKAGES!r})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True,
                         text=True, check=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def _module_file(name: str) -> Path | None:
    base = PROJECT_ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def _imports(path: Path, module: str) -> set[str]:
    """Project modules that `path` imports anywhere in its body (and their parent packages)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] in PACKAGES and _module_file(name):
                parts = name.split(".")
                found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return found


def _closure(modules: set[str]) -> set[str]:
    todo, seen = list(modules), set()
    while todo:
        name = todo.pop()
        if name in seen or (path := _module_file(name)) is None:
            continue
        seen.add(name)
        todo.extend(_imports(path, name) - seen)
    return seen


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(PROJECT_ROOT).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", sorted(dvc_stages(PROJECT_ROOT)))
def test_stage_deps_cover_every_module_it_runs(stage: str) -> None:
    deps = [d for d in dvc_stages(PROJECT_ROOT)[stage]["deps"] if "${" not in d]
    modules = _closure(_loaded_at_import(stage) | {f"tasks.{stage}"})
    missing = sorted(str(_module_file(m).relative_to(PROJECT_ROOT)) for m in modules
                     if not _covered(_module_file(m), deps))
    assert not missing, f"dvc.yaml stage {stage!r} lacks deps for {missing}"


def test_the_closure_sees_imports_inside_functions(tmp_path) -> None:
    """The static walk finds a lazily imported module (the select stage loads its raters
    inside a function), so a lazy import cannot escape the deps check."""
    modules = _closure({"crediflow.select.rating"})
    assert "crediflow.select.raters.hf" in modules
    assert "crediflow.models.causal_lm" in modules
