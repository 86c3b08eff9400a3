"""Runs compared through DVC: in a temporary git + DVC copy of the project, the audit stage runs
once as the baseline and once as an experiment (`dvc exp run -S audit.k=5`); `dvc exp show`
lists the experiment with its params and metrics, and `dvc metrics diff` / `dvc plots diff`
return the two runs' reports (metrics.json, the transition matrix as heatmap plot data)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from crediflow.data.schema import RECORD_SCHEMA
from crediflow.synthetic.noise import clustered_embeddings, noisy_labels
from tasks.catalog import vectors_table
from tasks.settings import PROJECT_ROOT

N, NOISE = 400, 0.2
METRICS = "reports/audit/metrics.json"
MATRIX = "reports/audit/transition_matrix.csv"


def dvc(root: Path, *args: str) -> str:
    """Run a DVC (or git) command of the venv in `root` with `root` as the project home; its
    stdout."""
    env = os.environ | {"CREDIFLOW_HOME": str(root),
                        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _write_inputs(root: Path) -> None:
    """Ingested records (two classes, 20% of the labels flipped) and their embeddings."""
    vectors, y = clustered_embeddings(N, 16, 2, clusters_per_class=2, latent_dim=4, seed=2)
    flipped = noisy_labels(y, np.array([[1 - NOISE, NOISE], [NOISE, 1 - NOISE]]), seed=3)
    labels = np.array(["harmless", "harmful"], dtype=object)[flipped]
    ids = [f"r{i}" for i in range(N)]
    records = pa.table({
        "id": ids,
        "messages": [[{"role": "user", "content": f"q{i}"},
                      {"role": "assistant", "content": "a"}] for i in range(N)],
        "label": labels, "rating": [None] * N, "group": [None] * N, "source": ["s"] * N,
    }, schema=RECORD_SCHEMA)
    for folder in ("data/ingested", "data/embeddings"):
        (root / folder).mkdir(parents=True)
    pq.write_table(records, root / "data/ingested/records.parquet")
    pq.write_table(vectors_table(records.column("id"), vectors.astype(np.float32)),
                   root / "data/embeddings/embeddings.parquet")
    for stage in ("ingest", "embed"):  # reports that `dvc commit` records with the data
        (root / "reports" / stage).mkdir(parents=True)
        (root / f"reports/{stage}/metrics.json").write_text(json.dumps({"rows": N}))
    (root / "reports/ingest/validation.json").write_text("{}")
    (root / "data/raw").mkdir()
    (root / "data/raw/records.jsonl").write_text("")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC copy of the project (code, dvc.yaml, params.yaml, the plot templates) with
    audit's inputs committed to DVC as ingest's and embed's outputs (those stages never run
    here), the audit stage run once and committed as the baseline."""
    root = tmp_path_factory.mktemp("dvc-experiments")
    for name in ("crediflow", "tasks"):
        shutil.copytree(PROJECT_ROOT / name, root / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(PROJECT_ROOT / name, root / name)
    with (root / ".gitignore").open("a") as fh:
        fh.write("/data/\n")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["audit"].update(detector="knn", rounds=10, epochs=5)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _write_inputs(root)
    dvc(root, "git", "init", "-q")
    dvc(root, "dvc", "init", "-q")
    shutil.copytree(PROJECT_ROOT / ".dvc/plots", root / ".dvc/plots")
    # ingest's and embed's outputs as if they had run: in dvc.lock and the cache, so that an
    # experiment's checkout keeps them
    dvc(root, "dvc", "commit", "--force", "ingest", "embed")
    dvc(root, "dvc", "repro", "--single-item", "audit")
    dvc(root, "git", "add", "-A")
    dvc(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline")
    return root


@pytest.fixture(scope="module")
def experiment(project: Path) -> str:
    """The name of an experiment run on the baseline with audit.k changed from 10 to 5."""
    dvc(project, "dvc", "exp", "run", "--single-item", "audit", "-S", "audit.k=5",
        "-n", "k5")
    return "k5"


def test_exp_show_lists_the_sweep_with_its_params_and_metrics(project: Path,
                                                              experiment: str) -> None:
    shown = json.loads(dvc(project, "dvc", "exp", "show", "--json"))
    baseline = next(row for row in shown if row["rev"] != "workspace")
    runs = {rev["name"]: rev["data"] for exp in baseline["experiments"] or []
            for rev in exp["revs"]}
    assert experiment in runs
    data = runs[experiment]
    assert data["params"]["params.yaml"]["data"]["audit"]["k"] == 5
    assert baseline["data"]["params"]["params.yaml"]["data"]["audit"]["k"] == 10
    # the reports are DVC-cached, so both runs' metrics are readable from git revisions
    assert 0 < data["metrics"][METRICS]["data"]["credibility"] <= 1
    assert 0 < baseline["data"]["metrics"][METRICS]["data"]["credibility"] <= 1


def test_metrics_diff_compares_the_experiment_with_the_baseline(project: Path,
                                                               experiment: str) -> None:
    diff = json.loads(dvc(project, "dvc", "metrics", "diff", "--all", "--json", "HEAD",
                          experiment))
    assert {"credibility", "flagged", "rows"} <= set(diff[METRICS])
    assert diff[METRICS]["rows"]["old"] == diff[METRICS]["rows"]["new"] == N


def test_plots_diff_draws_both_runs_transition_matrices_as_heatmaps(project: Path,
                                                                    experiment: str) -> None:
    out = project / "plots-out"
    shown = json.loads(dvc(project, "dvc", "plots", "diff", "--json", "-o", str(out),
                           "--targets", MATRIX, "reports/audit/transition_matrix.png", "--",
                           "HEAD", experiment))
    assert not shown.get("errors")
    (plot,) = shown["data"][MATRIX]
    assert set(plot["revisions"]) == {"HEAD", experiment}
    rows = plot["content"]["data"]["values"]
    assert {(r["true_label"], r["observed_label"]) for r in rows} == {
        (t, o) for t in ("harmful", "harmless") for o in ("harmful", "harmless")}
    assert {r["rev"] for r in rows} == {"HEAD", experiment}
    assert plot["content"]["spec"]["layer"][0]["mark"] == "rect"  # .dvc/plots/heatmap.json
    images = shown["data"]["reports/audit/transition_matrix.png"]
    assert {i["revisions"][0] for i in images} == {"HEAD", experiment}


def test_select_and_evaluate_plot_data_render_with_their_templates(project: Path) -> None:
    from tasks.plots import model_table_csv, rating_counts_csv, transition_csv

    reports = project / "reports"
    classes = ["0-1", "1-2", "2-3"]
    rating_counts_csv(np.array([0, 1, 1, 2]), np.array([0, 0, 1, 2]), classes,
                      reports / "select/rating_histogram.csv")
    transition_csv(np.eye(3), classes, reports / "select/transition_matrix.csv")
    model_table_csv({"base": {"perplexity": 9.5, "tokens_per_second": 40.0},
                     "finetuned": {"perplexity": 7.25, "tokens_per_second": 41.0,
                                   "dp_calibrated": 0.1}},
                    ["perplexity", "tokens_per_second", "dp_calibrated"],
                    reports / "evaluate/models.csv")
    assert (reports / "evaluate/models.csv").read_text().splitlines() == [
        "model,perplexity,tokens_per_second,dp_calibrated", "base,9.5,40.0,",
        "finetuned,7.25,41.0,0.1"]
    targets = ["reports/select/rating_histogram.csv", "reports/select/transition_matrix.csv",
               "reports/evaluate/models.csv", "Generation speed by model"]
    shown = json.loads(dvc(project, "dvc", "plots", "show", "--json", "-o",
                           str(project / "plots-out"), *targets))
    assert not shown.get("errors")
    bars = shown["data"]["reports/select/rating_histogram.csv"][0]["content"]
    assert bars["spec"]["encoding"]["xOffset"]["field"] == "series"  # grouped_bars
    counts = {(r["series"], r["rating_class"]): int(r["rows"])
              for r in bars["data"]["values"]}
    assert counts == {("raw", "0-1"): 1, ("raw", "1-2"): 2, ("raw", "2-3"): 1,
                      ("curated", "0-1"): 2, ("curated", "1-2"): 1, ("curated", "2-3"): 1}
    heat = shown["data"]["reports/select/transition_matrix.csv"][0]["content"]
    assert len(heat["data"]["values"]) == 9
    for name, field in (("reports/evaluate/models.csv", "perplexity"),
                        ("Generation speed by model", "tokens_per_second")):
        content = shown["data"][name][0]["content"]
        assert content["encoding"]["x"]["field"] == field
        assert {r["model"] for r in content["data"]["values"]} == {"base", "finetuned"}
