"""Settings of the finetune stage (params.yaml section `finetune`).

Defaults run on a laptop CPU (max length 512); the paper recipe for orientation is LoRA r=64,
alpha=16, dropout 0.1 on all attention and MLP projections, learning rate 1e-4 with a linear
schedule and 3% warm-up, 1 epoch, max length 2048, bf16. `processes` and `machines` scale the
finetune stage out through torchrun (crediflow/finetune/launch.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from crediflow.config import MethodConfig, option
from crediflow.models.precision import PRECISIONS
from crediflow.models.training import LLAMA_PROJECTIONS, OPTIMIZERS, SCHEDULERS, TrainSettings

METHODS = ("full", "lora")


def _max_steps_check(steps: int) -> str | None:
    if steps == -1 or steps >= 1:
        return None
    return f"-1 (train for `epochs`) or a step count of 1 or more, got {steps}"


def _targets_check(targets: tuple[str, ...]) -> str | None:
    if not targets:
        return "need at least one module name"
    bad = [t for t in targets if not t.isidentifier()]
    if bad:
        return f"a target is a module's name (e.g. q_proj), got {bad[0]!r}"
    if len(set(targets)) != len(targets):
        return f"a module is named twice in {list(targets)}"
    return None


@dataclass(frozen=True)
class FinetuneConfig(MethodConfig):
    """Supervised fine-tuning on the labelled tokens: full or LoRA."""

    section: ClassVar[str] = "finetune"

    model: str | None = option(None, "the base model: a causal LM folder or .gguf (null: the "
                                     "packaged SmolLM2-135M-Instruct)")
    method: str = option("lora", "full: train every weight; lora: train low-rank adapters on "
                                 "lora_targets, merged into the model afterwards",
                         choices=METHODS)
    learning_rate: float = option(1e-4, "peak learning rate", low=0, low_open=True)
    epochs: int = option(1, "passes over the data (unless max_steps is set)", low=1)
    max_steps: int = option(-1, "optimizer steps to train (-1: as many as epochs take)",
                            check=_max_steps_check)
    batch_size: int = option(4, "records per micro-batch", low=1)
    grad_accum: int = option(1, "micro-batches per optimizer step (the loss is the mean over "
                                "all their label tokens)", low=1)
    warmup_ratio: float = option(0.03, "share of the steps over which the learning rate rises "
                                       "from 0", low=0, high=1, high_open=True)
    scheduler: str = option("linear", "learning rate after the warm-up: linear decay to 0, "
                                      "cosine decay, or constant", choices=SCHEDULERS)
    weight_decay: float = option(0.0, "AdamW weight decay", low=0)
    optimizer: str = option("adamw_torch", "the optimizer (transformers' names)",
                            choices=OPTIMIZERS)
    lora_r: int = option(64, "lora: adapter rank", low=1)
    lora_alpha: int = option(16, "lora: adapter scale (the update is scaled by alpha / r)",
                             low=1)
    lora_dropout: float = option(0.1, "lora: dropout on the adapters' input", low=0, high=1,
                                 high_open=True)
    lora_targets: tuple[str, ...] = option(LLAMA_PROJECTIONS, "lora: names of the linear "
                                                              "modules that get adapters",
                                           check=_targets_check)
    max_length: int = option(512, "tokens per record; longer records are cut", low=16)
    precision: str = option("auto", "auto (bf16 where the device computes it natively, else "
                                    "fp32) | fp32 | bf16 (autocast; weights stay fp32)",
                            choices=PRECISIONS)
    group_by_length: bool = option(True, "batch records of similar length together (less "
                                         "padding); the order stays seeded and random")
    seed: int = option(0, "random seed (adapter init, record order)", low=0)
    logging_steps: int = option(5, "optimizer steps between two logged losses", low=1)
    compare_all_tokens: bool = option(True, "also fine-tune a copy of the base on every "
                                            "response token for the same steps, and report "
                                            "both held-out losses (does cleaning help?)")
    processes: int = option(1, "training processes per machine (data-parallel through "
                               "torchrun, one per GPU; batch_size is per process, so a step "
                               "takes batch_size x grad_accum x processes x machines records; "
                               "the finetune stage only: token_clean and prune train in one)",
                            low=1)
    machines: int = option(1, "machines that train together (torchrun's nnodes; the "
                              "rendezvous comes from PET_MASTER_ADDR, PET_MASTER_PORT and "
                              "PET_NODE_RANK on each machine)", low=1)

    def to_settings(self, precision: str) -> TrainSettings:
        """The training settings, with `precision` already resolved (fp32 or bf16)."""
        if precision not in ("fp32", "bf16"):
            raise self.error("precision", f"resolve the precision first (fp32 or bf16), got "
                                          f"{precision!r}")
        return TrainSettings(
            learning_rate=self.learning_rate, epochs=self.epochs, max_steps=self.max_steps,
            batch_size=self.batch_size, grad_accum=self.grad_accum,
            warmup_ratio=self.warmup_ratio, scheduler=self.scheduler,
            weight_decay=self.weight_decay, optimizer=self.optimizer,
            lora=self.method == "lora", lora_r=self.lora_r, lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout, lora_targets=self.lora_targets,
            precision=precision, seed=self.seed, logging_steps=self.logging_steps,
            group_by_length=self.group_by_length)
