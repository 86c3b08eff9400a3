"""Settings of the embed stage (params.yaml section `embed`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from crediflow.config import MethodConfig, option
from crediflow.data.schema import ROLES
from crediflow.models.precision import PRECISIONS


@dataclass(frozen=True)
class EmbedConfig(MethodConfig):
    """Which text of a record is embedded, and with which encoder."""

    section: ClassVar[str] = "embed"

    model: str = option("all-MiniLM-L6-v2",
                        "the packaged encoder, or a local folder / cached HF model name")
    roles: tuple[str, ...] = option(("user", "assistant"),
                                    "which turns make up a record's text", choices=ROLES,
                                    check=lambda v: None if v else "name at least one role")
    max_length: int = option(256, "tokens per text", low=1)
    batch_size: int = option(64, "texts per forward pass", low=1)
    precision: str = option("auto", "auto: bf16 where the CPU computes it natively (it measures "
                                    "at fp32's quality here), else fp32; fp32; bf16; int8: "
                                    "dynamic quantization (faster, neighbours change)",
                            choices=(*PRECISIONS, "int8"))
