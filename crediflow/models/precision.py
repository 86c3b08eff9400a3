"""Numeric precision of a model stage: what the device can do, what `auto` resolves to, and the
autocast context that runs a forward pass in it.

`auto` takes bf16 only where both hold: the device computes bf16 natively (a CUDA device that
reports bf16 support; a CPU whose instruction set has AVX512-BF16 or AMX-BF16) and the stage's
benchmark showed bf16 at fp32's quality (`BF16_SAME_QUALITY`). Elsewhere it is fp32. Asking
for bf16 on a device without it is a config error that names the device; `auto` never fails.
torch's CPU autocast would run bf16 anyway by emulating it, several times slower than fp32,
so "supported" means native support, read from the CPU flags.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crediflow.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")
# CPU flags (Linux /proc/cpuinfo names) that mean native bf16 matrix products
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

# Stages whose benchmark showed bf16 at the same quality as fp32 (README, "Precision"):
# embed: benchmarks/embed.py, min cosine 0.99995 and top-10 neighbour overlap 0.992-0.995
# (goal >= 0.99); select's hf rater: benchmarks/rater.py, the most likely score unchanged on
# 0.948 of the demo texts (goal >= 0.99), so it stays fp32. Stages not listed (token_clean,
# finetune) are not measured yet and stay fp32 under auto.
BF16_SAME_QUALITY: dict[str, bool] = {"embed": True, "select": False}


@dataclass(frozen=True)
class Device:
    """What a compute device reports about itself."""

    kind: str  # "cpu" or "cuda"
    name: str  # e.g. "AMD EPYC (avx2)" or "NVIDIA H200"
    bf16: bool  # native bf16 matrix products


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (from /proc/cpuinfo; empty where there is none)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU's model name, or "cpu"."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "cpu"
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return "cpu"


def detect_device(kind: str = "auto") -> Device:
    """The device a stage runs on: CUDA when asked for or (with "auto") available, else the
    CPU; with what it reports about bf16."""
    import torch

    if kind == "cuda" or (kind == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("no CUDA device is available", key="device")
        return Device("cuda", torch.cuda.get_device_name(), bool(torch.cuda.is_bf16_supported()))
    flags = cpu_flags()
    isa = torch.backends.cpu.get_cpu_capability().lower()
    return Device("cpu", f"{cpu_name()} ({isa})", bool(flags & set(_CPU_BF16_FLAGS)))


def resolve_precision(requested: str, device: Device, *, stage: str) -> str:
    """The precision a stage runs in: "fp32" or "bf16" (see the module docstring).

    `requested` is one of PRECISIONS; bf16 asked for on a device without native bf16 is a
    ConfigError naming the device.
    """
    if requested not in PRECISIONS:
        raise ConfigError(f"{requested!r} is not allowed; choose one of {', '.join(PRECISIONS)}",
                          section=stage, key="precision")
    if requested == "bf16" and not device.bf16:
        raise ConfigError(f"bf16 was asked for, but the {device.kind} device {device.name} has "
                          "no native bf16 support (it would be emulated, several times slower "
                          "than fp32); use auto or fp32", section=stage, key="precision")
    if requested == "auto":
        return "bf16" if device.bf16 and BF16_SAME_QUALITY.get(stage, False) else "fp32"
    return requested


@contextlib.contextmanager
def autocast(precision: str, device_kind: str = "cpu") -> Iterator[None]:
    """Run the block's forward passes in `precision` (torch autocast for bf16)."""
    if precision != "bf16":
        yield
        return
    import torch

    with torch.autocast(device_type=device_kind, dtype=torch.bfloat16):
        yield


def describe(device: Device, precision: str) -> dict[str, Any]:
    """What a stage records about its precision (metrics and MLflow params)."""
    return {"precision": precision, "device": device.kind, "device_name": device.name,
            "device_bf16": device.bf16}
