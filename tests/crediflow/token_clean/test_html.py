"""The kept/dropped token page: one span per shown token, the right classes, escaped text."""

from __future__ import annotations

import re

import numpy as np
import pytest

from crediflow.errors import InputError
from crediflow.models.sft import IGNORE, TokenizedSFT
from crediflow.token_clean import apply_selection, select_tokens, tokens_html

SPAN = re.compile(r'<span class="t (\w)" title="([^"]*)">([^<]*)</span>')


@pytest.fixture
def case(tiny_lm):
    """Three records: prompt tokens, then a response; record 1's response holds a script tag."""
    _, tokenizer = tiny_lm
    texts = [("Q: what does json dumps do?", " A: it serializes obj"),
             ("Rate it 1 to 5.", ' <script>alert("x")</script> & more'),
             ("1 2 3", " 4 5")]
    ids, labels, offsets = [], [], [0]
    for prompt, answer in texts:
        p, a = tokenizer.encode(prompt), tokenizer.encode(answer)
        ids += p + a
        labels += [IGNORE] * len(p) + a
        offsets.append(len(ids))
    sft = TokenizedSFT(np.array(ids), np.array(labels), np.array(offsets), np.arange(3))
    scores = np.where(sft.trained(), np.random.default_rng(0).normal(size=len(ids)), np.nan)
    keep = select_tokens(scores, sft, rho=0.5)
    return tokenizer, sft, keep, scores


def test_one_span_per_token_with_its_class_and_score(case):
    tokenizer, sft, keep, scores = case
    page = tokens_html(tokenizer, sft, keep, scores, records=10)
    spans = SPAN.findall(page)
    assert len(spans) == len(sft.input_ids) == page.count('class="t ')
    expected = np.where(sft.trained(), np.where(keep, "k", "d"), "p")
    assert [kind for kind, _, _ in spans] == expected.tolist()
    for (kind, title, _), score in zip(spans, scores, strict=True):
        assert title == ("prompt (not trained)" if kind == "p" else f"score {score:.4g}")
    shown = "".join(text for _, _, text in spans).replace("&quot;", '"').replace("&amp;", "&")
    assert shown.replace("&lt;", "<").replace("&gt;", ">") == tokenizer.decode(sft.input_ids)


def test_escapes_html_and_is_self_contained(case):
    tokenizer, sft, keep, scores = case
    page = tokens_html(tokenizer, sft, keep, scores)
    assert "<script" not in page.lower()
    assert "&lt;" in page and "&amp;" in page
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"(src|href)=|@import|url\(", page)  # no external assets
    n_label, n_kept = int(sft.trained().sum()), int(keep.sum())
    assert f"{n_label} response tokens, {n_kept} kept" in page
    assert "Legend" in page


def test_seeded_sample_of_records(case):
    tokenizer, sft, keep, scores = case
    page = tokens_html(tokenizer, sft, keep, scores, records=2, seed=3)
    assert page == tokens_html(tokenizer, sft, keep, scores, records=2, seed=3)
    shown = [int(i) for i in re.findall(r"<h2>record (\d+) ", page)]
    assert len(shown) == 2 and shown == sorted(shown)
    assert len(SPAN.findall(page)) == int(sft.lengths[shown].sum())
    cleaned, _, _ = apply_selection(sft, keep)  # the page is drawn from the labels before
    assert cleaned.trained().sum() < sft.trained().sum()


def test_shape_mismatch_is_an_input_error(case):
    tokenizer, sft, keep, scores = case
    with pytest.raises(InputError, match="shape"):
        tokens_html(tokenizer, sft, keep[:-1], scores)
