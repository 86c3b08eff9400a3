"""The audit of a label column as table columns: unlabelled rows pass through unaudited."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from crediflow.audit.credibility import AuditResult, audit_labels
from crediflow.data.schema import (
    LABEL_ISSUE,
    LABEL_SCORE,
    SUGGESTED_LABEL,
    SUGGESTION_CONFIDENCE,
)
from crediflow.errors import InputError


@dataclass
class AuditedColumns:
    """The audit's result, and its per-row columns aligned with the input (null if unlabelled)."""

    result: AuditResult
    columns: dict[str, pa.Array]
    labelled: np.ndarray  # (N,) bool
    warnings: list[str]


def audit_warnings(result: AuditResult) -> list[str]:
    """Signs that the audit's assumptions do not hold for this data."""
    weak = [c for c, t in zip(result.classes, np.diag(result.T), strict=True) if t < 0.5]
    if not weak:
        return list(result.warnings)
    return [*result.warnings,
            f"T is not diagonally dominant for {', '.join(map(str, weak))}: the embeddings "
            "probably do not cluster by this label (a row's nearest neighbours often carry "
            "another true label), so HOC reads that as noise; treat T and the flags with "
            "caution, or use the probe detector"]


def audit_label_column(labels: np.ndarray, embeddings: np.ndarray,
                       **audit_kwargs) -> AuditedColumns:
    """Audit the labelled rows of `labels` (None = unlabelled) with `audit_labels`."""
    labels = np.asarray(labels, dtype=object)
    labelled = pd.notna(labels)
    if not labelled.any():
        raise InputError("no row has a label to audit", field="label")
    result = audit_labels(labels[labelled].astype(str), embeddings[labelled], **audit_kwargs)
    det = result.detection
    suggested = np.asarray(result.classes, dtype=object)[det.suggested]
    columns = {}
    for name, values, type_ in ((LABEL_ISSUE, det.is_issue, pa.bool_()),
                                (LABEL_SCORE, det.label_score, pa.float64()),
                                (SUGGESTED_LABEL, suggested, pa.string()),
                                (SUGGESTION_CONFIDENCE, det.confidence, pa.float64())):
        full = np.full(len(labels), None, dtype=object)
        full[labelled] = values
        columns[name] = pa.array(full, type=type_)
    return AuditedColumns(result, columns, labelled, audit_warnings(result))
