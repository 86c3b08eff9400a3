"""The select task's rater settings: params.yaml's template and answer prefix reach the rater."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from crediflow.errors import InputError
from crediflow.raters import HFRater
from tasks.select import rate

PAIRS = [(f"what does json dumps do? {'really ' * n}", "it serializes obj " * (n + 1))
         for n in range(6)]


def _records() -> pa.Table:
    messages = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                for q, a in PAIRS]
    return pa.table({"messages": messages})


@pytest.fixture
def hf_params(tiny_lm, tmp_path: Path) -> dict:
    model, tokenizer = tiny_lm
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    return {"rater": "hf", "model": str(tmp_path / "tiny"), "template": None,
            "answer_prefix": None, "max_prompt_tokens": 600, "batch_size": 4,
            "cache": str(tmp_path / "ratings")}


def test_hf_rater_uses_the_template_and_answer_prefix_from_params(tiny_lm, hf_params) -> None:
    model, tokenizer = tiny_lm
    texts = [f"{q}\n{a}" for q, a in PAIRS]
    default, argmax = rate(_records(), hf_params)
    reference = HFRater(model, tokenizer, max_prompt_tokens=600, batch_size=4).rate(texts)
    np.testing.assert_allclose(default, reference.expected, atol=1e-5)
    np.testing.assert_array_equal(argmax, reference.argmax)

    custom = {**hf_params, "template": "Rate it 1 to 5.\n{text}\nOne digit.",
              "answer_prefix": ""}
    ratings, _ = rate(_records(), custom)
    expected = HFRater(model, tokenizer, template=custom["template"], answer_prefix="",
                       max_prompt_tokens=600, batch_size=4).rate(texts).expected
    np.testing.assert_allclose(ratings, expected, atol=1e-5)
    assert np.abs(ratings - default).max() > 1e-3  # the prompt really changed


def test_a_template_without_the_text_slot_is_refused(hf_params) -> None:
    with pytest.raises(InputError, match=r"\{text\}"):
        rate(_records(), {**hf_params, "template": "Rate this sample."})
