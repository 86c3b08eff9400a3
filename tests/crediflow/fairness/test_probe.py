"""The fairness probe: COMPAS questions, yes/no read from next-token probabilities, decisions,
and the weak-proxy estimate on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from crediflow.errors import InputError
from crediflow.fairness import FairnessConfig
from crediflow.fairness.probe import (
    answer_ids,
    compas_probe,
    decisions_from,
    probe_fairness,
    yes_probability,
)

torch = pytest.importorskip("torch")


def test_decisions_by_argmax_and_by_base_rate():
    p_yes = np.array([0.2, 0.9, 0.4, 0.45, 0.1])
    labels = np.array([1, 0, 1, 0, 0])  # 40% yes -> the top 2 by P(yes)
    assert decisions_from(p_yes, labels, "argmax").tolist() == [0, 1, 0, 0, 0]
    assert decisions_from(p_yes, labels, "base_rate").tolist() == [0, 1, 0, 1, 0]
    with pytest.raises(InputError, match="unknown decision rule"):
        decisions_from(p_yes, labels, "median")


def test_compas_questions_leave_the_group_out_and_proxies_follow_the_noise():
    probe = compas_probe(600, 0.2, seed=1)
    assert len(probe.questions) == len(probe.labels) == len(probe.groups) == 600
    assert probe.proxies.shape == (600, 3)
    assert not any("african" in q.lower() or "caucasian" in q.lower() for q in probe.questions)
    wrong = (probe.proxies != probe.groups[:, None]).mean(axis=0)
    assert np.all(np.abs(wrong - 0.2) < 0.06)
    assert compas_probe(600, 0.2, seed=1).questions == probe.questions
    with pytest.raises(InputError, match=r"\[0, 0.5\)"):
        compas_probe(10, 0.5)
    with pytest.raises(InputError, match="at least 1 row"):
        compas_probe(0, 0.1)


def test_yes_probability_matches_one_question_at_a_time(tiny_lm):
    model, tokenizer = tiny_lm
    questions = ["will it rain?", "is the json string valid for this long question here?",
                 "ok?"]
    batched = yes_probability(model, tokenizer, questions, batch_size=3)
    assert tokenizer.padding_side == "right"  # restored
    yes, no = answer_ids(tokenizer)
    assert len(yes) and len(no) and not set(yes) & set(no)
    for question, got in zip(questions, batched, strict=True):
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                             tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            probs = torch.softmax(model(input_ids=ids).logits[0, -1], dim=-1)
        expected = probs[yes].sum() / (probs[yes].sum() + probs[no].sum())
        assert got == pytest.approx(float(expected), abs=1e-5)


def test_probe_fairness_on_a_tiny_model(tiny_lm):
    model, tokenizer = tiny_lm
    probe = compas_probe(200, 0.1, seed=0)
    decisions, estimate = probe_fairness(model, tokenizer, probe,
                                         config=FairnessConfig(on_singular="raw"))
    assert decisions.sum() == round(probe.labels.mean() * 200)
    assert estimate.true is not None and 0 <= estimate.true.dp <= 1
    assert np.isfinite(estimate.calibrated.dp)
