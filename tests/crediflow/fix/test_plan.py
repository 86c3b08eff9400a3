import numpy as np
import pytest

from crediflow.errors import ConfigError
from crediflow.fix.plan import plan_fixes, score_fixes

LABELS = np.array(["a", "a", "b", "b", "a"], dtype=object)
ISSUE = np.array([True, True, False, True, False])
SUGGESTED = np.array(["b", "b", "b", "b", "a"], dtype=object)  # row 3 suggests its own label
CONFIDENCE = np.array([0.9, 0.3, 0.0, 0.8, 0.0])
TRUE = np.array(["b", "a", "b", "a", "a"], dtype=object)


def test_relabel_takes_confident_suggestions_only():
    plan = plan_fixes(LABELS, ISSUE, SUGGESTED, CONFIDENCE, policy="relabel", threshold=0.5)
    assert plan.labels.tolist() == ["b", "a", "b", "b", "a"]
    assert plan.changed.tolist() == [True, False, False, False, False]
    assert plan.keep.all()
    assert plan.action.tolist() == ["relabel", "flag", None, "flag", None]


def test_drop_removes_every_flagged_row():
    plan = plan_fixes(LABELS, ISSUE, SUGGESTED, CONFIDENCE, policy="drop")
    assert plan.keep.tolist() == [False, False, True, False, True]
    assert plan.labels.tolist() == LABELS.tolist()


def test_flag_changes_nothing():
    plan = plan_fixes(LABELS, ISSUE, SUGGESTED, CONFIDENCE, policy="flag")
    assert plan.labels.tolist() == LABELS.tolist() and plan.keep.all() and not plan.changed.any()
    assert (plan.action == "flag").sum() == 3


def test_unknown_policy():
    with pytest.raises(ConfigError, match="field 'policy': 'burn' is not allowed"):
        plan_fixes(LABELS, ISSUE, SUGGESTED, CONFIDENCE, policy="burn")


def test_scores_against_known_truth():
    # wrong labels: rows 0 and 3; flagged: 0, 1, 3; relabelled: 0 (right)
    plan = plan_fixes(LABELS, ISSUE, SUGGESTED, CONFIDENCE, policy="relabel")
    s = score_fixes(LABELS, plan, TRUE)
    assert s["wrong_labels"] == 2
    assert s["detection_precision"] == pytest.approx(2 / 3)
    assert s["detection_recall"] == 1.0
    assert s["fix_precision"] == 1.0 and s["fix_recall"] == 0.5
    assert s["label_accuracy_before"] == 0.6 and s["label_accuracy_after"] == 0.8

    dropped = score_fixes(LABELS, plan_fixes(LABELS, ISSUE, SUGGESTED, CONFIDENCE,
                                             policy="drop"), TRUE)
    assert dropped["fix_precision"] == pytest.approx(2 / 3) and dropped["fix_recall"] == 1.0
    assert dropped["label_accuracy_after"] == 1.0
