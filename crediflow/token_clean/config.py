"""Settings of the token_clean stage (params.yaml section `token_clean`).

The base model, the maximum record length and the training settings of the reference models
(the warm-up model of `fixed` mode, the chunk models of `self_evolving` mode) come from the
`finetune` section, so that the model and its training are configured in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from crediflow.config import MethodConfig, option
from crediflow.models.precision import PRECISIONS

MODES = ("fixed", "self_evolving")
GRANULARITIES = ("global", "sample")


@dataclass(frozen=True)
class TokenCleanConfig(MethodConfig):
    """Token Cleaning (Pang et al.): which tokens of the responses are worth training on."""

    section: ClassVar[str] = "token_clean"

    mode: str = option("fixed", "fixed: the reference is the base fine-tuned on a warm-up "
                                "subset; self_evolving: each chunk is scored by the model "
                                "trained on the chunks before it", choices=MODES)
    rho: float = option(0.6, "share of response tokens kept (a ratio, not a score threshold)",
                        low=0, high=1, low_open=True)
    granularity: str = option("global", "global: rank all response tokens of the dataset "
                                        "together; sample: keep the top rho of each record",
                              choices=GRANULARITIES)
    warmup_size: int = option(64, "fixed: records with the highest curated ratings that train "
                                  "the reference model", low=1)
    chunks: int = option(5, "self_evolving: the shuffled data is cut into this many chunks",
                         low=2)
    heldout_fraction: float = option(0.1, "share of the records kept out of every training "
                                          "(the held-out loss of the finetune stage)",
                                     low=0, high=0.5, low_open=True)
    selected_only: bool = option(True, "use only the records that select marked `selected`")
    max_records: int | None = option(None, "use a seeded sample of this many records (null: "
                                           "all; the demo keeps its run short with it)", low=2)
    batch_size: int = option(8, "records per scoring forward pass", low=1)
    precision: str = option("auto", "auto | fp32 | bf16 for scoring (the reference models "
                                    "train in finetune.precision)", choices=PRECISIONS)
    html_records: int = option(20, "records shown in reports/token_clean/tokens.html", low=0)
    seed: int = option(0, "random seed (shuffles, held-out split)", low=0)
