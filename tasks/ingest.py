"""Stage `ingest`: source files -> data/ingested/{records,rejected}.parquet + reports.

Run as `python -m tasks.ingest` (the cmd of its DVC stage).
"""

from __future__ import annotations

import logging

from crediflow.ingest.ingest import ingest
from tasks.config import stage_params
from tasks.io import atomic_dir, write_json, write_parquet
from tasks.stage import project_path, stage_main

log = logging.getLogger("crediflow.ingest")


def run() -> dict:
    """Ingest the configured source and publish its outputs; return the metrics."""
    params = stage_params("ingest")
    result = ingest(
        str(project_path(params["source"])),
        classes=params.get("classes"),
        rating_range=params.get("rating_range"),
        max_reject_fraction=float(params["max_reject_fraction"]),
    )
    reports = project_path(params["reports"])
    with atomic_dir(project_path(params["out"])) as out:
        write_parquet(out / "records.parquet", result.records)
        write_parquet(out / "rejected.parquet", result.rejected)
        write_json(reports / "validation.json", result.validation)
        write_json(reports / "metrics.json", result.metrics)
    m = result.metrics
    log.info("ingest: %d rows read, %d written, %d rejected (%.2f%%), %d exact duplicates dropped",
             m["rows_read"], m["rows_out"], m["rejected"], 100 * m["reject_fraction"],
             m["duplicates_dropped"])
    return m


if __name__ == "__main__":
    stage_main(run)
