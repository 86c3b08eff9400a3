"""Benchmark: the probe detector's logistic regression, hand-written vs scikit-learn.

The probe (`crediflow.core.detect.out_of_fold_probs`) needs out-of-fold class probabilities
of an L2-regularised multinomial logistic regression on the standardised embeddings. This
compares, on the same seeded stratified folds and the corpora and noise of
`benchmarks/audit.py`:

- `handwritten`: the softmax regression crediflow used to carry (mean cross-entropy +
  0.05 ||W||^2, L-BFGS through scipy; kept here as the reference);
- `sklearn`: `StandardScaler` + `LogisticRegression` (lbfgs) inside
  `cross_val_predict(method="predict_proba")` over the same folds (`PredefinedSplit`), with C
  matched to that penalty (C = 1 / (0.1 * training rows), doubled for two classes, where
  scikit-learn fits one binomial weight vector instead of a softmax pair);
- `sklearn_C1`: the same with scikit-learn's default C = 1 (much weaker regularisation);
- `crediflow`: what `out_of_fold_probs` does now (since this benchmark: `sklearn`).

For each: seconds of the out-of-fold probabilities (best of `--repeat`), and the precision,
recall and F1 of `audit_labels(detector="probe")` and `detector="both"` fed with them.

Usage: python benchmarks/audit_probe_lr.py [--out benchmarks/results/audit_probe_lr.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from audit import CORPORA, NOISE, corrupt, load_corpus, scores
from report import machine, write_report
from threadpoolctl import threadpool_limits

L2 = 0.1  # penalty on the mean cross-entropy, as in crediflow's probe


def fold_ids(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Stratified folds: a seeded shuffle, then the rows of each class dealt round-robin."""
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(y.size), y))
    fold = np.empty(y.size, dtype=np.int64)
    fold[order] = np.arange(y.size) % folds
    return fold


def handwritten_oof(x: np.ndarray, y: np.ndarray, k: int, folds: int, seed: int) -> np.ndarray:
    from scipy.optimize import minimize

    def fit(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        n, d = xs.shape
        onehot = np.zeros((n, k))
        onehot[np.arange(n), ys] = 1.0

        def loss_grad(flat: np.ndarray) -> tuple[float, np.ndarray]:
            w = flat.reshape(d + 1, k)
            z = xs @ w[:-1] + w[-1]
            z -= z.max(axis=1, keepdims=True)
            log_norm = np.log(np.exp(z).sum(axis=1, keepdims=True))
            prob = np.exp(z - log_norm)
            loss = -np.sum(onehot * (z - log_norm)) / n + 0.5 * L2 * np.sum(w[:-1] ** 2)
            diff = (prob - onehot) / n
            grad = np.vstack([xs.T @ diff + L2 * w[:-1], diff.sum(axis=0, keepdims=True)])
            return float(loss), grad.ravel()

        result = minimize(loss_grad, np.zeros((d + 1) * k), jac=True, method="L-BFGS-B",
                          options={"maxiter": 500})
        return result.x.reshape(d + 1, k)

    fold = fold_ids(y, folds, seed)
    probs = np.empty((y.size, k))
    for f in range(folds):
        test = fold == f
        mean = x[~test].mean(axis=0, dtype=np.float64)
        scale = x[~test].std(axis=0, dtype=np.float64)
        scale = np.where(scale > 0, scale, 1.0)
        w = fit((x[~test] - mean) / scale, y[~test])
        z = ((x[test] - mean) / scale) @ w[:-1] + w[-1]
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        probs[test] = e / e.sum(axis=1, keepdims=True)
    return probs


def sklearn_oof(x: np.ndarray, y: np.ndarray, k: int, folds: int, seed: int, *,
                c: float | None = None) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import PredefinedSplit, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if c is None:  # the handwritten penalty; binomial w = w1 - w0 for two classes: C doubles
        c = folds / ((folds - 1) * L2 * y.size) * (2.0 if k == 2 else 1.0)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))
    return cross_val_predict(model, x, y, cv=PredefinedSplit(fold_ids(y, folds, seed)),
                             method="predict_proba")


def current_oof(x: np.ndarray, y: np.ndarray, k: int, folds: int, seed: int) -> np.ndarray:
    from crediflow.core.detect import out_of_fold_probs

    return out_of_fold_probs(y, x, k, folds=folds, seed=seed)


IMPLEMENTATIONS = {
    "handwritten": handwritten_oof,
    "sklearn": sklearn_oof,
    "sklearn_C1": lambda x, y, k, folds, seed: sklearn_oof(x, y, k, folds, seed, c=1.0),
    "crediflow": current_oof,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/audit_probe_lr.json")
    parser.add_argument("--corpora", nargs="+", default=list(CORPORA), choices=list(CORPORA))
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    import scipy
    import sklearn

    import crediflow.audit.credibility as credibility

    report = {"benchmark": "audit_probe_lr",
              "machine": machine(f"scikit-learn {sklearn.__version__}, scipy {scipy.__version__}"
                                 ", BLAS limited to 1 thread"),
              "table": []}
    real_oof = credibility.out_of_fold_probs
    for corpus in args.corpora:
        data, vectors, _ = load_corpus(corpus)
        names, clean = np.unique(data["label"].astype(str).to_numpy(), return_inverse=True)
        for setting in NOISE[corpus]:
            noisy = corrupt(clean, setting, names)
            wrong = noisy != clean
            reference = None
            for name, oof in IMPLEMENTATIONS.items():
                seconds = []
                for _ in range(args.repeat):
                    start = time.perf_counter()
                    with threadpool_limits(1, user_api="blas"):
                        probs = oof(vectors, noisy, len(names), 5, 0)
                    seconds.append(time.perf_counter() - start)
                reference = probs if reference is None else reference
                row = {"corpus": corpus, "noise": setting, "lr": name,
                       "oof_seconds": round(min(seconds), 2),
                       "max_abs_diff_vs_handwritten": float(np.abs(probs - reference).max()),
                       "oof_accuracy_vs_clean": round(float(np.mean(probs.argmax(1) == clean)),
                                                      4)}
                credibility.out_of_fold_probs = (
                    lambda labels, embeddings, num_classes, *, folds=5, seed=0, _p=probs: _p)
                try:
                    for detector in ("probe", "both"):
                        result = credibility.audit_labels(names[noisy], vectors,
                                                          detector=detector, seed=0)
                        row[detector] = scores(result.detection.is_issue, wrong)
                finally:
                    credibility.out_of_fold_probs = real_oof
                report["table"].append(row)
                print(json.dumps(row), flush=True)
    write_report(report, args.out, echo=False)
    print("| corpus | noise | LR | oof s | probe P/R/F1 | both P/R/F1 |")
    print("|---|---|---|---|---|---|")
    for r in report["table"]:
        cells = [f"{r[d]['precision']:.3f}/{r[d]['recall']:.3f}/**{r[d]['f1']:.3f}**"
                 for d in ("probe", "both")]
        print(f"| {r['corpus']} | {r['noise']} | {r['lr']} | {r['oof_seconds']} | "
              f"{cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
