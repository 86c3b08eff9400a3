"""Benchmark: HFRater (one forward pass per batch) against rating by `model.generate()`.

On the packaged SmolLM2-135M-Instruct (converted copy via `load_causal_lm`), with Q/A pairs
built from stdlib docstrings ("What does json.dumps do?" + the start of its docstring;
a third get the answer of another function, so that quality varies). Measures:
- the first GGUF conversion and a cached load (`--skip-conversion` reuses the user cache);
- tokens/s of the bare forward pass (full prompts, logits at the last position only);
- side by side on the same prompt tokens (instructions, text cut to a token budget, answer
  prefix): samples/s of HFRater and of greedy `generate(max_new_tokens=4)` + parsing the
  digit, at the demo's text budget (35 tokens, batch 16) and at 179 text tokens (batch 1
  and 8, and once without reusing the instruction prefix); with the default DS2-criteria
  rubric, and once with the short instructions crediflow used before;
- the agreement of the generated digits with HFRater's most likely scores;
- a projection for 2,000 demo records (short Q/A pairs, median ~60 tokens) per text budget;
- bf16 against fp32 (`bf16_vs_fp32`): the same model and demo texts at the demo setting, the
  forward passes once in fp32 and once under torch's bf16 autocast: the share of texts whose
  most likely score is the same, the differences of expected scores and probabilities, and
  the speed ratio. On a CPU without AVX512-BF16 or AMX-BF16, torch emulates bf16: the ratings
  are what a native bf16 device computes, but the speed is the emulation's (labelled so).

Usage: python benchmarks/rater.py [--texts 48] [--precision-texts 96] [--only-precision]
       [--out benchmarks/results/rater.json (rater_precision.json with --only-precision)]
"""

from __future__ import annotations

import argparse
import collections
import functools
import importlib
import inspect
import itertools
import json
import math
import os
import re
import shutil
import statistics
import string
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from report import machine, write_report

if TYPE_CHECKING:
    from crediflow.select.raters.hf import HFRater

_MODULES = (json, os.path, re, itertools, functools, collections, math, string, textwrap,
            shutil, statistics)


@functools.cache
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


def demo_texts(count: int, seed: int = 1) -> list[str]:
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


def first_digit(answer: str, scores: tuple[int, ...]) -> int:
    """The first score digit in a generated answer, -1 if none."""
    found = re.search("[" + "".join(map(str, scores)) + "]", answer)
    return int(found.group()) if found else -1


def overall_field(answer: str, scores: tuple[int, ...]) -> int:
    """The "overall" score of a generated DS2-style JSON answer, -1 if absent or off scale."""
    found = re.search(r'"overall"\s*:\s*"?(\d+)', answer)
    value = int(found.group(1)) if found else -1
    return value if value in scores else -1


