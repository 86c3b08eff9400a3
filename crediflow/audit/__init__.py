"""Audit: data credibility of a label column (Zhu et al., "Unmasking and Improving Data
Credibility"): HOC transition matrix, credibility score, label-error detection."""

from crediflow.audit.credibility import AuditResult, audit_labels, transition_from_triplets
from crediflow.audit.table import AuditedColumns, audit_label_column, audit_warnings

__all__ = ["AuditResult", "AuditedColumns", "audit_label_column", "audit_labels",
           "audit_warnings", "transition_from_triplets"]
