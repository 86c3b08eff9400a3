"""Benchmark: speed and peak memory of the label audit (k-NN graph + HOC + k-NN detection) on
synthetic 384-d embeddings, 2 classes, 20% symmetric label noise.

Usage: python benchmarks/audit_speed.py [--rows 100000 1000000] [--out PATH]
Each size runs in its own child process, so each peak RSS is that size's own. The data
(clustered_embeddings: 50 clusters per class, each a 16-dimensional Gaussian around a random
unit centre, plus isotropic jitter) is generated in float32 inside the child; its generation
time is reported apart and its peak memory is the data itself plus small temporaries.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
from report import peak_rss_mb, write_report

GOAL = "1M rows: audit < 300 s and peak RSS < 8192 MB on 2 CPU cores"


def run_one(rows: int, dim: int, k: int, seed: int) -> dict:
    """Generate the data, audit it phase by phase, and return the measurements."""
    import faiss

    from crediflow.core.detect import knn_detect
    from crediflow.core.hoc import consensus_from_graph, credibility_score, fit_transition
    from crediflow.core.knn import knn_graph
    from crediflow.synthetic.noise import clustered_embeddings, noisy_labels

    T0 = np.array([[0.8, 0.2], [0.2, 0.8]])
    load_before = os.getloadavg()
    start = time.perf_counter()
    x, y = clustered_embeddings(rows, dim, 2, clusters_per_class=50, latent_dim=16, seed=seed)
    noisy = noisy_labels(y, T0, seed=seed)
    generate_s = time.perf_counter() - start
    rss_after_generate = peak_rss_mb()

    seconds = {}
    start = time.perf_counter()
    graph = knn_graph(x, k, seed=seed)
    seconds["knn_graph"] = time.perf_counter() - start
    mark = time.perf_counter()
    consensus = consensus_from_graph(noisy, graph, 2, seed=seed)
    seconds["hoc_counting"] = time.perf_counter() - mark
    mark = time.perf_counter()
    T, p = fit_transition(*consensus, seed=seed)
    seconds["hoc_fit"] = time.perf_counter() - mark
    mark = time.perf_counter()
    det = knn_detect(noisy, graph, T, p, seed=seed)
    seconds["detection"] = time.perf_counter() - mark
    total = time.perf_counter() - start

    wrong = noisy != y
    hits = int((det.is_issue & wrong).sum())
    return {
        "rows": rows,
        "dim": dim,
        "k": k,
        "seconds": {name: round(s, 2) for name, s in seconds.items()},
        "audit_seconds": round(total, 2),
        "peak_rss_mb": round(peak_rss_mb()),
        "peak_rss_mb_after_generate": round(rss_after_generate),
        "generate_seconds": round(generate_s, 2),
        "knn_method": graph.method,
        "knn_recall": graph.recall,
        "nlist": graph.nlist,
        "nprobe": graph.nprobe,
        "neighbours_same_true_class": round(float((y[graph.indices] == y[:, None]).mean()), 4),
        "hoc_error": round(float(np.abs(T - T0).sum() / 2), 4),
        "credibility": round(credibility_score(T), 4),
        "credibility_true": round(credibility_score(T0), 4),
        "detection_precision": round(hits / max(int(det.is_issue.sum()), 1), 4),
        "detection_recall": round(hits / max(int(wrong.sum()), 1), 4),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "faiss_threads": faiss.omp_get_max_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/audit_speed.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.rows[0], args.dim, args.k, args.seed)))
        return

    runs = []
    for rows in args.rows:
        done = subprocess.run(
            [sys.executable, __file__, "--child", "--rows", str(rows), "--dim", str(args.dim),
             "--k", str(args.k), "--seed", str(args.seed)],
            check=True, capture_output=True, text=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), flush=True)
    report = {
        "benchmark": "audit_speed",
        "goal": GOAL,
        "phases": "knn_graph (incl. IVF training and recall check), hoc_counting (50 rounds), "
                  "hoc_fit (1500 Adam steps), detection (21 epochs)",
        "noise": "2 classes, T = [[0.8, 0.2], [0.2, 0.8]]",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "numpy": np.__version__},
        "runs": runs,
    }
    write_report(report, args.out, echo=False)


if __name__ == "__main__":
    main()
