"""The typed config base: every method config checks its fields in one place, from params.yaml
and from command-line flags alike."""

from __future__ import annotations

import argparse

import pytest

from crediflow.audit.config import AuditConfig
from crediflow.embed.config import EmbedConfig
from crediflow.errors import ConfigError
from crediflow.fix.config import FixConfig
from crediflow.ingest.config import IngestConfig
from crediflow.select.config import SelectConfig

CONFIGS = (IngestConfig, EmbedConfig, AuditConfig, FixConfig, SelectConfig)


@pytest.mark.parametrize("config", CONFIGS)
def test_every_field_has_help_and_the_defaults_pass_their_own_checks(config) -> None:
    config()  # the defaults are valid
    for name, info in config.describe().items():
        assert info["help"], f"{config.section}.{name} has no help"


@pytest.mark.parametrize(("section", "values", "key", "message"), [
    (FixConfig, {"policy": "relabl"}, "policy", "'relabl' is not allowed; choose one of "
                                                "relabel, drop, flag"),
    (FixConfig, {"truht": "x.csv"}, "truht", "unknown key; the keys of this section are "
                                            "policy, threshold"),
    (FixConfig, {"threshold": 1.5}, "threshold", "out of range; allowed: >= 0 and <= 1"),
    (EmbedConfig, {"roles": ["usr", "assistant"]}, "roles", "'usr' is not allowed"),
    (EmbedConfig, {"roles": []}, "roles", "at least one role"),
    (EmbedConfig, {"batch_size": True}, "batch_size", "expected int, got bool"),
    (IngestConfig, {"classes": "harmless"}, "classes", "expected list of str or none, got str"),
    (IngestConfig, {"rating_range": [5, 1]}, "rating_range", "low < high"),
    (SelectConfig, {"budget": "abc"}, "budget", "expected float, got str 'abc'"),
    (SelectConfig, {"budget": 0}, "budget", "out of range"),
    (SelectConfig, {"budget": 12.5}, "budget", "a row count"),
    (SelectConfig, {"bins": [1, 3, 2]}, "bins", "strictly increasing"),
    (AuditConfig, {"detector": "cleanlab"}, "detector", "choose one of knn, probe, both"),
    (AuditConfig, {"k": 1}, "k", ">= 2"),
])
def test_a_bad_value_names_params_yaml_section_and_key(section, values, key, message) -> None:
    with pytest.raises(ConfigError) as err:
        section.from_mapping(values)
    text = str(err.value)
    assert text.startswith(f"params.yaml, section {section.section!r}, key {key!r}: ")
    assert message in text


def test_types_are_coerced_where_harmless() -> None:
    config = SelectConfig.from_mapping({"bins": [1, 2, 3], "threshold": 1, "budget": 20})
    assert config.bins == (1.0, 2.0, 3.0) and isinstance(config.bins[0], float)
    assert config.threshold == 1.0 and config.budget == 20.0
    assert IngestConfig.from_mapping({"classes": None}).classes is None


def test_missing_keys_keep_their_defaults_and_a_section_must_be_a_mapping() -> None:
    assert FixConfig.from_mapping({}) == FixConfig() == FixConfig.from_mapping(None)
    with pytest.raises(ConfigError, match="section 'fix': expected a mapping"):
        FixConfig.from_mapping(["relabel"])


def test_flags_are_built_from_the_config_and_checked_by_it() -> None:
    parser = argparse.ArgumentParser()
    SelectConfig.add_arguments(parser)
    args = parser.parse_args(["--budget", "0.25", "--bins", "0.5,1.5,2.5", "--model", "none",
                              "--rater", "column"])
    config = SelectConfig.from_args(args)
    assert (config.budget, config.bins, config.model, config.rater) == (
        0.25, (0.5, 1.5, 2.5), None, "column")
    assert config.k == SelectConfig().k  # untouched flags keep the defaults
    with pytest.raises(ConfigError, match=r"^command line, flag --detector: 'x' is not allowed"):
        parser = argparse.ArgumentParser()
        AuditConfig.add_arguments(parser)
        AuditConfig.from_args(parser.parse_args(["--detector", "x"]))
    parser = argparse.ArgumentParser()
    AuditConfig.add_arguments(parser)
    with pytest.raises(ConfigError, match="flag --k: expected int, got str 'ten'"):
        AuditConfig.from_args(parser.parse_args(["--k", "ten"]))


def test_a_config_built_in_code_names_its_field() -> None:
    with pytest.raises(ConfigError, match=r"^fix config, field 'policy'"):
        FixConfig(policy="nope")
