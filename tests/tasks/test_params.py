"""params.yaml: every stage section matches its typed config, and a bad value stops the stage
with exit 65 and one line naming the key, before any work."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from crediflow.audit.config import AuditConfig
from crediflow.embed.config import EmbedConfig
from crediflow.fix.config import FixConfig
from crediflow.ingest.config import IngestConfig
from crediflow.select.config import SelectConfig
from tasks.config import load_params
from tasks.settings import PROJECT_ROOT
from tasks.stage import EXIT_BAD_INPUT

CONFIGS = {c.section: c for c in (IngestConfig, EmbedConfig, AuditConfig, FixConfig,
                                  SelectConfig)}


def test_params_yaml_holds_every_config_field_with_its_default() -> None:
    """The shipped params.yaml and the configs (hence the command line) agree on defaults."""
    params = load_params(PROJECT_ROOT)
    for section, config in CONFIGS.items():
        assert params[section] == config().to_dict(), section


def _run_stage(stage: str, params: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(
        params if isinstance(params, str) else yaml.safe_dump(params), encoding="utf-8")
    env = os.environ | {"CREDIFLOW_HOME": str(project)}
    return subprocess.run([sys.executable, "-m", f"tasks.{stage}"], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def _params(**changes: dict) -> dict:
    params = load_params(PROJECT_ROOT)
    for section, values in changes.items():
        params[section] = {**params[section], **values}
    return params


@pytest.mark.parametrize(("stage", "changes", "expected"), [
    ("ingest", {"ingest": {"classes": "harmless"}},
     "params.yaml, section 'ingest', key 'classes': expected list of str or none"),
    ("embed", {"embed": {"roles": ["usr", "assistant"]}},
     "params.yaml, section 'embed', key 'roles': 'usr' is not allowed"),
    ("audit", {"audit": {"detector": "cleanlab"}},
     "params.yaml, section 'audit', key 'detector': 'cleanlab' is not allowed"),
    ("fix", {"fix": {"policy": "relabl"}},
     "params.yaml, section 'fix', key 'policy': 'relabl' is not allowed; choose one of "
     "relabel, drop, flag"),
    ("fix", {"fix": {"truth": "data/truth/demo_labels.csv"}},
     "params.yaml, section 'fix', key 'truth': unknown key"),
    ("select", {"select": {"budget": "abc"}},
     "params.yaml, section 'select', key 'budget': expected float, got str 'abc'"),
    ("select", {"catalog": {"fixd": "data/fixed"}},
     "params.yaml, section 'catalog', key 'fixd': unknown key"),
    ("token_clean", {"token_clean": {"rho": 1.5}},
     "params.yaml, section 'token_clean', key 'rho': 1.5 is out of range"),
    ("token_clean", {"token_clean": {"mode": "greedy"}},
     "params.yaml, section 'token_clean', key 'mode': 'greedy' is not allowed"),
    ("finetune", {"finetune": {"method": "qlora"}},
     "params.yaml, section 'finetune', key 'method': 'qlora' is not allowed"),
    ("finetune", {"finetune": {"model": "./no/such/model"}},
     "dataset 'token_cleaned' does not exist yet"),
])
def test_a_bad_params_value_exits_65_with_one_line_naming_the_key(stage, changes, expected,
                                                                   tmp_path) -> None:
    result = _run_stage(stage, _params(**changes), tmp_path)
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "project" / "data").exists()  # refused before any work


def test_a_yaml_syntax_error_names_the_line(tmp_path) -> None:
    result = _run_stage("fix", "fix:\n  policy: relabel\n  threshold: [0.5\n", tmp_path)
    assert result.returncode == EXIT_BAD_INPUT
    assert "params.yaml: line" in result.stderr and "YAML syntax error" in result.stderr


def test_a_missing_catalog_is_a_config_error(tmp_path) -> None:
    params = _params()
    del params["catalog"]
    result = _run_stage("audit", params, tmp_path)
    assert result.returncode == EXIT_BAD_INPUT
    assert "params.yaml, section 'catalog': missing section" in result.stderr


def test_a_missing_input_dataset_names_the_stage_to_run(tmp_path) -> None:
    shutil.rmtree(tmp_path / "project", ignore_errors=True)
    result = _run_stage("fix", _params(), tmp_path)
    assert result.returncode == EXIT_BAD_INPUT
    assert "dataset 'audited' does not exist yet: run the audit stage first" in result.stderr


def test_bf16_on_a_cpu_without_it_exits_65_naming_the_device(tmp_path) -> None:
    from crediflow.models.precision import detect_device

    result = _run_stage("embed", _params(embed={"precision": "bf16"}), tmp_path)
    assert result.returncode == EXIT_BAD_INPUT
    if detect_device("cpu").bf16:  # a native bf16 CPU gets past the setting to the data
        assert "dataset 'ingested' does not exist yet" in result.stderr
    else:
        assert ("params.yaml, section 'embed', key 'precision': bf16 was asked for, but the "
                "cpu device") in result.stderr and "no native bf16 support" in result.stderr
