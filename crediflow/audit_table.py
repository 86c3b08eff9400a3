"""The audit of a label column as table columns: unlabelled rows pass through unaudited."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from crediflow.credibility import AuditResult, audit_labels
from crediflow.errors import InputError

ISSUE_COLUMNS = ("label_issue", "label_score", "suggested_label", "suggestion_confidence")


@dataclass
class AuditedColumns:
    """The audit's result, and its per-row columns aligned with the input (null if unlabelled)."""

    result: AuditResult
    columns: dict[str, pa.Array]
    labelled: np.ndarray  # (N,) bool


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
    for name, values, type_ in (("label_issue", det.is_issue, pa.bool_()),
                                ("label_score", det.label_score, pa.float64()),
                                ("suggested_label", suggested, pa.string()),
                                ("suggestion_confidence", det.confidence, pa.float64())):
        full = np.full(len(labels), None, dtype=object)
        full[labelled] = values
        columns[name] = pa.array(full, type=type_)
    return AuditedColumns(result, columns, labelled)
