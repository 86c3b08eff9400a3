"""Stage `fix`: apply the audit (relabel, drop or flag) and write the changelog.

Run as `python -m tasks.fix` (the cmd of its DVC stage).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from crediflow.data.schema import (
    ACTION,
    CONFIDENCE,
    ID,
    LABEL,
    LABEL_ISSUE,
    NEW,
    OLD,
    ORIGINAL_LABEL,
    SUGGESTED_LABEL,
    SUGGESTION_CONFIDENCE,
    TRUE_LABEL,
)
from crediflow.errors import InputError
from crediflow.fix import plan_fixes, score_fixes
from crediflow.fix.config import FixConfig
from tasks.catalog import Catalog
from tasks.config import stage_config
from tasks.stage import stage_main

log = logging.getLogger("crediflow.fix")


def true_labels(path: Path, ids: np.ndarray) -> np.ndarray:
    """True labels aligned with `ids` from an `id,true_label` CSV."""
    if not path.is_file():
        raise InputError("no such file (set catalog.truth to null to skip scoring the fixes)",
                         file=str(path))
    truth = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    if not {ID, TRUE_LABEL} <= set(truth.columns):
        raise InputError(f"expected columns {ID},{TRUE_LABEL}", file=str(path))
    aligned = truth.drop_duplicates(ID).set_index(ID)[TRUE_LABEL].reindex(ids)
    if aligned.isna().any():
        raise InputError(f"{int(aligned.isna().sum())} audited id(s) missing, e.g. "
                         f"{aligned.index[aligned.isna()][:3].tolist()}", file=str(path),
                         field=ID)
    return aligned.to_numpy(dtype=object)


def run() -> dict:
    """Fix the audited labels by the configured policy and publish records and changelog."""
    config = stage_config(FixConfig)
    catalog = Catalog()
    audited = catalog.read("audited")
    labels = audited.column(LABEL).to_numpy(zero_copy_only=False)
    ids = audited.column(ID).to_numpy(zero_copy_only=False)
    truth = true_labels(catalog.truth, ids) if catalog.truth is not None else None
    plan = plan_fixes(
        labels,
        pc.fill_null(audited.column(LABEL_ISSUE), False).to_numpy(zero_copy_only=False),
        audited.column(SUGGESTED_LABEL).to_numpy(zero_copy_only=False),
        pc.fill_null(audited.column(SUGGESTION_CONFIDENCE), 0.0).to_numpy(),
        policy=config.policy,
        threshold=config.threshold,
    )
    fixed = audited.set_column(audited.schema.get_field_index(LABEL), LABEL,
                               pa.array(plan.labels, pa.string()))
    fixed = fixed.append_column(ORIGINAL_LABEL, audited.column(LABEL))
    fixed = fixed.filter(pa.array(plan.keep))
    touched = np.flatnonzero(plan.action.astype(bool))
    changelog = pa.table({
        ID: audited.column(ID).take(pa.array(touched)),
        OLD: pa.array(labels[touched], pa.string()),
        NEW: pa.array(np.where(plan.keep[touched], plan.labels[touched], None), pa.string()),
        CONFIDENCE: audited.column(SUGGESTION_CONFIDENCE).take(pa.array(touched)),
        ACTION: pa.array(plan.action[touched], pa.string()),
    })
    moves = Counter(f"{o}->{n}" for o, n in zip(labels[plan.changed], plan.labels[plan.changed],
                                                strict=True))
    metrics = {
        "policy": config.policy,
        "rows_in": audited.num_rows,
        "rows_out": fixed.num_rows,
        "flagged": int(len(touched)),
        "changed": int(plan.changed.sum()),
        "changes": dict(moves),
    }
    if truth is not None:
        metrics["against_truth"] = score_fixes(labels, plan, truth)
    with catalog.publish("fix") as out:
        out.table("fixed", fixed)
        out.table("changelog", changelog)
        out.json("metrics.json", metrics)
    log.info("fix (%s): %d flagged, %d changed, %d rows out", config.policy, len(touched),
             metrics["changed"], fixed.num_rows)
    return metrics


if __name__ == "__main__":
    stage_main(run)
