"""The promotion gate: which model, if any, becomes the registry's `champion`, and why.

The pruned model is preferred: it passes when its held-out perplexity is at most
`max_perplexity_increase` above the fine-tuned model's and it generates at least
`min_speedup` times as fast. Failing that, the fine-tuned model passes (with
`promote_finetuned`) when its held-out perplexity is below the base model's. With
`max_fairness_gap_increase` set, a candidate whose calibrated demographic-parity gap exceeds
the base model's by more than that fails too. When no candidate passes there is no new
champion: the previous one keeps the alias.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from crediflow.errors import InputError
from crediflow.evaluate.config import EvaluateConfig

BASE, FINETUNED, PRUNED = "base", "finetuned", "pruned"


@dataclass(frozen=True)
class Scores:
    """What the gate looks at for one model."""

    perplexity: float
    tokens_per_second: float
    fairness_gap: float | None = None  # calibrated demographic-parity gap of the probe


@dataclass(frozen=True)
class Decision:
    """The champion (a model's role, or None) and, per candidate, passed and why."""

    champion: str | None
    passed: dict[str, bool] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)


def decide(scores: Mapping[str, Scores], config: EvaluateConfig) -> Decision:
    """Apply the gate to the base, fine-tuned and (optional) pruned models' scores."""
    missing = [m for m in (BASE, FINETUNED) if m not in scores]
    if missing:
        raise InputError(f"the gate needs the {missing[0]} model's scores", field="model")
    passed: dict[str, bool] = {}
    reasons: dict[str, str] = {}
    tuned, base = scores[FINETUNED], scores[BASE]
    if PRUNED in scores:
        pruned = scores[PRUNED]
        limit = tuned.perplexity * (1 + config.max_perplexity_increase)
        speedup = pruned.tokens_per_second / max(tuned.tokens_per_second, 1e-12)
        ppl_ok = pruned.perplexity <= limit
        speed_ok = speedup >= config.min_speedup
        passed[PRUNED] = ppl_ok and speed_ok
        reasons[PRUNED] = (
            f"perplexity {pruned.perplexity:.3f} {'<=' if ppl_ok else '>'} {limit:.3f} "
            f"(fine-tuned {tuned.perplexity:.3f} + {config.max_perplexity_increase:.0%}); "
            f"speed-up {speedup:.2f}x {'>=' if speed_ok else '<'} {config.min_speedup:.2f}x")
    if config.promote_finetuned:
        ok = tuned.perplexity < base.perplexity
        passed[FINETUNED] = ok
        reasons[FINETUNED] = (f"perplexity {tuned.perplexity:.3f} "
                              f"{'<' if ok else '>='} base {base.perplexity:.3f}")
    else:
        passed[FINETUNED] = False
        reasons[FINETUNED] = "not a candidate (evaluate.promote_finetuned is false)"
    if config.max_fairness_gap_increase is not None:
        _fairness_gate(scores, config.max_fairness_gap_increase, passed, reasons)
    champion = next((m for m in (PRUNED, FINETUNED) if passed.get(m)), None)
    return Decision(champion, passed, reasons)


def _fairness_gate(scores: Mapping[str, Scores], bound: float, passed: dict[str, bool],
                   reasons: dict[str, str]) -> None:
    """Fail the candidates whose fairness gap grew by more than `bound` over the base's."""
    base = scores[BASE].fairness_gap
    for role in passed:
        gap = scores[role].fairness_gap
        if base is None or gap is None:
            passed[role] = False
            reasons[role] += "; no fairness gap measured (evaluate.fairness_rows is 0)"
            continue
        ok = gap - base <= bound
        passed[role] = passed[role] and ok
        reasons[role] += (f"; DP gap {gap:.3f} {'<=' if ok else '>'} base {base:.3f} + "
                          f"{bound:.3f}")
