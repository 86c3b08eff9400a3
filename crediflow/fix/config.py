"""Settings of the fix stage (params.yaml section `fix`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from crediflow.config import MethodConfig, option

POLICIES = ("relabel", "drop", "flag")


@dataclass(frozen=True)
class FixConfig(MethodConfig):
    """What to do with the rows the audit flagged."""

    section: ClassVar[str] = "fix"

    policy: str = option("relabel", "relabel: take the suggested label; drop: remove the row; "
                                    "flag: only mark it", choices=POLICIES)
    threshold: float = option(0.5, "relabel only where the suggestion's confidence reaches "
                                   "this", low=0, high=1)