def generate_scores(model, tokenizer, prompts: list[list[int]], batch_size: int,
                    scores: tuple[int, ...], *, max_new_tokens: int = 4,
                    parse=first_digit) -> np.ndarray:
    """Greedy generate(max_new_tokens) per batch (stopping at EOS), each answer parsed by
    `parse` (-1 where it finds no score)."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = np.full(len(prompts), -1)
    with torch.inference_mode():
        for begin in range(0, len(prompts), batch_size):
            ids, mask = left_padded(prompts[begin:begin + batch_size], pad)
            new = model.generate(input_ids=ids, attention_mask=mask,
                                 max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad)[:, ids.shape[1]:]
            for row, answer in enumerate(tokenizer.batch_decode(new, skip_special_tokens=True)):
                out[begin + row] = parse(answer, scores)
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


# The instructions crediflow used before the DS2-criteria rubric became the default: kept to
# show how the speed-up depends on the share of the prompt that is shared instructions.
SHORT_TEMPLATE = (
    "Rate the quality of this question-answer pair as training data for an assistant, "
    "from 1 (wrong, useless or harmful) to 5 (correct, helpful and clear). "
    "Reply with one digit only.\n\n{text}"
)
# DS2's own rating asks the LLM to generate a JSON object of the criteria scores and an overall
# rating, then parses it; this reply clause asks for that answer after the same rubric.
DS2_ANSWER = ('Reply only with JSON: {{"rarity": <1-5>, "complexity": <1-5>, '
              '"informativeness": <1-5>, "overall": <1-5>}}.')
DS2_NEW_TOKENS = 32  # the JSON above is 25-30 SmolLM2 tokens
_DIGIT_REPLY = "Reply with the overall score as one digit."
DEMO_TEXT_BUDGET = 35  # text tokens per prompt in make demo (params.yaml select.max_prompt_tokens)
LONG_TEXT_BUDGET = 179
# Side-by-side rows: (instructions, template (None: the default rubric), text budget, batch).
COMPARISONS = (("rubric", None, DEMO_TEXT_BUDGET, 16), ("rubric", None, LONG_TEXT_BUDGET, 1),
               ("rubric", None, LONG_TEXT_BUDGET, 8),
               ("short", SHORT_TEMPLATE, LONG_TEXT_BUDGET, 8))
# The row also timed without prefix reuse, whose ratings give the agreement.
MAIN_ROW = ("rubric", LONG_TEXT_BUDGET, 8)
# Demo projection runs: (text budget, batch).
DEMO_RUNS = ((DEMO_TEXT_BUDGET, 16), (DEMO_TEXT_BUDGET, 8), (64, 16))
# bf16 against fp32: (text budget, batch) of the demo setting, and the agreement goal.
PRECISION_RUN = (DEMO_TEXT_BUDGET, 16)
BF16_ARGMAX_GOAL = 0.99
_CLOCKS = ("samples_per_s", "samples_per_cpu_s")
# The modules whose first import `import_seconds` times.
_TIMED_IMPORTS = ("torch", "crediflow.models.causal_lm", "crediflow.select.raters.hf",
                  "crediflow.select.raters.prompts")


@dataclass
class Bench:
    """What the measurements share: the loaded model, its tokenizer and the Q/A texts."""

    model: Any
    tokenizer: Any
    texts: list[str]
    matched: np.ndarray  # whether each text's answer belongs to its question
    scores: tuple[int, ...] = (1, 2, 3, 4, 5)

    def rater(self, template: str | None, budget: int, batch: int, reuse: bool = True,
              **options) -> HFRater:
        """An HFRater whose prompts hold `budget` text tokens after the instructions."""
        from crediflow.select.raters.hf import HFRater

        kwargs = options if template is None else {"template": template, **options}
        probe = HFRater(self.model, self.tokenizer, **kwargs)
        overhead = len(probe.prefix_ids) + len(probe.suffix_ids)
        return HFRater(self.model, self.tokenizer, max_prompt_tokens=overhead + budget,
                       batch_size=batch, reuse_prefix=reuse, **kwargs)


def import_seconds() -> float:
    """Wall seconds of the first import of torch, the model loader, HFRater and its prompts
    (later imports of them come from the module cache)."""
    start = time.perf_counter()
    for name in _TIMED_IMPORTS:
        importlib.import_module(name)
    return time.perf_counter() - start


def load_model(skip_conversion: bool) -> tuple[Any, Any, dict]:
    """(model, tokenizer, load timings): the first load with GGUF conversion into a temporary
    folder (unless `skip_conversion`), then the best of two cached loads."""
    from crediflow.models.causal_lm import load_causal_lm

    timings: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        if skip_conversion:
            folder = None
        else:
            folder = Path(tmp) / "smollm2"
            _, seconds, cpu = timed(lambda: load_causal_lm(cache_dir=folder))
            timings["first_load_with_gguf_conversion_seconds"] = {"wall": round(seconds, 1),
                                                                  "cpu": round(cpu, 1)}
        (model, tokenizer), seconds, cpu = timed(lambda: load_causal_lm(cache_dir=folder),
                                                 repeat=2)
        timings["cached_load_seconds"] = {"wall": round(seconds, 2), "cpu": round(cpu, 2)}
    model.generation_config.max_length = None
    return model, tokenizer, timings


def token_facts(bench: Bench) -> dict:
    """Token counts of the texts and of the instructions before and after the text."""
    text_tokens = token_counts(bench.tokenizer, bench.texts)
    probe = bench.rater(None, DEMO_TEXT_BUDGET, 1)
    short = bench.rater(SHORT_TEMPLATE, DEMO_TEXT_BUDGET, 1)
    return {
        "text_tokens": {"median": int(np.median(text_tokens)),
                        "p90": int(np.percentile(text_tokens, 90)),
                        "max": int(text_tokens.max())},
        "instruction_tokens": {
            name: {"before_text": len(r.prefix_ids), "after_text": len(r.suffix_ids)}
            for name, r in (("default_rubric", probe), ("short", short))},
    }


def bare_forward(bench: Bench) -> dict:
    """Tokens/s of the bare forward pass on the full prompts (179 text tokens), batch 1 and 8."""
    model, tokenizer = bench.model, bench.tokenizer
    full_prompts = bench.rater(None, LONG_TEXT_BUDGET, 1).encode(bench.texts)
    forward_tokens_per_s(model, tokenizer, full_prompts[:4], 4)  # warm-up
    return {f"batch_{b}": forward_tokens_per_s(model, tokenizer, full_prompts, b)
            for b in (1, 8)}


def speedup(fast: dict, slow: dict) -> dict[str, float]:
    """Ratio of two throughputs, by wall clock and by CPU time."""
    return {clock: round(fast[clock] / slow[clock], 2) for clock in _CLOCKS}


def time_rater(bench: Bench, template: str | None, budget: int, batch: int,
               reuse: bool = True) -> tuple[Any, dict, HFRater]:
    """(ratings, samples/s, the rater) of one HFRater on the texts, after a warm-up."""
    texts = bench.texts
    one_pass = bench.rater(template, budget, batch, reuse)
    one_pass.rate(texts[:2])  # warm-up; the shared prefix is computed once per rater
    ratings, seconds, cpu = timed(lambda: one_pass.rate(texts))
    return ratings, per_s(len(texts), seconds, cpu), one_pass


def time_generate(bench: Bench, prompts: list[list[int]], batch: int) -> tuple[np.ndarray, dict]:
    """(parsed digits, samples/s) of greedy generate() of up to 4 tokens + parsing."""
    model, tokenizer, scores = bench.model, bench.tokenizer, bench.scores
    generated, seconds, cpu = timed(
        lambda: generate_scores(model, tokenizer, prompts, batch, scores))
    return generated, {**per_s(len(bench.texts), seconds, cpu),
                       "max_new_tokens": 4, "unparseable": int((generated < 0).sum())}


def ds2_generate(bench: Bench, budget: int, batch: int) -> dict:
    """samples/s of DS2-style rating: the rubric asking for the JSON of DS2_ANSWER,
    greedy generate() of up to DS2_NEW_TOKENS tokens, the "overall" field parsed."""
    from crediflow.select.raters.prompts import DEFAULT_TEMPLATE

    template = DEFAULT_TEMPLATE.replace(_DIGIT_REPLY, DS2_ANSWER)
    assert template != DEFAULT_TEMPLATE, "the default template's reply clause changed"
    prompts = bench.rater(template, budget, batch, answer_prefix="").encode(bench.texts)
    model, tokenizer, scores = bench.model, bench.tokenizer, bench.scores
    parsed, seconds, cpu = timed(lambda: generate_scores(
        model, tokenizer, prompts, batch, scores, max_new_tokens=DS2_NEW_TOKENS,
        parse=overall_field))
    return {**per_s(len(bench.texts), seconds, cpu), "max_new_tokens": DS2_NEW_TOKENS,
            "unparseable": int((parsed < 0).sum())}


def compare(bench: Bench, name: str, template: str | None, budget: int,
            batch: int) -> tuple[dict, Any, np.ndarray]:
    """(row, HFRater's ratings, generated digits) of one side-by-side comparison on the same
    prompt tokens (instructions, truncated text, answer prefix): HFRater's one forward pass
    against greedy generate() of up to 4 tokens + parsing, and for the rubric in batches
    against DS2's JSON answer; MAIN_ROW is also timed without prefix reuse."""
    main_row = (name, budget, batch) == MAIN_ROW
    row: dict = {"instructions": name, "text_budget_tokens": budget, "batch_size": batch}
    reference, row["hf_rater"], one_pass = time_rater(bench, template, budget, batch)
    if main_row:
        _, row["hf_rater_without_prefix_reuse"], one_pass = time_rater(
            bench, template, budget, batch, reuse=False)
    prompts = one_pass.encode(bench.texts)  # the same prompt tokens, whatever reuse_prefix
    generated, row["generate"] = time_generate(bench, prompts, batch)
    row["speedup"] = speedup(row["hf_rater"], row["generate"])
    if name == "rubric" and batch > 1:
        row["generate_ds2_answer"] = ds2_generate(bench, budget, batch)
        row["speedup_vs_ds2_answer"] = speedup(row["hf_rater"], row["generate_ds2_answer"])
    if main_row:
        row["speedup_without_prefix_reuse"] = round(
            row["hf_rater_without_prefix_reuse"]["samples_per_cpu_s"]
            / row["generate"]["samples_per_cpu_s"], 2)
    return row, reference, generated


def agreement(bench: Bench, reference, generated: np.ndarray) -> dict:
    """How the generated digits agree with HFRater's most likely scores, and HFRater's
    expected scores of matched and mismatched answers."""
    parsed = generated >= 0
    both = reference.argmax[parsed], generated[parsed]
    return {
        "argmax_equals_generated_digit": round(float(np.mean(both[0] == both[1])), 3)
        if parsed.any() else None,
        "generate_unparseable": int((~parsed).sum()),
        "rater_argmax_counts": {str(k): int((reference.argmax == k).sum())
                                for k in bench.scores},
        "mean_expected_matched_answers": round(
            float(reference.expected[bench.matched].mean()), 3),
        "mean_expected_mismatched_answers": round(
            float(reference.expected[~bench.matched].mean()), 3),
    }


def side_by_side(bench: Bench) -> tuple[list[dict], dict]:
    """(the COMPARISONS rows, the agreement on MAIN_ROW), each row's speed-up on stderr."""
    rows, agreed = [], {}
    for name, template, budget, batch in COMPARISONS:
        row, reference, generated = compare(bench, name, template, budget, batch)
        if (name, budget, batch) == MAIN_ROW:
            agreed = agreement(bench, reference, generated)
        print(f"{name} budget={budget} batch={batch}: {row['speedup']}", file=sys.stderr)
        rows.append(row)
    return rows, agreed


def demo_projection(bench: Bench, demo_count: int) -> dict:
    """Projection for the demo: 2,000 short Q/A records (median ~60 text tokens). Per-row cost
    is the text (capped by the budget) plus the closing tokens; the instructions are shared."""
    demo = demo_texts(demo_count)
    demo_tokens = token_counts(bench.tokenizer, demo)
    runs = []
    for budget, batch in DEMO_RUNS:
        one_pass = bench.rater(None, budget, batch)
        one_pass.rate(demo[:2])
        _, seconds, cpu = timed(lambda r=one_pass: r.rate(demo))
        runs.append({"text_budget_tokens": budget,
                     "max_prompt_tokens": one_pass.max_prompt_tokens,
                     "batch_size": batch, **per_s(len(demo), seconds, cpu),
                     "projected_seconds_for_2000": round(2000 * seconds / len(demo)),
                     "projected_cpu_seconds_for_2000": round(2000 * cpu / len(demo))})
    return {
        "texts": len(demo),
        "text_tokens_median": int(np.median(demo_tokens)),
        "text_tokens_p90": int(np.percentile(demo_tokens, 90)),
        "runs": runs,
        "goal": "2000 records < 240 s",
    }


def precision_ratings(bench: Bench, precision: str) -> tuple[Any, dict]:
    """(ratings, samples/s) of the demo-setting rater in `precision` on the bench's texts."""
    budget, batch = PRECISION_RUN
    rater = bench.rater(None, budget, batch, precision=precision)
    rater.rate(bench.texts[:2])  # warm-up; computes the shared prefix in this precision
    ratings, seconds, cpu = timed(lambda: rater.rate(bench.texts))
    return ratings, per_s(len(bench.texts), seconds, cpu)


def bf16_vs_fp32(model, tokenizer, count: int) -> dict:
    """The same ratings in bf16 (torch autocast) and in fp32, on `count` demo texts at the
    demo setting (PRECISION_RUN, default rubric): agreement of the most likely scores,
    differences of expected scores and probabilities, and the speed ratio."""
    from embed import cpu_precision_facts

    facts = cpu_precision_facts()
    texts = demo_texts(count)
    bench = Bench(model, tokenizer, texts, np.ones(len(texts), dtype=bool))
    fp32, fp32_speed = precision_ratings(bench, "fp32")
    bf16, bf16_speed = precision_ratings(bench, "bf16")
    same = fp32.argmax == bf16.argmax
    top2 = np.sort(fp32.probs, axis=1)[:, -2:]
    agreement = float(same.mean())
    return {
        "texts": len(texts), "text_budget_tokens": PRECISION_RUN[0],
        "batch_size": PRECISION_RUN[1], "rubric": "default",
        "method": "the same fp32 weights; bf16 runs the forward passes (and the shared "
                  "prefix) under torch CPU autocast(bfloat16), the softmax in float64",
        "argmax_agreement": round(agreement, 4),
        "argmax_disagreements": int((~same).sum()),
        "fp32_top2_margin_of_disagreements": [round(float(m), 4) for m in
                                              (top2[:, 1] - top2[:, 0])[~same]],
        "expected_score_mean_abs_diff": round(float(np.abs(fp32.expected - bf16.expected)
                                                    .mean()), 4),
        "expected_score_max_abs_diff": round(float(np.abs(fp32.expected - bf16.expected)
                                                   .max()), 4),
        "probability_max_abs_diff": round(float(np.abs(fp32.probs - bf16.probs).max()), 4),
        "fp32": fp32_speed, "bf16": bf16_speed,
        "speed_ratio_bf16_over_fp32": {
            clock: round(bf16_speed[clock] / fp32_speed[clock], 3) for clock in _CLOCKS},
        "speed": "EMULATED bf16 (this CPU has no AVX512-BF16 or AMX-BF16): the speed ratio "
                 "is torch's emulation, not a native bf16 device's; the ratings are what bf16 "
                 "computes anywhere" if facts["bf16_emulated"] else "native bf16 on this CPU",
        "cpu_precision": facts,
        "goal": f"argmax_agreement >= {BF16_ARGMAX_GOAL}",
        "goal_met": agreement >= BF16_ARGMAX_GOAL,
    }


def measure(texts_count: int = 48, demo_count: int = 96, skip_conversion: bool = False,
            threads: int = 0, *, precision_count: int = 96) -> dict:
    """The rater benchmark's report (see the module docstring)."""
    load_before = os.getloadavg()[0]
    import_s = import_seconds()
    import torch

    if threads:
        torch.set_num_threads(threads)

    result: dict = {"benchmark": "rater", "model": "SmolLM2-135M-Instruct (GGUF Q4_1 -> fp32)",
                    "import_seconds": round(import_s, 2)}
    model, tokenizer, load_timings = load_model(skip_conversion)
    result.update(load_timings)

    texts, matched = qa_texts(texts_count)
    bench = Bench(model, tokenizer, texts, matched)
    result["texts"] = len(texts)
    result["torch_threads"] = torch.get_num_threads()
    result.update(token_facts(bench))
    result["bare_forward_tokens_per_s"] = bare_forward(bench)
    rows, agreed = side_by_side(bench)
    result["agreement"] = agreed
    result["side_by_side"] = rows
    result["goal"] = "hf rater >= 5x the samples/s of generate() + parsing"
    result["demo_projection"] = demo_projection(bench, demo_count)
    if precision_count > 0:
        result["bf16_vs_fp32"] = bf16_vs_fp32(model, tokenizer, precision_count)
    result["load_average_1min"] = {"before": round(load_before, 2),
                                   "after": round(os.getloadavg()[0], 2)}
    result["machine"] = machine(f"torch {torch.__version__}")
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The rater benchmark's command-line options."""
    parser.add_argument("--texts", type=int, default=48)
    parser.add_argument("--demo-texts", type=int, default=96)
    parser.add_argument("--skip-conversion", action="store_true",
                        help="load the cached converted copy instead of timing a conversion")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default: torch's choice)")
    parser.add_argument("--precision-texts", type=int, default=96,
                        help="demo texts rated in bf16 and in fp32 (bf16 is slow where "
                             "it is emulated); 0 leaves the comparison out")


def from_arguments(args: argparse.Namespace) -> dict:
    """`measure` with the options of `add_arguments`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return measure(args.texts, args.demo_texts, args.skip_conversion, args.threads,
                   precision_count=args.precision_texts)


def measure_precision(args: argparse.Namespace) -> dict:
    """Only the bf16_vs_fp32 part, on the cached converted model (no conversion timed)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from crediflow.models.causal_lm import load_causal_lm

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    model, tokenizer = load_causal_lm()
    return {"benchmark": "rater", "model": "SmolLM2-135M-Instruct (GGUF Q4_1 -> fp32)",
            "torch_threads": torch.get_num_threads(),
            "bf16_vs_fp32": bf16_vs_fp32(model, tokenizer, args.precision_texts),
            "load_average_1min": {"before": round(load_before, 2),
                                  "after": round(os.getloadavg()[0], 2)},
            "machine": machine(f"torch {torch.__version__}")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    parser.add_argument("--only-precision", action="store_true",
                        help="only the bf16-vs-fp32 part (minutes less than the whole)")
    parser.add_argument("--out", default=None, help="default benchmarks/results/rater.json "
                        "(rater_precision.json with --only-precision)")
    args = parser.parse_args()
    report = measure_precision(args) if args.only_precision else from_arguments(args)
    name = "rater_precision.json" if args.only_precision else "rater.json"
    write_report(report, args.out or f"benchmarks/results/{name}")


if __name__ == "__main__":
    main()
