"""Supervised fine-tuning on given labels: the one training routine of the project.

The finetune stage and token cleaning's reference and self-evolving models all train through
`train_sft`: the loss is the mean cross-entropy over the tokens that carry a label
(`TokenizedSFT.labels != -100`), averaged over every label token of an optimizer step (all
micro-batches of a gradient accumulation window together), full fine-tuning or LoRA (peft,
merged back so the result is a plain model).

Trainer, not TRL's SFTTrainer: the records are tokenized already and carry their `labels`,
which is all transformers' `Trainer` needs (with a collator that pads them). SFTTrainer would
add trl and `datasets` as dependencies, want a `datasets.Dataset` (a copy of the flat arrays
as lists of lists) and bring tokenization, chat templating, packing and completion-only masks
that would have to be switched off so as not to touch the given labels. No training loop of
our own: Trainer does the optimizer, schedule, accumulation, clipping, bf16 autocast and the
progress bar; this module adds a dataset over the flat arrays, the padding collator, seeded
(length-grouped) shuffling, the token throughput and the per-log callback.

Several processes (data-parallel, DDP): when the process runs inside a torchrun launch
(`WORLD_SIZE` > 1 in its environment, see crediflow/finetune/launch.py), Trainer wraps the
model in DistributedDataParallel itself (gloo on the CPU, nccl on GPUs) and
`settings.batch_size` is per process. Every process draws the same seeded order of records
and takes every world-size-th micro-batch of it, so an optimizer step sees the same records
as one process with a batch `world_size` times larger: length grouping groups by the global
batch (`batch_size * grad_accum * world_size`), not the per-process one. The loss is
normalised by the label tokens of all processes together (`average_tokens_across_devices`),
so the loss, the gradients and the logged numbers are those of the one-process run up to
float rounding. Two things differ: dropout draws (each process draws its own masks) and, when
the records do not fill the last global batch of an epoch, that batch (accelerate fills it up
with records from the start of the epoch so that every process has one).

torch, transformers and peft are imported inside the functions, so that importing this
module (configs, the CLI) stays cheap.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crediflow.errors import ConfigError, InputError
from crediflow.models.sft import IGNORE, TokenizedSFT

# The attention and MLP projections of Llama-like models (Llama, Mistral, Qwen2, SmolLM2)
LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                     "down_proj")
SCHEDULERS = ("linear", "cosine", "constant")
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adafactor", "sgd")
DEVICES = ("auto", "cpu", "cuda")
# transformers' plain "constant" skips the warm-up; with a warm-up of 0 the two are the same
_SCHEDULER_NAMES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


@dataclass(frozen=True)
class TrainSettings:
    """How to train: optimizer, schedule, batches, LoRA, precision (already resolved)."""

    learning_rate: float = 1e-4
    epochs: int = 1
    max_steps: int = -1  # optimizer steps; -1: as many as `epochs` take
    batch_size: int = 4  # records per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    warmup_ratio: float = 0.03  # share of the steps with a rising learning rate
    scheduler: str = "linear"  # linear | cosine | constant (after the warm-up)
    weight_decay: float = 0.0
    optimizer: str = "adamw_torch"  # one of OPTIMIZERS (transformers' `optim` names)
    max_grad_norm: float = 1.0  # gradient clipping; 0: none
    lora: bool = False
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] = LLAMA_PROJECTIONS  # module names that get adapters
    precision: str = "fp32"  # fp32 | bf16 (autocast; the weights stay fp32)
    device: str = "auto"  # auto (CUDA when there is one) | cpu | cuda
    seed: int = 0  # adapter init and record order
    logging_steps: int = 5  # optimizer steps between two logs
    shuffle: bool = True  # seeded; False: the records' order
    group_by_length: bool = True  # with shuffle: batches of similar lengths (less padding)
    # full training of only these parameters (names as in `named_parameters`, a tied weight
    # under any of its names); empty: every parameter (or the adapters, with lora)
    trainable: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name, allowed in (("scheduler", SCHEDULERS), ("optimizer", OPTIMIZERS),
                              ("precision", ("fp32", "bf16")), ("device", DEVICES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{getattr(self, name)!r} is not allowed; choose one of "
                                  f"{', '.join(allowed)}", section="finetune", key=name)
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        object.__setattr__(self, "trainable", tuple(self.trainable))
        if self.lora and self.trainable:
            raise ConfigError("LoRA trains its adapters; a list of trainable parameters is for "
                              "full training", section="finetune", key="method")


@dataclass
class TrainResult:
    """The trained model (plain, LoRA merged) and what training measured."""

    model: Any
    # train_loss, steps, seconds, tokens, label_tokens, tokens_per_second,
    # label_tokens_per_second, trainable_params, total_params
    metrics: dict[str, float] = field(default_factory=dict)


class SFTDataset:
    """Map-style dataset over `TokenizedSFT`: item i is record i's ids and labels, as views
    into the flat arrays (nothing is copied)."""

    def __init__(self, sft: TokenizedSFT) -> None:
        self.sft = sft

    def __len__(self) -> int:
        return len(self.sft)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        start, end = self.sft.offsets[index], self.sft.offsets[index + 1]
        return {"input_ids": self.sft.input_ids[start:end], "labels": self.sft.labels[start:end]}


def pad_batch(items: Sequence[dict[str, np.ndarray]], *, pad_id: int) -> dict[str, Any]:
    """Right-pad records to the longest: input_ids with `pad_id`, attention_mask 0 and labels
    IGNORE on the padding; torch int64 tensors."""
    import torch

    width = max(len(item["input_ids"]) for item in items)
    ids = np.full((len(items), width), pad_id, np.int64)
    labels = np.full((len(items), width), IGNORE, np.int64)
    mask = np.zeros((len(items), width), np.int64)
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        ids[row, :n], labels[row, :n], mask[row, :n] = item["input_ids"], item["labels"], 1
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(labels)}


def check_trainable(sft: TokenizedSFT) -> None:
    """Refuse records that train nothing: all labels IGNORE, or only the first token labelled
    (no token comes before it, so it is never predicted). A micro-batch of such records has
    a loss of 0/0 (NaN). Callers drop them first."""
    if len(sft) == 0:
        raise InputError("no records to train on", field="labels")
    if not (len(sft.input_ids) == len(sft.labels) == sft.offsets[-1]):
        raise InputError(f"input_ids ({len(sft.input_ids)}), labels ({len(sft.labels)}) and "
                         f"offsets (last {sft.offsets[-1]}) disagree", field="labels")
    trained = sft.trained().astype(np.int64)
    starts = sft.offsets[:-1]
    trained[starts[sft.lengths > 0]] = 0
    seen = np.zeros(len(trained) + 1, np.int64)
    np.cumsum(trained, out=seen[1:])
    bad = np.flatnonzero(seen[sft.offsets[1:]] - seen[starts] == 0)
    if bad.size:
        raise InputError(f"{bad.size} of {len(sft)} records have no trained token (labels all "
                         f"-100 after the first token), the first is record {bad[0]} (input row "
                         f"{sft.rows[bad[0]]}); drop them before training", field="labels")


def train_sft(model: Any, tokenizer: Any, sft: TokenizedSFT, settings: TrainSettings, *,
              output_dir: Path, on_log: Callable[[dict], None] | None = None) -> TrainResult:
    """Train `model` on `sft`'s labels with transformers' Trainer; return the trained model.

    The model is trained in place (LoRA: adapters are added, trained and merged into it) and
    returned in eval mode on the device it trained on. `on_log` gets, every
    `settings.logging_steps` optimizer steps, a dict with step, epoch, loss (mean over the
    label tokens since the last log), learning_rate, grad_norm, tokens_per_second (non-pad
    tokens) and label_tokens_per_second. `output_dir` is Trainer's working folder (nothing is
    saved there; see `save_model`). Records without a trained token are refused (InputError);
    a LoRA target the model lacks is a ConfigError naming the modules it has. Inside a
    torchrun launch every process calls it alike (data-parallel, see the module docstring);
    the logged numbers and the token counts are those of all processes together.
    """
    from transformers import set_seed

    check_trainable(sft)
    set_seed(settings.seed)  # LoRA's adapter init draws from it
    if settings.lora:
        model = _with_lora(model, settings)
    elif settings.trainable:
        freeze_except(model, settings.trainable)
    trainable, total = count_params(model)
    counter = _Throughput()
    trainer = _trainer_class()(
        model=model, args=_training_arguments(settings, output_dir), train_dataset=SFTDataset(sft),
        data_collator=functools.partial(pad_batch, pad_id=pad_id(tokenizer)),
        callbacks=[_log_callback(counter, on_log)], sampling=_sampling(settings, sft),
        counter=counter)
    output = trainer.train()
    model = trainer.model
    if settings.lora:
        model = model.merge_and_unload()
    seconds = max(float(output.metrics.get("train_runtime", 0.0)), 1e-9)
    metrics = {"train_loss": float(output.metrics.get("train_loss", output.training_loss)),
               "steps": int(trainer.state.global_step), "seconds": seconds,
               "tokens": counter.total_tokens, "label_tokens": counter.total_label_tokens,
               "tokens_per_second": counter.total_tokens / seconds,
               "label_tokens_per_second": counter.total_label_tokens / seconds,
               "trainable_params": trainable, "total_params": total}
    return TrainResult(model.eval(), metrics)


def save_model(model: Any, tokenizer: Any, folder: Path) -> Path:
    """Write model (safetensors: transformers 5 writes no other format) and tokenizer to
    `folder` with save_pretrained, atomically: into a temporary sibling folder that then
    replaces `folder`. A folder holding anything but a saved model is refused."""
    folder = Path(folder)
    if folder.is_dir() and any(folder.iterdir()) and not (folder / "config.json").exists():
        raise InputError("this folder holds files that are not a saved model; choose an empty "
                         "or new folder", file=str(folder))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex}"
    old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex}"
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if folder.exists():
            os.replace(folder, old)
        try:
            os.replace(tmp, folder)
        except OSError:
            if old.exists():
                os.replace(old, folder)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return folder


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its end-of-sequence id (padding is masked anyway)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0


def world_size() -> int:
    """Processes of the torchrun launch this process belongs to (1 outside of one)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def process_rank() -> int:
    """This process's global rank in its torchrun launch (0 outside of one): rank 0 is the
    one that writes outputs."""
    return int(os.environ.get("RANK", "0") or 0)


