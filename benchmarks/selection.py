"""Benchmark: DS2 curation and selection of synthetic rated samples, then the hf rater.

Usage: python benchmarks/selection.py [--rows 300000] [--skip-rater] [rater options]
                                      [--out benchmarks/results/select.json]
Curation: 384-d clustered embeddings, 5 rating classes, 25% of the ratings moved to a
neighbouring class; curation (k-NN graph, HOC, detection) and selection of half the rows are
timed, and the peak memory is read before the rater starts. Rater: SmolLM2 one forward pass
against generate() + parsing, side by side (benchmarks/rater.py, which also runs alone).

The file is not called select.py: every script in this folder runs with the folder first on
sys.path, where a select.py would shadow the stdlib module `select` that subprocess imports.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import rater
from report import machine, peak_rss_mb, write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--skip-rater", action="store_true")
    rater.add_arguments(parser)
    parser.add_argument("--out", default="benchmarks/results/select.json")
    args = parser.parse_args()

    from crediflow.select.curation import curate_and_select
    from crediflow.synthetic.noise import clustered_embeddings, noisy_labels

    x, true = clustered_embeddings(args.rows, 384, 5, clusters_per_class=8, seed=0)
    T = np.zeros((5, 5))
    for i in range(5):
        T[i, i] = 0.75
        nbrs = [j for j in (i - 1, i + 1) if 0 <= j < 5]
        T[i, nbrs] = 0.25 / len(nbrs)
    observed = noisy_labels(true, T, seed=1) + 1
    start = time.perf_counter()
    result = curate_and_select(observed.astype(float), x, 0.5)
    seconds = time.perf_counter() - start
    report = {
        "benchmark": "select",
        "rows": args.rows,
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(peak_rss_mb()),
        "T_error": round(float(np.abs(result.T - T).sum() / 5), 4),
        "agreement_raw": round(float(np.mean(observed == true + 1)), 4),
        "agreement_curated": round(float(np.mean(result.curated_rating == true + 1)), 4),
        "selected": int(result.selected.sum()),
        "goal": "300k rows < 120 s and < 6144 MB",
        "machine": machine(),
        "load_average": round(os.getloadavg()[0], 2),
    }
    if not args.skip_rater:
        report["rater"] = rater.from_arguments(args)
    write_report(report, args.out)


if __name__ == "__main__":
    main()
