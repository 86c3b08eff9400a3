"""A manual run's Params form: checked values land in params.yaml's right section with their
comments kept; empty fields and bad values change nothing."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from crediflow.errors import ConfigError
from tasks.overrides import FIELDS, FORM, apply_overrides, set_param
from tasks.settings import PROJECT_ROOT


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A project folder holding a copy of the project's params.yaml."""
    shutil.copy(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def read(root: Path) -> str:
    """params.yaml's text."""
    return (root / "params.yaml").read_text(encoding="utf-8")


def section_line(text: str, section: str, key: str) -> str:
    """The line of `section.key` (a top-level section's direct key)."""
    lines = text.splitlines()
    start = lines.index(f"{section}:") if f"{section}:" in lines else next(
        i for i, line in enumerate(lines) if line.startswith(f"{section}:"))
    for line in lines[start + 1:]:
        if line.strip() and not line.startswith((" ", "#")):
            break
        if line.strip().startswith(f"{key}:"):
            return line
    raise AssertionError(f"no {section}.{key} line")


def comment(line: str) -> str:
    """The comment at the end of a line ('' when none)."""
    return line[line.index("#"):] if "#" in line else ""


def test_form_fields_name_real_keys() -> None:
    """Every form field names a section and key of params.yaml, and FORM lists them all."""
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8"))
    assert set(FORM) == set(FIELDS)
    for _, section, key, _ in FIELDS.values():
        assert key in params[section], f"{section}.{key}"


def test_set_values_land_in_their_section_with_comments_kept(root: Path) -> None:
    """Each given value is written to its section's key (finetune.model, not select.model;
    finetune.epochs, not audit.epochs), the line's comment stays, the other lines are
    unchanged, and the return value lists what changed."""
    before = read(root)
    original = yaml.safe_load(before)
    form: dict[str, Any] = {"base_model": "models/my-base", "rho": 0.4, "mode": "self_evolving",
                            "epochs": 2, "max_steps": -1, "learning_rate": 0.0005}
    changed = apply_overrides(form, root)
    assert changed == {"finetune.model": "models/my-base", "token_clean.rho": 0.4,
                       "token_clean.mode": "self_evolving", "finetune.epochs": 2,
                       "finetune.max_steps": -1, "finetune.learning_rate": 0.0005}
    after = read(root)
    expected = copy.deepcopy(original)
    for name, value in form.items():
        _, section, key, _ = FIELDS[name]
        expected[section][key] = value
    assert yaml.safe_load(after) == expected
    assert expected["select"]["model"] is None and expected["audit"]["epochs"] == 21

    for name in form:
        _, section, key, _ = FIELDS[name]
        old, new = section_line(before, section, key), section_line(after, section, key)
        assert comment(new) == comment(old), (old, new)
    for section, key in (("token_clean", "rho"), ("finetune", "model"),
                         ("finetune", "max_steps")):
        assert comment(section_line(after, section, key)) != ""  # these lines have one
    differing = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True)
                 if a != b]
    assert len(differing) == len(form)


@pytest.mark.parametrize("form", [
    {},
    {"rho": None, "mode": None, "base_model": None, "epochs": None, "lora": None},
    {"rho": "", "mode": "", "base_model": ""},
    {"not_a_field": 3},
    {"rho": 0.6, "mode": "fixed"},  # what params.yaml says already
])
def test_empty_fields_change_nothing(root: Path, form: dict[str, Any]) -> None:
    """Null, empty, unknown and unchanged fields leave params.yaml byte for byte as it was."""
    before = read(root)
    assert apply_overrides(form, root) == {}
    assert read(root) == before


def test_lora_maps_to_the_finetune_method(root: Path) -> None:
    """lora false writes finetune.method full, lora true writes it back to lora; the comment
    of the line stays."""
    original = yaml.safe_load(read(root))
    assert original["finetune"]["method"] == "lora"
    line = section_line(read(root), "finetune", "method")

    assert apply_overrides({"lora": False}, root) == {"finetune.method": "full"}
    assert yaml.safe_load(read(root))["finetune"]["method"] == "full"
    assert comment(section_line(read(root), "finetune", "method")) == comment(line)

    assert apply_overrides({"lora": True}, root) == {"finetune.method": "lora"}
    assert yaml.safe_load(read(root)) == original


