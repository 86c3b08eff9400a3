"""Settings of the prune method (params.yaml section `prune`).

Layer pruning after Lu et al., "Reassessing Layer Pruning in LLMs": choose k decoder layers
by a selector, build a shallower model without them, then (optionally) fine-tune only the
last few layers, the final norm and the lm_head ("partial-layer fine-tuning"). The paper
finds the simple `reverse` selector (drop the last layers) competitive with the
data-driven ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from crediflow.config import MethodConfig, option

SELECTORS = ("reverse", "random", "magnitude", "taylor", "block_influence", "perplexity")
NORMS = ("l1", "l2")
# selectors that need calibration records (a TokenizedSFT with labels)
CALIBRATED = ("taylor", "block_influence", "perplexity")


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
