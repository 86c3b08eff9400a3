"""Benchmark: HFRater (one forward pass per batch) against rating by `model.generate()`.

On the packaged SmolLM2-135M-Instruct (converted copy via `load_causal_lm`), with Q/A pairs
built from stdlib docstrings ("What does json.dumps do?" + the start of its docstring;
a third get the answer of another function, so that quality varies). Measures:
- the first GGUF conversion and a cached load (`--skip-conversion` reuses the user cache);
- tokens/s of the bare forward pass (full prompts, logits at the last position only);
- samples/s of HFRater at batch sizes 1, 8, 16 and max_prompt_tokens 128, 256, and without
  reusing the instruction prefix;
- samples/s of greedy `generate(max_new_tokens=4)` on the same prompt tokens + parsing the
  digit, and the agreement of its scores with HFRater's;
- a projection for 2,000 demo records (short Q/A pairs, median ~60 tokens) per text budget.

Usage: python benchmarks/rater.py [--texts 48] [--out benchmarks/results/rater.json]
"""

from __future__ import annotations

import argparse
import collections
import functools
import inspect
import itertools
import json
import math
import os
import platform
import re
import shutil
import statistics
import string
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from report import write_report

_MODULES = (json, os.path, re, itertools, functools, collections, math, string, textwrap,
            shutil, statistics)


def docstring_pairs() -> list[tuple[str, str]]:
    """(question, answer) per documented public callable of a few stdlib modules; the answer
    is the first two paragraphs of its docstring, at most 120 words."""
    pairs = []
    for module in _MODULES:
        for name, obj in inspect.getmembers(module, callable):
            doc = inspect.getdoc(obj)
            if name.startswith("_") or not doc:
                continue
            answer = " ".join(" ".join(doc.split("\n\n")[:2]).split()[:120])
            pairs.append((f"What does {module.__name__}.{name} do?", answer))
    return pairs


def qa_texts(count: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """`count` Q/A texts and whether each answer belongs to its question."""
    rng = np.random.default_rng(seed)
    pairs = docstring_pairs()
    chosen = rng.choice(len(pairs), size=count, replace=False)
    matched = np.ones(count, dtype=bool)
    matched[rng.choice(count, size=count // 3, replace=False)] = False
    texts = []
    for i, j in enumerate(chosen):
        question = pairs[j][0]
        answer = pairs[j][1] if matched[i] else pairs[int(rng.integers(len(pairs)))][1]
        texts.append(f"Question: {question}\nAnswer: {answer}")
    return texts, matched


def demo_texts(count: int, tokenizer, seed: int = 1) -> list[str]:
    """Short Q/A texts whose token counts have a median near 60, like the demo records."""
    rng = np.random.default_rng(seed)
    pairs = docstring_pairs()
    words = " ".join(" ".join(p) for p in pairs).split()
    texts = []
    for _ in range(count):
        question = pairs[int(rng.integers(len(pairs)))][0]
        n_words = int(np.clip(rng.lognormal(np.log(32), 0.5), 5, 300))
        start = int(rng.integers(len(words) - n_words))
        texts.append(f"Question: {question}\nAnswer: {' '.join(words[start:start + n_words])}")
    return texts


def token_counts(tokenizer, texts: list[str]) -> np.ndarray:
    """Token count of each text on its own."""
    return np.array([len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]])


def timed(fn, repeat: int = 1):
    """(result of the last call, best wall seconds, best CPU seconds of this process) over
    `repeat` calls. With one torch thread, CPU seconds estimate the wall time of an idle
    machine when other processes share the cores."""
    best, best_cpu, result = math.inf, math.inf, None
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - start_cpu)
    return result, best, best_cpu


def per_s(count: int, seconds: float, cpu: float) -> dict[str, float]:
    """Throughput by wall clock and by this process's CPU time."""
    return {"samples_per_s": round(count / seconds, 2),
            "samples_per_cpu_s": round(count / cpu, 2)}


def left_padded(prompts: list[list[int]], pad: int):
    """(input_ids, attention_mask) tensors of prompts, left-padded."""
    import torch

    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):  # benchmark set-up, not a hot path
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    return ids, mask


