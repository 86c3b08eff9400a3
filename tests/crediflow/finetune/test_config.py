"""FinetuneConfig: defaults, refused values (a ConfigError naming the key) and the training
settings it makes."""

from __future__ import annotations

import argparse

import pytest

from crediflow.errors import ConfigError
from crediflow.finetune import FinetuneConfig
from crediflow.models.training import LLAMA_PROJECTIONS, TrainSettings


def test_defaults_are_valid_and_every_field_has_help():
    config = FinetuneConfig()
    assert config.method == "lora" and config.lora_targets == LLAMA_PROJECTIONS
    assert (config.lora_r, config.lora_alpha, config.lora_dropout) == (64, 16, 0.1)
    for name, info in FinetuneConfig.describe().items():
        assert info["help"], name


@pytest.mark.parametrize(("values", "key", "message"), [
    ({"method": "qlora"}, "method", "choose one of full, lora"),
    ({"learning_rate": 0}, "learning_rate", "out of range; allowed: > 0"),
    ({"learning_rate": "fast"}, "learning_rate", "expected float"),
    ({"epochs": 0}, "epochs", "out of range"),
    ({"epochs": 1.5}, "epochs", "expected int"),
    ({"max_steps": 0}, "max_steps", "a step count of 1 or more, got"),
    ({"max_steps": -2}, "max_steps", "a step count of 1 or more, got"),
    ({"batch_size": 0}, "batch_size", "out of range"),
    ({"grad_accum": 0}, "grad_accum", "out of range"),
    ({"warmup_ratio": 1.0}, "warmup_ratio", "allowed: >= 0 and < 1"),
    ({"warmup_ratio": -0.1}, "warmup_ratio", "out of range"),
    ({"scheduler": "step"}, "scheduler", "choose one of linear, cosine, constant"),
    ({"weight_decay": -1}, "weight_decay", "out of range"),
    ({"optimizer": "adam"}, "optimizer", "choose one of"),
    ({"lora_r": 0}, "lora_r", "out of range"),
    ({"lora_alpha": 0}, "lora_alpha", "out of range"),
    ({"lora_dropout": 1}, "lora_dropout", "out of range"),
    ({"lora_targets": []}, "lora_targets", "at least one module"),
    ({"lora_targets": "q_proj"}, "lora_targets", "expected a list of str"),
    ({"lora_targets": ["q_proj", "q_proj"]}, "lora_targets", "named twice"),
    ({"lora_targets": ["model.q proj"]}, "lora_targets", "a module's name"),
    ({"max_length": 8}, "max_length", "allowed: >= 16"),
    ({"precision": "fp16"}, "precision", "choose one of auto, fp32, bf16"),
    ({"seed": -1}, "seed", "out of range"),
    ({"logging_steps": 0}, "logging_steps", "out of range"),
    ({"group_by_length": "yes"}, "group_by_length", "expected bool"),
    ({"lerning_rate": 1e-3}, "lerning_rate", "unknown key"),
])
def test_bad_values_name_the_key(values, key, message):
    with pytest.raises(ConfigError, match=message) as info:
        FinetuneConfig.from_mapping(values)
    assert info.value.key == key and info.value.section == "finetune"
    assert f"key {key!r}" in str(info.value)


def test_flags_build_the_same_config():
    parser = argparse.ArgumentParser()
    FinetuneConfig.add_arguments(parser)
    args = parser.parse_args(["--method", "full", "--lora-targets", "q_proj,v_proj",
                              "--max-steps", "20", "--learning-rate", "2e-5"])
    config = FinetuneConfig.from_args(args)
    assert (config.method, config.lora_targets, config.max_steps, config.learning_rate) == (
        "full", ("q_proj", "v_proj"), 20, 2e-5)
    with pytest.raises(ConfigError, match="flag --warmup-ratio"):
        FinetuneConfig.from_args(parser.parse_args(["--warmup-ratio", "2"]))


def test_to_settings_carries_every_training_value():
    config = FinetuneConfig(method="lora", learning_rate=2e-4, epochs=2, max_steps=50,
                            batch_size=8, grad_accum=4, warmup_ratio=0.1, scheduler="cosine",
                            weight_decay=0.01, lora_r=8, lora_alpha=32, lora_dropout=0.05,
                            lora_targets=("q_proj",), seed=3, logging_steps=2,
                            group_by_length=False)
    settings = config.to_settings("bf16")
    assert settings == TrainSettings(
        learning_rate=2e-4, epochs=2, max_steps=50, batch_size=8, grad_accum=4,
        warmup_ratio=0.1, scheduler="cosine", weight_decay=0.01, lora=True, lora_r=8,
        lora_alpha=32, lora_dropout=0.05, lora_targets=("q_proj",), precision="bf16", seed=3,
        logging_steps=2, group_by_length=False)
    assert FinetuneConfig(method="full").to_settings("fp32").lora is False
    with pytest.raises(ConfigError, match="resolve the precision first"):
        config.to_settings("auto")