@pytest.mark.parametrize(("form", "section", "key"), [
    ({"rho": 1.5}, "token_clean", "rho"),
    ({"rho": 0}, "token_clean", "rho"),
    ({"mode": "greedy"}, "token_clean", "mode"),
    ({"epochs": 0}, "finetune", "epochs"),
    ({"learning_rate": -1.0}, "finetune", "learning_rate"),
    ({"max_steps": 0}, "finetune", "max_steps"),
    ({"rho": 0.3, "mode": "greedy"}, "token_clean", "mode"),  # one bad value stops them all
    ({"epochs": 3, "rho": 1.5}, "token_clean", "rho"),
])
def test_bad_value_raises_and_writes_nothing(root: Path, form: dict[str, Any], section: str,
                                             key: str) -> None:
    """A value its stage's config refuses is a ConfigError naming the Params form, the section
    and the key; params.yaml is not touched, not even for the form's good values."""
    before = read(root)
    with pytest.raises(ConfigError) as caught:
        apply_overrides(form, root)
    error = caught.value
    assert (error.source, error.section, error.key) == ("the Params form", section, key)
    assert "the Params form" in str(error)
    assert f"section {section!r}" in str(error) and f"key {key!r}" in str(error)
    assert read(root) == before


def test_small_learning_rate_reads_back_as_a_number(root: Path) -> None:
    """A learning rate like 1e-5 is written so that params.yaml reads it back as a float."""
    apply_overrides({"learning_rate": 1e-5}, root)
    assert yaml.safe_load(read(root))["finetune"]["learning_rate"] == 1e-5


TEXT = """\
# top comment
select:
  model: null                 # the rater
  seed: 0

finetune:
  model: null                 # the base model
  seed: 0
  # a comment line
  epochs: 1
"""


def test_set_param_keeps_comments_and_other_sections() -> None:
    """set_param changes only the key of the named section, keeping its comment."""
    text = set_param(TEXT, "finetune", "model", "models/x")
    assert "  model: models/x                 # the base model\n" in text
    assert "  model: null                 # the rater\n" in text
    text = set_param(text, "finetune", "epochs", 3)
    data = yaml.safe_load(text)
    assert data == {"select": {"model": None, "seed": 0},
                    "finetune": {"model": "models/x", "seed": 0, "epochs": 3}}
    assert text.startswith("# top comment\n") and "  # a comment line\n" in text
    assert len(text.splitlines()) == len(TEXT.splitlines())


def test_set_param_adds_a_missing_key() -> None:
    """A key the section lacks is added to that section."""
    text = set_param(TEXT, "select", "budget", 0.5)
    assert yaml.safe_load(text)["select"] == {"budget": 0.5, "model": None, "seed": 0}
    assert "budget" not in yaml.safe_load(text)["finetune"]


def test_set_param_missing_section() -> None:
    """A section params.yaml lacks is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="token_clean") as caught:
        set_param(TEXT, "token_clean", "rho", 0.5)
    assert caught.value.section == "token_clean"


def test_the_form_refuses_values_out_of_range_before_a_run():
    from airflow.sdk import Param
    from airflow.sdk.definitions.param import ParamValidationError

    from tasks.overrides import form_schema

    assert form_schema("rho") == {"exclusiveMinimum": 0, "maximum": 1}
    assert form_schema("prune_ratio") == {"exclusiveMinimum": 0, "exclusiveMaximum": 1}
    assert None in form_schema("mode")["enum"] and "fixed" in form_schema("mode")["enum"]
    assert form_schema("base_model") == {} and form_schema("lora") == {}
    for name, bad, good in (("rho", 1.5, 0.5), ("rho", 0, 1), ("prune_ratio", 1.0, 0.25),
                            ("mode", "fast", "self_evolving"), ("epochs", 0, 2)):
        kind = FORM[name][0]
        param = Param(None, type=[kind, "null"], **form_schema(name))
        with pytest.raises(ParamValidationError):
            param.resolve(bad)
        assert param.resolve(good) == good
        assert param.resolve(None) is None
