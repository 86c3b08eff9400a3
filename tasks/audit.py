"""Stage `audit`: data credibility of the label column (HOC transition matrix, credibility
score, k-NN/probe label-error detection).

Run as `python -m tasks.audit` (the cmd of its DVC stage).
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow.parquet as pq

from crediflow.audit.table import audit_label_column
from tasks.config import stage_params
from tasks.embed import aligned_vectors
from tasks.io import atomic_dir, write_json, write_parquet
from tasks.plots import transition_heatmap
from tasks.stage import project_path, stage_main

log = logging.getLogger("crediflow.audit")


def run() -> dict:
    """Audit the ingested labels and publish the audited records and reports."""
    params = stage_params("audit")
    records = pq.read_table(project_path(stage_params("ingest")["out"]) / "records.parquet")
    vectors = aligned_vectors(
        records, project_path(stage_params("embed")["out"]) / "embeddings.parquet")
    audit = audit_label_column(
        records.column("label").to_numpy(zero_copy_only=False), vectors,
        k=int(params["k"]), rounds=int(params["rounds"]), epochs=int(params["epochs"]),
        detector=params["detector"], seed=int(params["seed"]),
    )
    result, det = audit.result, audit.result.detection
    audited = records
    for name, values in audit.columns.items():
        audited = audited.append_column(name, values)
    n, n_labelled = records.num_rows, int(audit.labelled.sum())
    metrics = {
        "rows": n,
        "audited": n_labelled,
        "unlabelled": n - n_labelled,
        "classes": list(result.classes),
        "credibility": round(float(result.credibility), 6),
        "T": np.round(result.T, 6).tolist(),
        "p": np.round(result.p, 6).tolist(),
        "flagged": int(det.is_issue.sum()),
        "flagged_fraction": round(float(det.is_issue.mean()), 6),
        "per_class": result.counts,
        "detector": params["detector"],
        "knn_method": result.knn_method,
        "knn_recall": result.knn_recall,
        "warnings": audit.warnings,
    }
    for warning in audit.warnings:
        log.warning("audit: %s", warning)
    reports = project_path(params["reports"])
    with atomic_dir(project_path(params["out"])) as out:
        write_parquet(out / "records.parquet", audited)
        transition_heatmap(result.T, result.classes, reports / "transition_matrix.png")
        write_json(reports / "metrics.json", metrics)
    log.info("audit: credibility %.3f, %d of %d labelled rows flagged (%d unlabelled passed "
             "through)", result.credibility, metrics["flagged"], n_labelled, n - n_labelled)
    return metrics


if __name__ == "__main__":
    stage_main(run)
