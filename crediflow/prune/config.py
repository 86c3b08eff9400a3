"""Settings of the prune method (params.yaml section `prune`).

Layer pruning after Lu et al., "Reassessing Layer Pruning in LLMs": choose k decoder layers
by a selector, build a shallower model without them, then (optionally) fine-tune only the
last few layers, the final norm and the lm_head ("partial-layer fine-tuning"). The paper
finds the simple `reverse` selector (drop the last layers) competitive with the
data-driven ones.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from crediflow.config import MethodConfig, option
from crediflow.models.training import TrainSettings

SELECTORS = ("reverse", "random", "magnitude", "taylor", "block_influence", "perplexity")
NORMS = ("l1", "l2")
# selectors that need calibration records (a TokenizedSFT with labels)
CALIBRATED = ("taylor", "block_influence", "perplexity")
RECOVERY = ("partial", "lora", "none")
TIED_HEAD = ("shared", "untie")


@dataclass(frozen=True)
class PruneConfig(MethodConfig):
    """Which decoder layers to remove, and how many to train afterwards."""

    section: ClassVar[str] = "prune"

    selector: str = option("reverse", "how layers are chosen: reverse (the last k), random "
                                      "(seeded), magnitude (smallest weight norm), taylor "
                                      "(smallest |sum W * dL/dW|), block_influence (smallest "
                                      "1 - cosine between a layer's input and output), "
                                      "perplexity (smallest loss after removing the layer)",
                           choices=SELECTORS)
    ratio: float = option(0.25, "share of the decoder layers to remove (k = round(ratio * "
                                "layers), at least 1, at most layers - 1)",
                          low=0, high=1, low_open=True, high_open=True)
    count: int | None = option(None, "number of layers to remove; overrides ratio (null: use "
                                     "ratio)", low=1)
    norm: str = option("l1", "magnitude: l1 (sum |W|) or l2 (sum W^2) per layer",
                       choices=NORMS)
    trainable_last: int = option(3, "partial fine-tuning: how many of the last layers train "
                                    "(with the final norm and lm_head)", low=0)
    calibration_records: int = option(32, "taylor, block_influence, perplexity: the first "
                                          "records of the calibration set that score layers",
                                      low=1)
    seed: int = option(0, "random seed of the random selector", low=0)
    finetune: str = option("partial", "training after pruning, through the finetune stage's "
                                      "code: partial (only the last `trainable_last` layers, "
                                      "the final norm and the lm_head), lora (adapters on "
                                      "finetune.lora_targets, rank lora_r), none",
                           choices=RECOVERY)
    tied_head: str = option("shared", "partial, when the lm_head is the input embedding "
                                      "matrix (SmolLM2): shared trains that one matrix (the "
                                      "embeddings change too; no parameter added), untie gives "
                                      "the head its own copy first (embeddings frozen; vocab x "
                                      "hidden parameters more)", choices=TIED_HEAD)
    learning_rate: float = option(1e-5, "peak learning rate of the training after pruning "
                                        "(the paper: 1e-5)", low=0, low_open=True)
    epochs: int = option(2, "passes over the token-cleaned records (the paper: 2)", low=1)
    max_steps: int = option(-1, "optimizer steps (-1: as many as epochs take)", low=-1)
    lora_r: int = option(8, "lora: adapter rank (the paper: 8)", low=1)
    lora_alpha: int = option(16, "lora: adapter scale (the paper: 16)", low=1)

    def recovery_settings(self, base: TrainSettings, trainable: tuple[str, ...] = ()
                          ) -> TrainSettings | None:
        """The finetune stage's settings with this section's schedule and method: `trainable`
        names the parameters of partial training; None when `finetune` is none."""
        if self.finetune == "none":
            return None
        if self.max_steps == 0:
            raise self.error("max_steps", "-1 (train for `epochs`) or 1 or more, got 0")
        lora = self.finetune == "lora"
        return replace(base, learning_rate=self.learning_rate, epochs=self.epochs,
                       max_steps=self.max_steps, lora=lora, lora_r=self.lora_r,
                       lora_alpha=self.lora_alpha, trainable=() if lora else tuple(trainable))
