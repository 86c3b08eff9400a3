"""Apply a label audit: relabel, drop or only flag the suspected rows, and score the result
against true labels where they are known."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from crediflow.fix.config import FixConfig


@dataclass
class FixPlan:
    """What a policy does to each row."""

    labels: np.ndarray  # (N,) object: the label after the fix
    keep: np.ndarray  # (N,) bool: the row stays in the data
    changed: np.ndarray  # (N,) bool: relabelled or dropped
    action: np.ndarray  # (N,) object: "relabel", "drop", "flag" or None


def plan_fixes(
    labels: np.ndarray,
    is_issue: np.ndarray,
    suggested: np.ndarray,
    confidence: np.ndarray,
    *,
    policy: str = "relabel",
    threshold: float = 0.5,
) -> FixPlan:
    """Decide, per row, the label after the fix and whether the row stays.

    `relabel` takes the suggested label where the row is flagged, the suggestion differs and
    its confidence is at least `threshold`; `drop` removes flagged rows; `flag` changes
    nothing and only marks them.
    """
    FixConfig(policy=policy, threshold=threshold)  # a bad setting fails here, named
    labels = np.asarray(labels, dtype=object)
    flagged = np.asarray(is_issue, dtype=bool)
    action = np.full(len(labels), None, dtype=object)
    new = labels.copy()
    keep = np.ones(len(labels), bool)
    if policy == "relabel":
        changed = flagged & (np.asarray(confidence) >= threshold) & (suggested != labels)
        new[changed] = np.asarray(suggested, dtype=object)[changed]
    elif policy == "drop":
        changed = flagged
        keep = ~flagged
    else:
        changed = np.zeros(len(labels), bool)
    action[flagged] = "flag"
    action[changed] = "drop" if policy == "drop" else "relabel"
    return FixPlan(new, keep, changed, action)


def score_fixes(noisy: np.ndarray, plan: FixPlan, true: np.ndarray) -> dict[str, float]:
    """Precision and recall of the detection and of the fixes against the true labels.

    Detection: flagged rows vs rows whose label is wrong. Fixes: for `relabel`, a change is
    right when it gives the true label; for `drop`, when the dropped label was wrong.
    """
    noisy, true = np.asarray(noisy, dtype=object), np.asarray(true, dtype=object)
    wrong = pd.notna(noisy) & (noisy != true)  # an unlabelled row is not a wrong label
    flagged = plan.action.astype(bool)  # None -> False
    dropped = ~plan.keep
    right = np.where(dropped, wrong, plan.labels == true) & plan.changed

    def ratio(a: int, b: int) -> float:
        return float(a / b) if b else float("nan")

    return {
        "wrong_labels": int(wrong.sum()),
        "detection_precision": ratio(int((flagged & wrong).sum()), int(flagged.sum())),
        "detection_recall": ratio(int((flagged & wrong).sum()), int(wrong.sum())),
        "fix_precision": ratio(int(right.sum()), int(plan.changed.sum())),
        "fix_recall": ratio(int(right.sum()), int(wrong.sum())),
        "label_accuracy_before": ratio(int((noisy == true).sum()), len(noisy)),
        "label_accuracy_after": ratio(int(((plan.labels == true) & plan.keep).sum()),
                                      int(plan.keep.sum())),
    }
