"""Settings of the evaluate stage (params.yaml section `evaluate`): how the base, fine-tuned and
pruned models are measured, and the gate that promotes one of them to the registry alias
`champion`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from crediflow.config import MethodConfig, option
from crediflow.models.precision import PRECISIONS


@dataclass(frozen=True)
class EvaluateConfig(MethodConfig):
    """Held-out loss, generation speed, and the promotion gate."""

    section: ClassVar[str] = "evaluate"

    batch_size: int = option(8, "held-out records per forward pass (loss)", low=1)
    precision: str = option("auto", "auto | fp32 | bf16 for the held-out loss (auto: bf16 "
                                    "only where native)", choices=PRECISIONS)
    prompts: int = option(4, "generation speed: the first held-out prompts that each model "
                             "continues (one at a time, with a KV cache)", low=1)
    max_new_tokens: int = option(32, "generation speed: tokens generated per prompt (greedy, "
                                     "never stopped early)", low=1)
    repeats: int = option(3, "generation speed: timed passes over the prompts, the models "
                             "taking turns; the median pass counts", low=1)
    max_perplexity_increase: float = option(
        0.10, "gate: the pruned model passes when its held-out perplexity is at most this "
              "share above the fine-tuned model's ...", low=0)
    min_speedup: float = option(1.25, "gate: ... and it generates at least this many times "
                                      "as fast as the fine-tuned model", low=0)
    fairness_rows: int = option(160, "fairness probe: COMPAS rows asked of each model as yes/no "
                                     "questions (0: no probe)", low=0)
    fairness_proxy_noise: float = option(0.2, "fairness probe: each of the three proxies of "
                                              "the group is wrong with this probability",
                                         low=0, high=0.5, high_open=True)
    fairness_decision: str = option("base_rate", "fairness probe: argmax (yes where P(yes) > "
                                                 "P(no)) or base_rate (yes for the top share "
                                                 "of P(yes), as many as truly reoffended)",
                                    choices=("argmax", "base_rate"))
    max_fairness_gap_increase: float | None = option(
        None, "gate: a candidate fails when its calibrated demographic-parity gap exceeds the "
              "base model's by more than this (null: fairness does not gate)", low=0)
    promote_finetuned: bool = option(True, "gate: when the pruned model fails, the fine-tuned "
                                           "model passes if its held-out perplexity is below "
                                           "the base model's")
