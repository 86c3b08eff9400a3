"""Stage `fix`: apply the audit (relabel, drop or flag) and write the changelog.

Run as `python -m tasks.fix` (the cmd of its DVC stage).
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crediflow.errors import InputError
from crediflow.fix.plan import plan_fixes, score_fixes
from tasks.config import stage_params
from tasks.io import atomic_dir, write_json, write_parquet
from tasks.stage import project_path, stage_main

log = logging.getLogger("crediflow.fix")


def true_labels(path, ids: np.ndarray) -> np.ndarray | None:
    """True labels aligned with `ids` from an `id,true_label` CSV, or None without one."""
    if not path or not path.exists():
        return None
    truth = pd.read_csv(path, dtype=str)
    if not {"id", "true_label"} <= set(truth.columns):
        raise InputError("expected columns id,true_label", file=str(path))
    aligned = truth.set_index("id")["true_label"].reindex(ids)
    if aligned.isna().any():
        raise InputError(f"{int(aligned.isna().sum())} audited id(s) missing, e.g. "
                         f"{aligned.index[aligned.isna()][:3].tolist()}", file=str(path),
                         field="id")
    return aligned.to_numpy(dtype=object)


def run() -> dict:
    """Fix the audited labels by the configured policy and publish records and changelog."""
    params = stage_params("fix")
    audited = pq.read_table(project_path(stage_params("audit")["out"]) / "records.parquet")
    labels = audited.column("label").to_numpy(zero_copy_only=False)
    plan = plan_fixes(
        labels,
        pc.fill_null(audited.column("label_issue"), False).to_numpy(zero_copy_only=False),
        audited.column("suggested_label").to_numpy(zero_copy_only=False),
        pc.fill_null(audited.column("suggestion_confidence"), 0.0).to_numpy(),
        policy=params["policy"],
        threshold=float(params["threshold"]),
    )
    label_at = audited.schema.get_field_index("label")
    fixed = audited.set_column(label_at, "label", pa.array(plan.labels, pa.string()))
    fixed = fixed.append_column("original_label", audited.column("label"))
    fixed = fixed.filter(pa.array(plan.keep))
    touched = np.flatnonzero(plan.action.astype(bool))
    changelog = pa.table({
        "id": audited.column("id").take(pa.array(touched)),
        "old": pa.array(labels[touched], pa.string()),
        "new": pa.array(np.where(plan.keep[touched], plan.labels[touched], None), pa.string()),
        "confidence": audited.column("suggestion_confidence").take(pa.array(touched)),
        "action": pa.array(plan.action[touched], pa.string()),
    })
    moves = Counter(f"{o}->{n}" for o, n in zip(labels[plan.changed], plan.labels[plan.changed],
                                                strict=True))
    metrics = {
        "policy": params["policy"],
        "rows_in": audited.num_rows,
        "rows_out": fixed.num_rows,
        "flagged": int(len(touched)),
        "changed": int(plan.changed.sum()),
        "changes": dict(moves),
    }
    ids = audited.column("id").to_numpy(zero_copy_only=False)
    truth = true_labels(project_path(params["truth"]) if params.get("truth") else None, ids)
    if truth is not None:
        metrics["against_truth"] = score_fixes(labels, plan, truth)
    with atomic_dir(project_path(params["out"])) as out:
        write_parquet(out / "records.parquet", fixed)
        write_parquet(out / "changelog.parquet", changelog)
        write_json(project_path(params["reports"]) / "metrics.json", metrics)
    log.info("fix (%s): %d flagged, %d changed, %d rows out", params["policy"], len(touched),
             metrics["changed"], fixed.num_rows)
    return metrics


if __name__ == "__main__":
    stage_main(run)
