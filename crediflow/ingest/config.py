"""Settings of the ingest stage (params.yaml section `ingest`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from crediflow.config import MethodConfig, option


def _range_check(value: tuple[float, ...] | None) -> str | None:
    if value is not None and (len(value) != 2 or not value[0] < value[1]):
        return f"expected [low, high] with low < high, got {list(value)}"
    return None


def _classes_check(value: tuple[str, ...] | None) -> str | None:
    if value is not None and (not value or len(set(value)) != len(value)):
        return f"expected a list of distinct class names, got {list(value)}"
    return None


@dataclass(frozen=True)
class IngestConfig(MethodConfig):
    """How source files become canonical records."""

    section: ClassVar[str] = "ingest"

    classes: tuple[str, ...] | None = option(
        ("harmless", "harmful"), "allowed values of `label` (null: any)", check=_classes_check)
    rating_range: tuple[float, ...] | None = option(
        None, "[low, high] allowed for `rating` (null: any)", check=_range_check)
    max_reject_fraction: float = option(
        0.05, "fail the stage when more rows than this share are rejected", low=0, high=1)
    skip_unreadable_files: bool = option(
        False, "list files that cannot be read at all in the metrics instead of failing")
