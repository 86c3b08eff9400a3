"""Settings of fairness estimation with weak proxies (params.yaml section `fairness`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from crediflow.config import MethodConfig, option
from crediflow.fairness.metrics import AGGREGATES

MODES = ("global", "local")
ON_SINGULAR = ("error", "raw")


@dataclass(frozen=True)
class FairnessConfig(MethodConfig):
    """Fairness with missing groups (Zhu et al., "Weak Proxies are Sufficient and
    Preferable"): three weak proxies of the group, HOC on their label triplets, calibrated
    per-group prediction rates."""

    section: ClassVar[str] = "fairness"

    mode: str = option("global", "global: one proxy transition matrix T for all predicted "
                                 "classes; local: T_k estimated on the rows predicted k "
                                 "(no independence of proxies and predictions assumed)",
                       choices=MODES)
    clip: bool = option(True, "clip the calibrated rates to [clip_low, 1] and renormalise "
                              "each group's row")
    clip_low: float = option(1e-3, "lower bound of the clipped rates", low=0, high=0.5,
                             low_open=True, high_open=True)
    aggregate: str = option("mean", "mean: mean gap over pairs of groups and classes (the "
                                    "paper); max: largest max-minus-min gap (fairlearn)",
                            choices=AGGREGATES)
    positive_class: int = option(1, "index of the positive class among the sorted label "
                                    "classes (equal opportunity)", low=0)
    hoc_steps: int = option(1500, "Adam steps of the HOC fit of T and p", low=1)
    warn_condition: float = option(10.0, "warn when T's condition number passes this (the "
                                         "proxies say little about the group)", low=1)
    max_condition: float = option(100.0, "T with a larger condition number counts as "
                                         "singular (see on_singular)", low=1)
    on_singular: str = option("error", "a T that cannot calibrate (singular, not "
                                       "diagonally dominant, or proxies agreeing only by "
                                       "chance): error (refuse) or raw (report "
                                       "the raw proxy estimate as the calibrated one, with a "
                                       "warning)", choices=ON_SINGULAR)
    min_kappa: float = option(0.02, "two proxies agreeing less than this beyond chance "
                                    "(Cohen's kappa; or 3 standard errors, 3/sqrt(rows), if "
                                    "larger) are warned about; if all three pairs do, T "
                                    "cannot calibrate (see on_singular)", low=-1, high=1)
    max_kappa: float = option(0.95, "warn when two proxies agree more than this (Cohen's "
                                    "kappa): likely not independent given the group",
                              low=-1, high=1)
    min_rows: int = option(200, "warn when HOC runs on fewer rows (a label slice, or a "
                                "predicted class in local mode)", low=1)

    def validate(self) -> None:
        """Thresholds must be ordered."""
        if self.min_kappa >= self.max_kappa:
            raise self.error("max_kappa", f"must be greater than min_kappa ({self.min_kappa})")
        if self.warn_condition > self.max_condition:
            raise self.error("max_condition", f"must be at least warn_condition "
                                              f"({self.warn_condition})")