def _use_cpu(device: str) -> bool:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("no CUDA device is available", key="device")
    return device == "cpu" or not torch.cuda.is_available()


def _training_arguments(settings: TrainSettings, output_dir: Path) -> Any:
    """TrainingArguments for `settings`: no checkpoints, no reporting, a progress bar; inside
    a launch of several processes, DDP over gloo (CPU) or nccl (GPU) with the loss averaged
    over the label tokens of all processes."""
    from transformers import TrainingArguments

    use_cpu = _use_cpu(settings.device)
    backend = ("gloo" if use_cpu else "nccl") if world_size() > 1 else None
    return TrainingArguments(
        output_dir=str(output_dir), learning_rate=settings.learning_rate,
        num_train_epochs=float(settings.epochs), max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        warmup_steps=settings.warmup_ratio,  # a float below 1 is a share of the steps
        lr_scheduler_type=_SCHEDULER_NAMES[settings.scheduler],
        weight_decay=settings.weight_decay, optim=settings.optimizer,
        max_grad_norm=settings.max_grad_norm, bf16=settings.precision == "bf16",
        use_cpu=use_cpu, dataloader_pin_memory=not use_cpu, seed=settings.seed,
        data_seed=settings.seed, logging_steps=settings.logging_steps, report_to="none",
        disable_tqdm=False, save_strategy="no", remove_unused_columns=False,
        ddp_backend=backend, average_tokens_across_devices=True)


