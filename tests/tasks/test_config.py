import re

import pytest
import yaml

from crediflow.errors import ConfigError
from tasks.catalog import Catalog
from tasks.config import dvc_stages, load_params, pipeline, stage_metrics, stage_params
from tasks.settings import PROJECT_ROOT


def test_every_pipeline_stage_is_declared_in_dvc_yaml_and_has_params():
    params = load_params(PROJECT_ROOT)
    for name in params["pipelines"]:
        spec = pipeline(name, PROJECT_ROOT)
        assert spec.stages
        for stage in spec.stages:
            assert stage_params(stage, PROJECT_ROOT)


def test_dvc_yaml_paths_come_from_params_only():
    """No stage output path is typed in dvc.yaml: each is a ${...} reference to params.yaml."""
    params = load_params(PROJECT_ROOT)
    for name, stage in dvc_stages(PROJECT_ROOT).items():
        for section in ("outs", "metrics"):
            for item in stage.get(section, []):
                path = next(iter(item)) if isinstance(item, dict) else item
                refs = re.findall(r"\$\{(\w+)\.(\w+)\}", path)
                assert refs, f"{name}: {path} is not taken from params.yaml"
                for sec, key in refs:
                    assert key in params[sec]


def test_unknown_pipeline_stage_is_reported(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"pipelines": {"p": {"stages": ["ingest", "nope"]}}}))
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"ingest": {"cmd": "true"}}}))
    with pytest.raises(ConfigError, match="nope"):
        pipeline("p", tmp_path)


def test_stage_metrics_resolve_params_references():
    reports = Catalog(PROJECT_ROOT).reports("ingest").relative_to(PROJECT_ROOT)
    assert stage_metrics("ingest", PROJECT_ROOT) == [f"{reports}/metrics.json"]