def generate_scores(model, tokenizer, prompts: list[list[int]], batch_size: int,
                    scores: tuple[int, ...]) -> np.ndarray:
    """Greedy generate(max_new_tokens=4) per batch, first score digit parsed (-1 if none)."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    digit = re.compile("[" + "".join(map(str, scores)) + "]")
    out = np.full(len(prompts), -1)
    with torch.inference_mode():
        for begin in range(0, len(prompts), batch_size):
            ids, mask = left_padded(prompts[begin:begin + batch_size], pad)
            new = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4,
                                 do_sample=False, pad_token_id=pad)[:, ids.shape[1]:]
            for row, answer in enumerate(tokenizer.batch_decode(new, skip_special_tokens=True)):
                found = digit.search(answer)
                out[begin + row] = int(found.group()) if found else -1
    return out


def forward_tokens_per_s(model, tokenizer, prompts: list[list[int]],
                         batch_size: int) -> dict[str, int]:
    """Real (unpadded) prompt tokens per second of plain forward passes, last logits only."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = np.argsort([-len(p) for p in prompts], kind="stable")
    batches = [left_padded([prompts[i] for i in order[b:b + batch_size]], pad)
               for b in range(0, len(prompts), batch_size)]

    def run() -> None:
        with torch.inference_mode():
            for ids, mask in batches:
                positions = (mask.cumsum(1) - 1).clamp(min=0)
                model(input_ids=ids, attention_mask=mask, position_ids=positions,
                      use_cache=False, logits_to_keep=1)

    _, seconds, cpu = timed(run)
    tokens = sum(map(len, prompts))
    return {"wall": round(tokens / seconds), "cpu": round(tokens / cpu)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=48)
    parser.add_argument("--demo-texts", type=int, default=96)
    parser.add_argument("--skip-conversion", action="store_true",
                        help="load the cached converted copy instead of timing a conversion")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default="benchmarks/results/rater.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load_before = os.getloadavg()[0]

    start = time.perf_counter()
    import torch

    from crediflow.llm import load_causal_lm
    from crediflow.raters import HFRater
    import_s = time.perf_counter() - start
    if args.threads:
        torch.set_num_threads(args.threads)

    result: dict = {"benchmark": "rater", "model": "SmolLM2-135M-Instruct (GGUF Q4_1 -> fp32)",
                    "import_seconds": round(import_s, 2)}
    with tempfile.TemporaryDirectory() as tmp:
        if args.skip_conversion:
            folder = None
        else:
            folder = Path(tmp) / "smollm2"
            _, seconds, cpu = timed(lambda: load_causal_lm(cache_dir=folder))
            result["first_load_with_gguf_conversion_seconds"] = {"wall": round(seconds, 1),
                                                                 "cpu": round(cpu, 1)}
        (model, tokenizer), seconds, cpu = timed(lambda: load_causal_lm(cache_dir=folder),
                                                 repeat=2)
        result["cached_load_seconds"] = {"wall": round(seconds, 2), "cpu": round(cpu, 2)}

    texts, matched = qa_texts(args.texts)
    result["texts"] = len(texts)
    result["torch_threads"] = torch.get_num_threads()
    scores = (1, 2, 3, 4, 5)

    probe = HFRater(model, tokenizer)
    text_tokens = token_counts(tokenizer, texts)
    result["text_tokens"] = {"median": int(np.median(text_tokens)),
                             "p90": int(np.percentile(text_tokens, 90)),
                             "max": int(text_tokens.max())}
    result["instruction_tokens"] = {"before_text": len(probe.prefix_ids),
                                    "after_text": len(probe.suffix_ids)}

    full_prompts = HFRater(model, tokenizer, max_prompt_tokens=256).encode(texts)
    forward_tokens_per_s(model, tokenizer, full_prompts[:4], 4)  # warm-up
    result["bare_forward_tokens_per_s"] = {
        f"batch_{b}": forward_tokens_per_s(model, tokenizer, full_prompts, b) for b in (1, 8)}

    runs, reference = [], None
    for max_tokens, batch, reuse in [(128, 1, True), (128, 8, True), (128, 16, True),
                                     (256, 1, True), (256, 8, True), (256, 16, True),
                                     (256, 8, False)]:
        rater = HFRater(model, tokenizer, max_prompt_tokens=max_tokens, batch_size=batch,
                        reuse_prefix=reuse)
        rater.rate(texts[:2])  # warm-up, and the shared prefix is computed once per rater
        ratings, seconds, cpu = timed(lambda r=rater: r.rate(texts))
        print(f"rater max_prompt_tokens={max_tokens} batch={batch} reuse={reuse}: "
              f"{len(texts) / seconds:.2f} samples/s", file=sys.stderr)
        runs.append({"max_prompt_tokens": max_tokens, "batch_size": batch,
                     "reuse_prefix": reuse, **per_s(len(texts), seconds, cpu)})
        if (max_tokens, batch, reuse) == (256, 8, True):
            reference = ratings
    result["hf_rater"] = runs

    generated = {}
    for batch in (1, 8):
        model.generation_config.max_length = None
        scored, seconds, cpu = timed(
            lambda b=batch: generate_scores(model, tokenizer, full_prompts, b, scores))
        print(f"generate batch={batch}: {len(texts) / seconds:.2f} samples/s", file=sys.stderr)
        generated[batch] = scored
        result.setdefault("generate", []).append(
            {"max_prompt_tokens": 256, "batch_size": batch, "max_new_tokens": 4,
             **per_s(len(texts), seconds, cpu), "unparseable": int((scored < 0).sum())})
    result["speedup"] = {"goal": ">= 5x"}
    for clock in ("samples_per_s", "samples_per_cpu_s"):
        by_setting = {(r["max_prompt_tokens"], r["batch_size"], r["reuse_prefix"]): r[clock]
                      for r in runs}
        generate_b1, generate_b8 = (g[clock] for g in result["generate"])
        result["speedup"][clock] = {
            "best_vs_best": round(max(by_setting.values()) / max(generate_b1, generate_b8), 2),
            "same_batch_8": round(by_setting[256, 8, True] / generate_b8, 2),
            "same_batch_1": round(by_setting[256, 1, True] / generate_b1, 2),
            "without_prefix_reuse_batch_8": round(by_setting[256, 8, False] / generate_b8, 2),
            "rater_best_vs_generate_batch_1": round(max(by_setting.values()) / generate_b1, 2),
        }

    parsed = generated[8] >= 0
    both = reference.argmax[parsed], generated[8][parsed]
    result["agreement"] = {
        "argmax_equals_generated_digit": round(float(np.mean(both[0] == both[1])), 3)
        if parsed.any() else None,
        "pearson_expected_vs_generated": round(float(np.corrcoef(
            reference.expected[parsed], both[1])[0, 1]), 3)
        if parsed.sum() > 2 and np.std(both[1]) > 0 else None,
        "generate_unparseable": int((~parsed).sum()),
        "generate_batch_1_vs_8_equal": round(float(np.mean(generated[1] == generated[8])), 3),
        "rater_argmax_counts": {str(k): int((reference.argmax == k).sum()) for k in scores},
        "mean_expected_matched_answers": round(float(reference.expected[matched].mean()), 3),
        "mean_expected_mismatched_answers": round(float(reference.expected[~matched].mean()), 3),
    }

    # Projection for the demo: 2,000 short Q/A records (median ~60 text tokens). Per-row cost is
    # the text (capped by the budget) plus the closing tokens; the instructions are shared.
    demo = demo_texts(args.demo_texts, tokenizer)
    demo_tokens = token_counts(tokenizer, demo)
    overhead = len(probe.prefix_ids) + len(probe.suffix_ids)
    projection = []
    for budget, batch in [(32, 16), (40, 16), (48, 16), (64, 16), (32, 8), (96, 16)]:
        rater = HFRater(model, tokenizer, max_prompt_tokens=overhead + budget, batch_size=batch)
        rater.rate(demo[:2])
        _, seconds, cpu = timed(lambda r=rater: r.rate(demo))
        print(f"demo budget={budget} batch={batch}: {len(demo) / seconds:.2f} samples/s",
              file=sys.stderr)
        projection.append({"text_budget_tokens": budget, "max_prompt_tokens": overhead + budget,
                           "batch_size": batch, **per_s(len(demo), seconds, cpu),
                           "projected_seconds_for_2000": round(2000 * seconds / len(demo)),
                           "projected_cpu_seconds_for_2000": round(2000 * cpu / len(demo))})
    result["demo_projection"] = {
        "texts": len(demo),
        "text_tokens_median": int(np.median(demo_tokens)),
        "text_tokens_p90": int(np.percentile(demo_tokens, 90)),
        "runs": projection,
        "goal": "2000 records < 240 s",
    }
    result["load_average_1min"] = {"before": round(load_before, 2),
                                   "after": round(os.getloadavg()[0], 2)}
    result["machine"] = (f"{platform.machine()}, {os.cpu_count()} cores, Python "
                         f"{platform.python_version()}, torch {torch.__version__}")
    write_report(result, args.out)


if __name__ == "__main__":
    main()
