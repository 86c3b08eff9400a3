"""What every benchmark script shares: writing its JSON report (and echoing it)."""

from __future__ import annotations

import json
import os
import platform
import resource
from pathlib import Path


def write_report(report: dict, out: str | Path, *, echo: bool = True) -> Path:
    """Write `report` as indented JSON to `out`, creating its folder; print it when `echo`."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2) + "\n"
    path.write_text(text, encoding="utf-8")
    print(text if echo else f"wrote {path}", end="" if echo else "\n")
    return path


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def machine(extra: str = "") -> str:
    """The machine and Python a figure was measured on, plus `extra` (library versions)."""
    text = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    return f"{text}, {extra}" if extra else text
