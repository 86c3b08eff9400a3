"""Ingest: source files in any supported format -> canonical records, rejects and validation."""

from crediflow.ingest.ingest import IngestResult, ingest

__all__ = ["IngestResult", "ingest"]
