"""A self-contained HTML page that shows which tokens token cleaning kept and dropped."""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from crediflow.errors import InputError
from crediflow.models.sft import TokenizedSFT

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; max-width: 70em; }
.rec { font-family: monospace; white-space: pre-wrap; word-break: break-all;
       border: 1px solid #ccc; padding: .6em; margin: .4em 0 1.2em; line-height: 1.6; }
.t { border-radius: 2px; }
.p { color: #888; }
.k { background: #c8efc8; color: #064; }
.d { background: #f7c6c6; color: #900; text-decoration: line-through; }
h2 { font-size: 1em; margin-bottom: 0; }
"""


def _token_texts(tokenizer: Any, ids: np.ndarray) -> dict[int, str]:
    """Each distinct token id decoded on its own."""
    unique = np.unique(ids).tolist()
    texts = tokenizer.batch_decode([[t] for t in unique], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
    return dict(zip(unique, texts, strict=True))


def _record_html(ids: np.ndarray, classes: np.ndarray, scores: np.ndarray,
                 texts: dict[int, str]) -> str:
    spans = []
    for token, kind, score in zip(ids.tolist(), classes.tolist(), scores.tolist(), strict=True):
        title = "prompt (not trained)" if kind == "p" else f"score {score:.4g}"
        spans.append(f'<span class="t {kind}" title="{html.escape(title)}">'
                     f"{html.escape(texts[token])}</span>")
    return "".join(spans)


def tokens_html(tokenizer: Any, sft_before: TokenizedSFT, keep: np.ndarray,
                scores: np.ndarray, *, records: int = 20, seed: int = 0) -> str:
    """An HTML page (no external assets) with `records` records drawn at random (`seed`) from
    `sft_before` (the records before selection), in their order: tokens without a label in
    grey, kept label tokens green, dropped label tokens red and struck through; each token's
    score in its `title` (shown on hover). Tokens are decoded one at a time and HTML-escaped.
    A legend and the totals over the whole dataset head the page.
    """
    keep, scores = np.asarray(keep, bool), np.asarray(scores, np.float64)
    if keep.shape != sft_before.labels.shape or scores.shape != sft_before.labels.shape:
        raise InputError(f"keep {keep.shape} and scores {scores.shape} must both have the "
                         f"tokens' shape {sft_before.labels.shape}", field="keep")
    trained = sft_before.trained()
    classes = np.where(trained, np.where(keep, "k", "d"), "p")
    rng = np.random.default_rng(seed)
    shown = np.sort(rng.choice(len(sft_before), size=min(records, len(sft_before)),
                               replace=False))
    offsets = sft_before.offsets
    texts = _token_texts(tokenizer, np.concatenate(
        [sft_before.input_ids[offsets[i]:offsets[i + 1]] for i in shown] or [np.empty(0, int)]))
    n_label, n_kept = int(trained.sum()), int((keep & trained).sum())
    share = f"{n_kept / n_label:.1%}" if n_label else "n/a"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<title>Token cleaning: kept and dropped tokens</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Token cleaning: kept and dropped tokens</h1>",
        '<p>Legend: <span class="p">prompt (not trained)</span> '
        '<span class="k">kept response token</span> '
        '<span class="d">dropped response token</span>; hover a token for its score.</p>',
        f"<p>All {len(sft_before)} records: {n_label} response tokens, {n_kept} kept "
        f"({share}), {n_label - n_kept} dropped. Showing {len(shown)} records "
        f"(seed {seed}).</p>",
    ]
    for i in shown:
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        labelled = int(trained[lo:hi].sum())
        kept = int((keep[lo:hi] & trained[lo:hi]).sum())
        parts.append(f"<h2>record {i} (input row {int(sft_before.rows[i])}): {labelled} "
                     f"response tokens, {kept} kept</h2>")
        parts.append('<div class="rec">' + _record_html(
            sft_before.input_ids[lo:hi], classes[lo:hi], scores[lo:hi], texts) + "</div>")
    parts.append("</body></html>")
    return "\n".join(parts)
