"""MLflow naming of the stages' metrics."""

from __future__ import annotations

from tasks.lineage import _metric_key, flatten


def test_metric_names_are_valid_for_mlflow_and_readable() -> None:
    metrics = flatten({"moves": {"4.5-5.5->0.5-1.5": 3}, "changes": {"harmless->harmful": 2},
                       "T[0]": 0.9})
    assert sorted(map(_metric_key, metrics)) == [
        "T_0_", "changes.harmless_to_harmful", "moves.4.5-5.5_to_0.5-1.5"]
