"""Settings of the audit stage (params.yaml section `audit`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from crediflow.config import MethodConfig, option

DETECTORS = ("knn", "probe", "both")


@dataclass(frozen=True)
class AuditConfig(MethodConfig):
    """HOC and label-error detection settings."""

    section: ClassVar[str] = "audit"

    k: int = option(10, "neighbours per sample for the votes", low=2)
    rounds: int = option(50, "HOC rounds (subsamples of the k-NN graph)", low=1)
    epochs: int = option(21, "detection epochs (subsamples; a row is flagged in most)", low=1)
    detector: str = option("probe", "probe: out-of-fold logistic-regression probe (the default: "
                                    "best on real text, see README); knn: similarity-weighted "
                                    "k-NN votes; both: the two combined", choices=DETECTORS)
    seed: int = option(0, "random seed", low=0)
