"""The promotion gate against hand-worked cases."""

from __future__ import annotations

import pytest

from crediflow.errors import ConfigError, InputError
from crediflow.evaluate import BASE, FINETUNED, PRUNED, EvaluateConfig, Scores, decide

CONFIG = EvaluateConfig(max_perplexity_increase=0.10, min_speedup=1.25)


def scores(pruned_ppl: float, pruned_tps: float, tuned_ppl: float = 10.0,
           base_ppl: float = 12.0) -> dict[str, Scores]:
    return {BASE: Scores(base_ppl, 100.0), FINETUNED: Scores(tuned_ppl, 100.0),
            PRUNED: Scores(pruned_ppl, pruned_tps)}


def test_pruned_within_bounds_becomes_champion():
    decision = decide(scores(11.0, 125.0), CONFIG)  # exactly at both limits
    assert decision.champion == PRUNED and decision.passed[PRUNED]
    assert "11.000 <= 11.000" in decision.reasons[PRUNED]
    assert "1.25x >= 1.25x" in decision.reasons[PRUNED]


@pytest.mark.parametrize(("ppl", "tps", "words"), [(11.01, 200.0, "11.010 > 11.000"),
                                                   (10.0, 124.0, "1.24x < 1.25x")])
def test_pruned_failing_falls_back_to_the_finetuned_model(ppl, tps, words):
    decision = decide(scores(ppl, tps), CONFIG)
    assert decision.champion == FINETUNED and not decision.passed[PRUNED]
    assert words in decision.reasons[PRUNED]
    assert "10.000 < base 12.000" in decision.reasons[FINETUNED]


def test_nothing_passes_keeps_no_champion():
    decision = decide(scores(50.0, 90.0, tuned_ppl=13.0), CONFIG)
    assert decision.champion is None and decision.passed == {PRUNED: False, FINETUNED: False}
    off = decide(scores(50.0, 90.0), EvaluateConfig(promote_finetuned=False))
    assert off.champion is None and "promote_finetuned" in off.reasons[FINETUNED]


def test_without_a_pruned_model_and_with_missing_scores():
    partial = {BASE: Scores(12.0, 1.0), FINETUNED: Scores(11.0, 1.0)}
    assert decide(partial, CONFIG).champion == FINETUNED
    with pytest.raises(InputError, match="base"):
        decide({FINETUNED: Scores(11.0, 1.0)}, CONFIG)


@pytest.mark.parametrize(("key", "value"), [("max_perplexity_increase", -0.1),
                                            ("min_speedup", -1), ("repeats", 0),
                                            ("prompts", 0), ("precision", "fp8")])
def test_bad_values_name_the_key(key, value):
    with pytest.raises(ConfigError, match=repr(key)):
        EvaluateConfig.from_mapping({key: value})


def test_fairness_bound_refuses_a_candidate_whose_gap_grew():
    config = EvaluateConfig(max_perplexity_increase=0.10, min_speedup=1.25,
                            max_fairness_gap_increase=0.05)
    base = {BASE: Scores(12.0, 100.0, 0.10), FINETUNED: Scores(10.0, 100.0, 0.20)}
    fair_pruned = base | {PRUNED: Scores(10.5, 130.0, 0.14)}
    decision = decide(fair_pruned, config)
    assert decision.champion == PRUNED
    assert "DP gap 0.140 <= base 0.100 + 0.050" in decision.reasons[PRUNED]
    assert not decision.passed[FINETUNED]  # 0.20 - 0.10 > 0.05
    unfair = base | {PRUNED: Scores(10.5, 130.0, 0.16)}
    assert decide(unfair, config).champion is None
    unmeasured = {r: Scores(s.perplexity, s.tokens_per_second) for r, s in fair_pruned.items()}
    assert "no fairness gap measured" in decide(unmeasured, config).reasons[PRUNED]
