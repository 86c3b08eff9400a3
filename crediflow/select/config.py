"""Settings of the select stage (params.yaml section `select`)."""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from typing import ClassVar

from crediflow.config import MethodConfig, option
from crediflow.models.precision import PRECISIONS

RATERS = ("column", "hf", "openai")
SCORES = ("argmax", "expected")


def _template_check(template: str | None) -> str | None:
    """None, or a str.format template whose only field is {text}, used once."""
    if template is None:
        return None
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        return f"bad template: {exc} (write literal braces as {{{{ }}}})"
    if fields != ["text"]:
        return (f"the template must contain {{text}} exactly once and no other field, found "
                f"{fields}; write literal braces as {{{{ }}}}")
    return None


def _bins_check(edges: tuple[float, ...]) -> str | None:
    if len(edges) < 3:
        return f"need at least 3 edges (2 classes), got {list(edges)}"
    if any(not math.isfinite(e) for e in edges) or any(
            b <= a for a, b in zip(edges, edges[1:], strict=False)):
        return f"edges must be finite and strictly increasing, got {list(edges)}"
    return None


def _budget_check(budget: float) -> str | None:
    if budget >= 1 and budget != int(budget):
        return f"a budget of 1 or more is a row count, got {budget}"
    return None


@dataclass(frozen=True)
class SelectConfig(MethodConfig):
    """DS2 rating, score curation and selection settings."""

    section: ClassVar[str] = "select"

    rater: str = option("hf", "column: the ratings already in the data; hf: a local causal LM; "
                              "openai: an OpenAI-compatible endpoint", choices=RATERS)
    model: str | None = option(None, "hf: a causal LM folder or .gguf (null: the packaged "
                                     "SmolLM2-135M-Instruct)")
    template: str | None = option(None, "hf: the rating prompt with {text} once (null: the "
                                        "DS2-criteria rubric)", check=_template_check)
    answer_prefix: str = option("Score: ", "hf: the answer starts with this; the next token "
                                           "is the score")
    score: str = option("argmax", "hf: the rating is the most likely score (DS2's raw score) "
                                  "or the expected score over the digits", choices=SCORES)
    max_prompt_tokens: int = option(192, "hf: prompt tokens (instructions + the start of the "
                                         "text)", low=16)
    batch_size: int = option(16, "hf: texts per forward pass", low=1)
    precision: str = option("auto", "hf: auto (bf16 only where the device computes it natively "
                                    "and the rater measured the same scores in it; fp32 "
                                    "otherwise) | fp32 | bf16", choices=PRECISIONS)
    base_url: str = option("http://127.0.0.1:8000/v1", "openai: the endpoint's base URL")
    openai_model: str = option("gpt-4o-mini", "openai: the model name")
    api_key_env: str = option("OPENAI_API_KEY", "openai: the environment variable holding the "
                                                "API key")
    openai_template: str | None = option(None, "openai: the prompt with {text} once (null: "
                                               "the rubric asking for JSON)",
                                         check=_template_check)
    bins: tuple[float, ...] = option((0.5, 1.5, 2.5, 3.5, 4.5, 5.5),
                                     "rating class edges (strictly increasing)",
                                     check=_bins_check)
    budget: float = option(0.5, "rows to select: a count, or a fraction below 1", low=0,
                           low_open=True, check=_budget_check)
    k: int = option(10, "neighbours per sample (curation votes and long-tail score)", low=2)
    rounds: int = option(50, "HOC rounds", low=1)
    epochs: int = option(21, "detection epochs", low=1)
    threshold: float = option(0.5, "a flagged rating takes its suggestion at this confidence",
                              low=0, high=1)
    seed: int = option(0, "random seed", low=0)
