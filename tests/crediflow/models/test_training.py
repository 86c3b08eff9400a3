"""train_sft and save_model on a tiny Llama (CPU, a few steps each)."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from crediflow.errors import ConfigError, InputError
from crediflow.models.sft import IGNORE, TokenizedSFT
from crediflow.models.training import (
    SFTDataset,
    TrainSettings,
    check_trainable,
    pad_batch,
    save_model,
    train_sft,
)

torch = pytest.importorskip("torch")

FAST = TrainSettings(learning_rate=1e-2, batch_size=4, max_steps=4, warmup_ratio=0.0,
                     logging_steps=1, seed=0)


@pytest.fixture
def lm(tiny_lm):
    """A fresh copy of the tiny model (training changes weights in place) and its tokenizer."""
    model, tokenizer = tiny_lm
    return copy.deepcopy(model), tokenizer


def make_sft(tokenizer, n: int = 8) -> TokenizedSFT:
    """Records of a prompt (not trained), an answer (trained) and a trailing newline (not
    trained), of different lengths."""
    ids: list[int] = []
    labels: list[int] = []
    offsets = [0]
    for i in range(n):
        prompt = tokenizer("Q: what does json dumps do?")["input_ids"]
        answer = tokenizer(" A:" + " it serializes obj" * (1 + i % 3))["input_ids"]
        tail = tokenizer("\n")["input_ids"]
        ids += prompt + answer + tail
        labels += [IGNORE] * len(prompt) + answer + [IGNORE] * len(tail)
        offsets.append(len(ids))
    return TokenizedSFT(np.array(ids, np.int64), np.array(labels, np.int64),
                        np.array(offsets, np.int64), np.arange(n, dtype=np.int64))


def label_loss(model, sft: TokenizedSFT) -> float:
    """Mean cross-entropy over all label tokens (each record on its own, no padding)."""
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(len(sft)):
            item = SFTDataset(sft)[i]
            ids = torch.from_numpy(np.array(item["input_ids"]))[None]
            labels = torch.from_numpy(np.array(item["labels"]))[None]
            logits = model(input_ids=ids).logits[0, :-1]
            target = labels[0, 1:]
            total += torch.nn.functional.cross_entropy(
                logits, target, ignore_index=IGNORE, reduction="sum").item()
            count += int((target != IGNORE).sum())
    return total / count


def run(model, tokenizer, sft, settings, tmp_path):
    logs: list[dict] = []
    result = train_sft(model, tokenizer, sft, settings, output_dir=tmp_path / "work",
                       on_log=logs.append)
    return result, logs


def test_training_lowers_the_loss_on_label_tokens(lm, tmp_path):
    model, tokenizer = lm
    sft = make_sft(tokenizer)
    before = label_loss(model, sft)
    result, _ = run(model, tokenizer, sft, dataclasses.replace(FAST, max_steps=12), tmp_path)
    after = label_loss(result.model, sft)
    assert after < 0.7 * before
    assert result.metrics["steps"] == 12
    assert np.isfinite(result.metrics["train_loss"])
    assert result.metrics["trainable_params"] == result.metrics["total_params"]
    assert not result.model.training


def test_the_loss_is_the_mean_over_label_tokens_only(lm, tmp_path):
    model, tokenizer = lm
    sft = make_sft(tokenizer)
    # one batch of all records (padded): the first logged loss is the loss before any update
    settings = dataclasses.replace(FAST, batch_size=len(sft), max_steps=1)
    expected = label_loss(model, sft)
    _, logs = run(copy.deepcopy(model), tokenizer, sft, settings, tmp_path)
    assert logs[0]["loss"] == pytest.approx(expected, rel=1e-4)

    # a token without a label after the last label token is neither predicted nor context
    changed = sft.input_ids.copy()
    tails = sft.offsets[1:] - 1
    assert (sft.labels[tails] == IGNORE).all()
    changed[tails] = (changed[tails] + 7) % 50
    other = TokenizedSFT(changed, sft.labels, sft.offsets, sft.rows)
    _, logs_changed = run(copy.deepcopy(model), tokenizer, other, settings, tmp_path)
    assert logs_changed[0]["loss"] == pytest.approx(logs[0]["loss"], rel=1e-6)

    # fewer labels: the mean over the labels left
    fewer = sft.labels.copy()
    fewer[sft.offsets[1:-1] - 2] = IGNORE  # each record's last answer token but the last's
    expected_fewer = label_loss(model, sft.with_labels(fewer))
    assert expected_fewer != pytest.approx(expected, rel=1e-4)
    _, logs_fewer = run(copy.deepcopy(model), tokenizer, sft.with_labels(fewer), settings,
                        tmp_path)
    assert logs_fewer[0]["loss"] == pytest.approx(expected_fewer, rel=1e-4)


def test_on_log_gets_loss_rate_grad_norm_and_throughput(lm, tmp_path):
    model, tokenizer = lm
    sft = make_sft(tokenizer)
    # 2 records per micro-batch, 2 micro-batches per step: 4 steps are 2 epochs of 8 records
    settings = dataclasses.replace(FAST, max_steps=4, warmup_ratio=0.5, grad_accum=2,
                                   batch_size=2, shuffle=False)
    result, logs = run(model, tokenizer, sft, settings, tmp_path)
    assert [log["step"] for log in logs] == [1, 2, 3, 4]
    for log in logs:
        assert {"loss", "learning_rate", "grad_norm", "epoch", "tokens_per_second",
                "label_tokens_per_second"} <= log.keys()
        assert np.isfinite(log["loss"]) and np.isfinite(log["grad_norm"])
        assert log["tokens_per_second"] > log["label_tokens_per_second"] > 0
    rates = [log["learning_rate"] for log in logs]
    # the rate each step used: 2 warm-up steps (ceil(0.5 * 4)) from 0, then linear decay
    assert rates == pytest.approx([0.0, 0.005, 0.01, 0.005])
    assert result.metrics["tokens"] == 2 * sft.lengths.sum()
    assert result.metrics["label_tokens"] == 2 * sft.trained().sum()
    assert result.metrics["tokens_per_second"] > 0


def test_seeded_runs_repeat_and_seeds_shuffle_differently(lm, tmp_path):
    model, tokenizer = lm
    sft = make_sft(tokenizer)
    settings = dataclasses.replace(FAST, batch_size=2, max_steps=3)
    losses = [[log["loss"] for log in run(copy.deepcopy(model), tokenizer, sft,
                                          dataclasses.replace(settings, seed=seed),
                                          tmp_path)[1]]
              for seed in (0, 0, 1)]
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]


def test_lora_trains_only_adapters_and_merges_to_a_plain_model(lm, tmp_path):
    model, tokenizer = lm
    original = {k: v.clone() for k, v in model.state_dict().items()}
    settings = dataclasses.replace(FAST, lora=True, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                                   lora_targets=("q_proj", "v_proj"), max_steps=3)
    result, _ = run(model, tokenizer, make_sft(tokenizer), settings, tmp_path)
    assert result.metrics["trainable_params"] < result.metrics["total_params"]
    assert type(result.model).__name__ == "LlamaForCausalLM"
    state = result.model.state_dict()
    assert state.keys() == original.keys()
    changed = {k for k in state if not torch.equal(state[k], original[k])}
    assert changed
    assert all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)


def test_trainable_names_train_only_those_parameters(lm, tmp_path):
    model, tokenizer = lm
    original = {k: v.clone() for k, v in model.state_dict().items()}
    names = ("model.layers.1.mlp.down_proj.weight", "model.norm.weight")
    settings = dataclasses.replace(FAST, trainable=names, max_steps=3)
    result, _ = run(model, tokenizer, make_sft(tokenizer), settings, tmp_path)
    state = result.model.state_dict()
    changed = {k for k in state if not torch.equal(state[k], original[k])}
    assert changed == set(names)
    assert result.metrics["trainable_params"] == sum(original[n].numel() for n in names)


def test_unknown_trainable_name_and_lora_with_names_are_refused(lm, tmp_path):
    model, tokenizer = lm
    with pytest.raises(InputError, match="no parameter 'model.layers.9.x'"):
        train_sft(model, tokenizer, make_sft(tokenizer),
                  dataclasses.replace(FAST, trainable=("model.layers.9.x",)),
                  output_dir=tmp_path)
    with pytest.raises(ConfigError, match="LoRA trains its adapters"):
        dataclasses.replace(FAST, lora=True, trainable=("model.norm.weight",))


def test_a_lora_target_the_model_lacks_is_a_config_error(lm, tmp_path):
    model, tokenizer = lm
    settings = dataclasses.replace(FAST, lora=True, lora_targets=("q_proj", "c_attn"))
    with pytest.raises(ConfigError) as info:
        train_sft(model, tokenizer, make_sft(tokenizer), settings, output_dir=tmp_path)
    assert info.value.key == "lora_targets" and info.value.section == "finetune"
    assert "c_attn" in str(info.value) and "gate_proj" in str(info.value)


def test_a_saved_model_reloads_with_identical_logits(lm, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = lm
    result, _ = run(model, tokenizer, make_sft(tokenizer),
                    dataclasses.replace(FAST, max_steps=1), tmp_path)
    folder = tmp_path / "model"
    save_model(result.model, tokenizer, folder)
    save_model(result.model, tokenizer, folder)  # replaces the earlier copy
    assert (folder / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([AutoTokenizer.from_pretrained(folder)("Q: what does json")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, result.model(input_ids=ids).logits)


def test_save_refuses_a_folder_that_is_not_a_model(lm, tmp_path):
    model, tokenizer = lm
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.jsonl").write_text("{}\n")
    with pytest.raises(InputError):
        save_model(model, tokenizer, tmp_path / "data")
    assert (tmp_path / "data" / "rows.jsonl").is_file()


def test_records_without_a_trained_token_are_refused(lm, tmp_path):
    model, tokenizer = lm
    sft = make_sft(tokenizer)
    labels = sft.labels.copy()
    labels[sft.offsets[2]:sft.offsets[3]] = IGNORE
    with pytest.raises(InputError, match="1 of 8 records.*record 2"):
        train_sft(model, tokenizer, sft.with_labels(labels), FAST, output_dir=tmp_path)
    # only the first token labelled: it is never predicted
    labels[sft.offsets[2]] = sft.input_ids[sft.offsets[2]]
    with pytest.raises(InputError, match="record 2"):
        check_trainable(sft.with_labels(labels))
    with pytest.raises(InputError, match="no records"):
        check_trainable(sft.subset(np.array([], np.int64)))
    check_trainable(sft)


def test_bf16_trains_on_the_cpu(lm, tmp_path):
    model, tokenizer = lm
    result, logs = run(model, tokenizer, make_sft(tokenizer),
                       dataclasses.replace(FAST, precision="bf16", max_steps=2, device="cpu"),
                       tmp_path)
    assert np.isfinite(logs[-1]["loss"])
    assert next(result.model.parameters()).dtype == torch.float32


def test_pad_batch_pads_right():
    batch = pad_batch([{"input_ids": np.array([5, 6, 7]), "labels": np.array([-100, 6, 7])},
                       {"input_ids": np.array([8]), "labels": np.array([8])}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


def test_settings_refuse_unknown_choices():
    with pytest.raises(ConfigError, match="scheduler"):
        TrainSettings(scheduler="step")
    with pytest.raises(ConfigError, match="precision"):
        TrainSettings(precision="auto")
