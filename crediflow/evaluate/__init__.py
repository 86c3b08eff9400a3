"""Evaluate: the base, fine-tuned and pruned models side by side on a held-out split that no
stage trained on (loss and perplexity, generation speed with a KV cache, parameters, size on
disk), and the gate that promotes one of them."""

from crediflow.evaluate.config import EvaluateConfig
from crediflow.evaluate.gate import BASE, FINETUNED, PRUNED, Decision, Scores, decide
from crediflow.evaluate.measures import (
    Speed,
    check_disjoint,
    generation_speed,
    parameter_count,
    perplexity,
    prompts_of,
    size_on_disk,
)

__all__ = ["BASE", "FINETUNED", "PRUNED", "Decision", "EvaluateConfig", "Scores", "Speed",
           "check_disjoint", "decide", "generation_speed", "parameter_count", "perplexity",
           "prompts_of", "size_on_disk"]