def _sampling(settings: TrainSettings, sft: TokenizedSFT) -> tuple[str, list[int] | None]:
    """("sequential" | "random" | "length", the records' lengths for "length")."""
    if not settings.shuffle:
        return "sequential", None
    if settings.group_by_length:
        return "length", sft.lengths.tolist()
    return "random", None


def _with_lora(model: Any, settings: TrainSettings) -> Any:
    """`model` with LoRA adapters on `settings.lora_targets` (only they train)."""
    from peft import LoraConfig, get_peft_model

    names = _linear_module_names(model)
    missing = [t for t in settings.lora_targets if t not in names]
    if missing or not settings.lora_targets:
        wanted = ", ".join(missing) or "(none given)"
        raise ConfigError(f"the model has no linear module named {wanted}; its linear modules "
                          f"are {', '.join(sorted(names))}", section="finetune",
                          key="lora_targets")
    config = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha,
                        lora_dropout=settings.lora_dropout,
                        target_modules=list(settings.lora_targets), bias="none",
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def freeze_except(model: Any, names: Sequence[str]) -> None:
    """Let only the parameters `names` train (requires_grad); an unknown name is an
    InputError listing a few the model has."""
    params = dict(model.named_parameters(remove_duplicate=False))
    unknown = [n for n in names if n not in params]
    if unknown:
        raise InputError(f"the model has no parameter {unknown[0]!r}; it has e.g. "
                         f"{', '.join(list(params)[:3])}", field="trainable")
    chosen = {id(params[n]) for n in names}
    for param in params.values():
        param.requires_grad_(id(param) in chosen)


