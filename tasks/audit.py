"""Stage `audit`: data credibility of the label column (HOC transition matrix, credibility
score, k-NN/probe label-error detection).

Run as `python -m tasks.audit` (the cmd of its DVC stage).
"""

from __future__ import annotations

import logging

import numpy as np

from crediflow.audit import audit_label_column
from crediflow.audit.config import AuditConfig
from crediflow.data.schema import LABEL
from tasks.catalog import Catalog
from tasks.config import stage_config
from tasks.plots import transition_csv, transition_heatmap
from tasks.stage import stage_main

log = logging.getLogger("crediflow.audit")


def run() -> dict:
    """Audit the ingested labels and publish the audited records and reports."""
    config = stage_config(AuditConfig)
    catalog = Catalog()
    records = catalog.read("ingested")
    vectors = catalog.vectors_for(records)
    audit = audit_label_column(records.column(LABEL).to_numpy(zero_copy_only=False), vectors,
                               k=config.k, rounds=config.rounds, epochs=config.epochs,
                               detector=config.detector, seed=config.seed)
    result, det = audit.result, audit.result.detection
    audited = records.drop_columns([c for c in audit.columns if c in records.column_names])
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
        "detector": config.detector,
        "knn_method": result.knn_method,
        "knn_recall": result.knn_recall,
        "warnings": audit.warnings,
    }
    for warning in audit.warnings:
        log.warning("audit: %s", warning)
    with catalog.publish("audit") as out:
        out.table("audited", audited)
        transition_heatmap(result.T, result.classes, out.reports / "transition_matrix.png")
        transition_csv(result.T, result.classes, out.reports / "transition_matrix.csv")
        out.json("metrics.json", metrics)
    log.info("audit: credibility %.3f, %d of %d labelled rows flagged (%d unlabelled passed "
             "through)", result.credibility, metrics["flagged"], n_labelled, n - n_labelled)
    return metrics


if __name__ == "__main__":
    stage_main(run)
