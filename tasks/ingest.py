"""Stage `ingest`: source files -> datasets `ingested` and `rejected` + reports.

Run as `python -m tasks.ingest` (the cmd of its DVC stage).
"""

from __future__ import annotations

import logging

from crediflow.ingest import ingest
from crediflow.ingest.config import IngestConfig
from tasks.catalog import Catalog
from tasks.config import stage_config
from tasks.stage import stage_main

log = logging.getLogger("crediflow.ingest")


def run() -> dict:
    """Ingest the configured source and publish its outputs; return the metrics."""
    config = stage_config(IngestConfig)
    catalog = Catalog()
    result = ingest(catalog.source, classes=config.classes, rating_range=config.rating_range,
                    max_reject_fraction=config.max_reject_fraction,
                    skip_unreadable_files=config.skip_unreadable_files)
    with catalog.publish("ingest") as out:
        out.table("ingested", result.records)
        out.table("rejected", result.rejected)
        out.json("validation.json", result.validation)
        out.json("metrics.json", result.metrics)
    m = result.metrics
    log.info("ingest: %d rows read, %d written, %d rejected (%.2f%%), %d exact duplicates dropped",
             m["rows_read"], m["rows_out"], m["rejected"], 100 * m["reject_fraction"],
             m["duplicates_dropped"])
    return m


if __name__ == "__main__":
    stage_main(run)