def _linear_module_names(model: Any) -> set[str]:
    """The last name part of every module LoRA can adapt (torch Linear, GPT-2's Conv1D)."""
    import torch

    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
            if name and (isinstance(module, torch.nn.Linear)
                         or type(module).__name__ == "Conv1D")}


def count_params(model: Any) -> tuple[int, int]:
    """(trainable, all) parameter counts."""
    params = list(model.parameters())
    return (sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


class _Throughput:
    """Tokens that went through training steps: since the last log and in total."""

    def __init__(self) -> None:
        self.tokens: Any = 0  # tensors on the training device until read: no sync per step
        self.label_tokens: Any = 0
        self.total_tokens = 0
        self.total_label_tokens = 0
        self.since = time.perf_counter()

    def add(self, inputs: dict[str, Any]) -> None:
        self.tokens = self.tokens + inputs["attention_mask"].sum()
        # the first position is never predicted (the loss shifts labels by one)
        self.label_tokens = self.label_tokens + (inputs["labels"][:, 1:] != IGNORE).sum()

    def restart(self) -> None:
        self.tokens, self.label_tokens, self.since = 0, 0, time.perf_counter()

    def take(self) -> tuple[int, int, float]:
        """(tokens, label tokens, seconds) since the last take, summed over every process of
        a launch (every process calls it at the same step); starts counting anew."""
        tokens, labels = _sum_over_processes(int(self.tokens), int(self.label_tokens))
        seconds = max(time.perf_counter() - self.since, 1e-9)
        self.total_tokens += tokens
        self.total_label_tokens += labels
        self.restart()
        return tokens, labels, seconds


def _sum_over_processes(*values: int) -> tuple[int, ...]:
    """`values` summed over the processes of the launch (as they are outside of one)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    device = (torch.device("cuda", torch.cuda.current_device())
              if dist.get_backend() == "nccl" else torch.device("cpu"))
    total = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(total)
    return tuple(int(v) for v in total.tolist())


def _log_callback(counter: _Throughput, on_log: Callable[[dict], None] | None) -> Any:
    """A TrainerCallback that adds throughput to every training log and passes it on."""
    from transformers import TrainerCallback

    class _OnLog(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            counter.restart()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None,
                   **kwargs: Any) -> None:
            if not logs or "loss" not in logs:  # the end-of-training summary
                return
            tokens, label_tokens, seconds = counter.take()
            record = {"step": int(state.global_step), "epoch": float(logs.get("epoch") or 0.0),
                      "loss": float(logs["loss"]),
                      "learning_rate": float(logs.get("learning_rate", float("nan"))),
                      "grad_norm": float(logs.get("grad_norm", float("nan"))),
                      "tokens_per_second": tokens / seconds,
                      "label_tokens_per_second": label_tokens / seconds}
            if on_log is not None:
                on_log(record)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            counter.take()  # the steps after the last log count in the totals

    return _OnLog()


@functools.cache
def _trainer_class() -> type:
    """transformers' Trainer with seeded (length-grouped) sampling and token counting."""
    import torch
    from transformers import Trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class _SFTTrainer(Trainer):
        def __init__(self, *args: Any, sampling: tuple[str, list[int] | None],
                     counter: _Throughput, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._sampling, self._counter = sampling, counter

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            kind, lengths = self._sampling
            if kind == "sequential":
                return torch.utils.data.SequentialSampler(dataset)
            generator = torch.Generator().manual_seed(self.args.seed)
            if kind == "length":
                # groups of one optimizer step of all processes: every process draws the same
                # order, whatever the number of processes it is shared among
                size = (self.args.train_batch_size * self.args.gradient_accumulation_steps
                        * self.args.world_size)
                return LengthGroupedSampler(size, lengths=lengths, generator=generator)
            return torch.utils.data.RandomSampler(dataset, generator=generator)

        def training_step(self, model: Any, inputs: dict[str, Any],
                          num_items_in_batch: Any = None) -> Any:
            self._counter.add(inputs)
            return super().training_step(model, inputs, num_items_in_batch)

    return _SFTTrainer
