"""Fix: apply an audit to the labels (relabel, drop or flag) and score the fixes."""

from crediflow.fix.plan import FixPlan, plan_fixes, score_fixes

__all__ = ["FixPlan", "plan_fixes", "score_fixes"]
