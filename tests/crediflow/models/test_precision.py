"""Precision: what `auto` resolves to on every kind of device, and on this one."""

from __future__ import annotations

import itertools

import pytest

from crediflow.errors import ConfigError
from crediflow.models.precision import (
    BF16_SAME_QUALITY,
    Device,
    cpu_flags,
    cpu_name,
    detect_device,
    resolve_precision,
)

CPUINFO = """processor\t: 0
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse avx avx2 avx512f avx512_bf16
"""


@pytest.mark.parametrize(("requested", "kind", "bf16", "stage"), list(itertools.product(
    ("auto", "fp32", "bf16"), ("cpu", "cuda"), (True, False), ("embed", "select", "finetune"))))
def test_resolution_for_every_device_capability(requested, kind, bf16, stage) -> None:
    device = Device(kind, f"test {kind}", bf16)
    if requested == "bf16" and not bf16:
        with pytest.raises(ConfigError, match=f"the {kind} device test {kind} has no native "
                                              "bf16 support"):
            resolve_precision(requested, device, stage=stage)
        return
    resolved = resolve_precision(requested, device, stage=stage)
    if requested == "auto":
        # bf16 needs both: native support and the stage's measured quality
        assert resolved == ("bf16" if bf16 and BF16_SAME_QUALITY.get(stage, False) else "fp32")
    else:
        assert resolved == requested


def test_an_unknown_precision_names_the_stage_and_key() -> None:
    with pytest.raises(ConfigError, match="embed config, field 'precision': 'fp16' is not "
                                          "allowed"):
        resolve_precision("fp16", Device("cpu", "x", True), stage="embed")


def test_cpu_flags_and_name_are_read_from_cpuinfo() -> None:
    assert {"avx2", "avx512_bf16"} <= cpu_flags(CPUINFO)
    assert cpu_name(CPUINFO) == "AMD EPYC 9R14"
    assert cpu_flags("processor: 0\n") == set() and cpu_name("") == "cpu"


def test_this_machines_device_resolves_as_its_flags_say() -> None:
    device = detect_device("cpu")
    native = bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    assert device.kind == "cpu" and device.bf16 == native
    assert resolve_precision("auto", device, stage="embed") == ("bf16" if native else "fp32")
    assert resolve_precision("auto", device, stage="select") == "fp32"  # not measured equal
    if not native:
        with pytest.raises(ConfigError, match="no native bf16 support"):
            resolve_precision("bf16", device, stage="embed")
